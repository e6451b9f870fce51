//! The API error's `code` / `type`, as found in an error body.

use std::fmt;

/// Error codes that mean a spent quota or spending limit: a 429 that carries
/// one of them will not succeed on retry.
const QUOTA_CODES: &[&str] = &[
    // OpenAI-compatible: the account has no credit left.
    "insufficient_quota",
    // OpenAI-compatible: the hard monthly billing limit was reached.
    "billing_hard_limit_reached",
    // Anthropic-style: the workspace or organisation spend limit was reached.
    "enforced_spend_limit_reached",
];

/// Whether an API error `code` (or `type`) says a quota or spending limit is
/// spent, so that retrying cannot succeed.
///
/// The known codes: `insufficient_quota`, `billing_hard_limit_reached`
/// (OpenAI-compatible APIs) and `enforced_spend_limit_reached`
/// (Anthropic-style APIs). The comparison is exact after trimming and is
/// ASCII case-insensitive.
///
/// ```
/// use llm_sluice::classify::is_quota_exhausted;
///
/// assert!(is_quota_exhausted("insufficient_quota"));
/// assert!(!is_quota_exhausted("rate_limit_exceeded"));
/// ```
pub fn is_quota_exhausted(code: &str) -> bool {
    let code = code.trim();
    QUOTA_CODES
        .iter()
        .any(|known| known.eq_ignore_ascii_case(code))
}

/// The error `code` and `type` of an API error body
/// (`{"error": {"code": "...", "type": "..."}}`), carried in a response's
/// extensions.
///
/// [`ErrorBodyLayer`](super::ErrorBodyLayer) inserts it into non-2xx
/// `http::Response`s after reading their body; a client that parses error
/// bodies itself can insert it too. The HTTP classifier reads it to tell a
/// spent quota (a 429 that will never succeed) from back-pressure.
///
/// ```
/// use llm_sluice::classify::ErrorCode;
///
/// let code = ErrorCode::new(Some("insufficient_quota"), Some("insufficient_quota"));
/// assert!(code.is_quota_exhausted());
/// assert_eq!(code.code(), Some("insufficient_quota"));
///
/// let mut response = http::Response::builder().status(429).body(()).unwrap();
/// response.extensions_mut().insert(code);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    code: Option<Box<str>>,
    error_type: Option<Box<str>>,
}

impl ErrorCode {
    /// An error code from the body's `error.code` and `error.type`.
    pub fn new(code: Option<&str>, error_type: Option<&str>) -> Self {
        ErrorCode {
            code: code.map(Box::from),
            error_type: error_type.map(Box::from),
        }
    }

    /// The API error's `code` (e.g. `insufficient_quota`,
    /// `rate_limit_exceeded`), if it had one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The API error's `type` (e.g. `insufficient_quota`,
    /// `rate_limit_error`), if it had one.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// Whether the code or the type is a known quota code (see
    /// [`is_quota_exhausted`]).
    pub fn is_quota_exhausted(&self) -> bool {
        self.code().is_some_and(is_quota_exhausted)
            || self.error_type().is_some_and(is_quota_exhausted)
    }

    /// Parses an API error body: `{"error": {"code": ..., "type": ...}}`.
    ///
    /// Also accepted: a JSON array whose first element has that shape (some
    /// OpenAI-compatible gateways wrap errors in a list), and a numeric
    /// `code` (kept as its decimal text). `None` when the body is not JSON,
    /// has no `error` object, or the object has neither field.
    ///
    /// ```
    /// use llm_sluice::classify::ErrorCode;
    ///
    /// let body = br#"{"error": {"message": "You exceeded your current quota",
    ///     "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}"#;
    /// let code = ErrorCode::from_json(body).unwrap();
    /// assert!(code.is_quota_exhausted());
    /// assert_eq!(ErrorCode::from_json(b"<html>Bad gateway</html>"), None);
    /// ```
    #[cfg(feature = "http")]
    pub fn from_json(body: &[u8]) -> Option<Self> {
        use serde_json::Value;

        let value: Value = serde_json::from_slice(body).ok()?;
        let envelope = match &value {
            Value::Array(items) => items.first()?,
            other => other,
        };
        let error = envelope.get("error")?;
        let text = |field: &str| match error.get(field)? {
            Value::String(s) => Some(Box::<str>::from(s.as_str())),
            Value::Number(n) => Some(n.to_string().into_boxed_str()),
            _ => None,
        };
        let code = ErrorCode {
            code: text("code"),
            error_type: text("type"),
        };
        if code.code.is_none() && code.error_type.is_none() {
            return None;
        }
        Some(code)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorCode")
            .field("code", &self.code())
            .field("type", &self.error_type())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_codes() {
        for code in [
            "insufficient_quota",
            "billing_hard_limit_reached",
            "enforced_spend_limit_reached",
            " Insufficient_Quota ",
        ] {
            assert!(is_quota_exhausted(code), "{code}");
        }
        for code in [
            "rate_limit_exceeded",
            "rate_limit_error",
            "",
            "quota",
            "tokens",
        ] {
            assert!(!is_quota_exhausted(code), "{code}");
        }
        assert!(ErrorCode::new(None, Some("insufficient_quota")).is_quota_exhausted());
        assert!(
            !ErrorCode::new(Some("rate_limit_exceeded"), Some("requests")).is_quota_exhausted()
        );
        assert!(!ErrorCode::default().is_quota_exhausted());
    }

    #[cfg(feature = "http")]
    #[test]
    fn from_json_shapes() {
        let anthropic =
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let code = ErrorCode::from_json(anthropic).unwrap();
        assert_eq!(code.error_type(), Some("rate_limit_error"));
        assert_eq!(code.code(), None);

        let listed = br#"[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(ErrorCode::from_json(listed).unwrap().code(), Some("429"));

        let null_code =
            br#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#;
        let code = ErrorCode::from_json(null_code).unwrap();
        assert_eq!(
            (code.code(), code.error_type()),
            (None, Some("invalid_request_error"))
        );

        for bad in [
            &br#"{"error":"plain string"}"#[..],
            br#"{"error":{"message":"no code"}}"#,
            br#"{"detail":"x"}"#,
            b"[]",
            b"",
            b"not json",
            br#"{"error":{"code":"insufficient_quota""#,
        ] {
            assert_eq!(
                ErrorCode::from_json(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
