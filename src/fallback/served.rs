//! Which service answered.

/// Marks a response answered by a fallback service.
///
/// For `http::Response` it is an extension; a typed response stores it
/// through [`RecordServedBy`]. A response without it was answered by the
/// primary. In a chain the innermost fallback that answered sets it and outer
/// layers keep it, so it always names the service that really answered.
///
/// ```
/// use llm_sluice::fallback::{RecordServedBy, ServedBy};
///
/// let mut res = http::Response::new(());
/// assert_eq!(res.served_by(), None, "the primary answered");
/// res.set_served_by(ServedBy::new("backup"));
/// assert_eq!(res.served_by().unwrap().name(), "backup");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServedBy {
    name: &'static str,
}

impl ServedBy {
    /// A marker naming the service.
    pub const fn new(name: &'static str) -> Self {
        ServedBy { name }
    }

    /// The name given to the fallback layer's secondary service.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// A response that can say which service answered it.
///
/// Implemented for `http::Response<B>` (an extension) and as a no-op for the
/// plain types this crate treats as complete responses (`String`, `Vec<T>`,
/// `Bytes`, ...). A typed response implements it with a field of its own:
///
/// ```
/// use llm_sluice::fallback::{RecordServedBy, ServedBy};
///
/// struct Completion { text: String, served_by: Option<ServedBy> }
///
/// impl RecordServedBy for Completion {
///     fn served_by(&self) -> Option<ServedBy> { self.served_by }
///     fn set_served_by(&mut self, by: ServedBy) { self.served_by = Some(by) }
/// }
/// ```
pub trait RecordServedBy {
    /// Which fallback service answered, or `None` for the primary.
    fn served_by(&self) -> Option<ServedBy> {
        None
    }

    /// Records which fallback service answered. The default does nothing.
    fn set_served_by(&mut self, by: ServedBy) {
        let _ = by;
    }
}

macro_rules! unrecorded {
    ($($t:ty),*) => { $(impl RecordServedBy for $t {})* };
}
unrecorded!((), String, &'static str, bool, u32, u64, i32, i64);
impl<T> RecordServedBy for Vec<T> {}
#[cfg(feature = "http")]
impl RecordServedBy for bytes::Bytes {}

#[cfg(feature = "http")]
impl<B> RecordServedBy for http::Response<B> {
    fn served_by(&self) -> Option<ServedBy> {
        self.extensions().get::<ServedBy>().copied()
    }

    fn set_served_by(&mut self, by: ServedBy) {
        self.extensions_mut().insert(by);
    }
}
