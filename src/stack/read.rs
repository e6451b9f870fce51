//! Reading a [`StackConfig`] from any serde format, with errors that name the
//! setting they are about.
//!
//! serde's own errors say *where* in the text a value failed (TOML's line and
//! column, JSON's position), not *which setting* it was: the JSON error for
//! `{"retry":{"backoff_base":-1}}` is "a duration cannot be negative at line
//! 1 column 27". [`StackConfig::from_deserializer`] tracks the path the
//! deserializer had reached when it failed (`serde_path_to_error`) and turns
//! it into the same [`ConfigError`] that [`LlmStack::from_config`] returns
//! for a value that reads but is invalid, with the section and field as the
//! file spells them.
//!
//! [`LlmStack::from_config`]: super::LlmStack::from_config

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_path_to_error::{Path, Segment};

use super::config::{
    BreakerConfig, ConcurrencyConfig, RateConfig, RetryConfig, StackConfig, TimeoutConfig,
};
use crate::error::ConfigError;

/// Why [`StackConfig::from_deserializer`] could not read a configuration.
///
/// ```
/// use llm_sluice::stack::{ConfigReadError, StackConfig};
///
/// let text = "[retry]\nbackoff_base = -1\n";
/// let err = StackConfig::from_deserializer(toml::Deserializer::parse(text).unwrap())
///     .unwrap_err();
/// match err {
///     ConfigReadError::Invalid(e) => {
///         assert_eq!((e.section(), e.field()), (Some("retry"), "backoff_base"));
///     }
///     other => panic!("{other}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigReadError {
    /// A setting's value could not be read: the wrong type, a negative
    /// number, a duration that does not parse, a name that is not one of the
    /// choices. The [`ConfigError`] names the section and field as written
    /// in the file (a whole section written as something other than a table
    /// is named as a top-level field, `retry`); its reason is the format's
    /// own message, position included.
    #[error(transparent)]
    Invalid(#[from] ConfigError),

    /// A key that names no setting: a misspelt field or section.
    /// Configurations refuse unknown keys so that a typo is not silently a
    /// default.
    #[error("unknown setting `{}`: {reason}", dotted(*.section, .key))]
    Unknown {
        /// The section the key is in; `None` at the top level.
        section: Option<&'static str>,
        /// The key as it was written.
        key: String,
        /// The format's message (the keys it expected, and where).
        reason: String,
    },

    /// The input is not a configuration before any setting is reached: its
    /// top level is not a table or an object, or it is malformed there.
    #[error("invalid configuration: {reason}")]
    Malformed {
        /// The format's message.
        reason: String,
    },
}

fn dotted(section: Option<&str>, key: &str) -> String {
    match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    }
}

impl StackConfig {
    /// Reads a configuration from any serde deserializer (TOML, JSON, YAML,
    /// ...), naming the field of a value that cannot be read.
    ///
    /// Missing fields take their defaults and unknown keys are refused (see
    /// [`StackConfig`]). A value that reads but is out of range (a window of
    /// zero, a duration over 31 days) is refused later, by
    /// [`LlmStack::from_config`](super::LlmStack::from_config), with a
    /// [`ConfigError`] naming its field the same way; so a configuration
    /// file is checked in two steps that both name what to fix.
    ///
    /// Calling `toml::from_str::<StackConfig>` or `serde_json::from_str`
    /// directly works too, with the format's error, which gives the position
    /// of a bad value in the text but not its field as a value a program can
    /// read. A configuration that embeds a `StackConfig` in a larger struct
    /// can get the same path from `serde_path_to_error::deserialize` on its
    /// own type.
    ///
    /// TOML parses the whole document before any value is read, so its
    /// syntax errors come from `toml::Deserializer::parse`. serde_json reads
    /// as it goes: call its `end()` afterwards to refuse trailing text.
    ///
    /// ```
    /// use llm_sluice::stack::{ConfigReadError, LlmStack, StackConfig};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // TOML
    /// let text = "deadline = \"5m\"\n[rate]\nrequests_per_minute = 500\n";
    /// let config = StackConfig::from_deserializer(toml::Deserializer::parse(text)?)?;
    /// let stack = LlmStack::from_config(&config)?; // the second step
    /// # let _ = stack;
    ///
    /// // JSON
    /// let mut json = serde_json::Deserializer::from_str(r#"{"retry": {"backoff_base": -1}}"#);
    /// let err = StackConfig::from_deserializer(&mut json).unwrap_err();
    /// assert!(matches!(
    ///     &err,
    ///     ConfigReadError::Invalid(e) if (e.section(), e.field()) == (Some("retry"), "backoff_base")
    /// ));
    /// assert!(err.to_string().starts_with("invalid `retry.backoff_base`: "), "{err}");
    ///
    /// // A misspelt key
    /// let mut json = serde_json::Deserializer::from_str(r#"{"rate": {"requests_per_minut": 5}}"#);
    /// let err = StackConfig::from_deserializer(&mut json).unwrap_err();
    /// assert!(matches!(
    ///     &err,
    ///     ConfigReadError::Unknown { section: Some("rate"), key, .. } if key == "requests_per_minut"
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_deserializer<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<StackConfig, ConfigReadError> {
        serde_path_to_error::deserialize(deserializer)
            .map_err(|e| locate(e.path(), e.inner().to_string()))
    }
}

/// Which setting `path` points into: the deepest part of it the
/// configuration knows.
fn locate(path: &Path, reason: String) -> ConfigReadError {
    let mut segments = path.iter();
    let top = match segments.next() {
        Some(Segment::Map { key }) => key,
        // Nothing read yet, or a top level that is not a table.
        _ => return ConfigReadError::Malformed { reason },
    };
    let Some(top) = known(field_names::<StackConfig>(), top) else {
        return ConfigReadError::Unknown {
            section: None,
            key: top.clone(),
            reason,
        };
    };
    let Some(fields) = section_fields(top) else {
        // A top-level setting (`deadline`): anything below it is its value.
        return ConfigError::new(top, reason).into();
    };
    match segments.next() {
        Some(Segment::Map { key }) => match known(fields, key) {
            Some(field) => ConfigError::new(field, reason).in_section(top).into(),
            None => ConfigReadError::Unknown {
                section: Some(top),
                key: key.clone(),
                reason,
            },
        },
        // The section itself is wrong (`retry = 5`, a list), or the format
        // failed between its keys.
        _ => ConfigError::new(top, reason).into(),
    }
}

/// The `'static` spelling of `key` among `names`.
fn known(names: &'static [&'static str], key: &str) -> Option<&'static str> {
    names.iter().copied().find(|name| *name == key)
}

/// The fields of a section of [`StackConfig`]; `None` for a top-level
/// setting that is not a section.
fn section_fields(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "retry" => field_names::<RetryConfig>(),
        "breaker" => field_names::<BreakerConfig>(),
        "concurrency" => field_names::<ConcurrencyConfig>(),
        "rate" => field_names::<RateConfig>(),
        "timeout" => field_names::<TimeoutConfig>(),
        _ => return None,
    })
}

/// The field names serde's derive gives `T`: the list it passes to
/// `deserialize_struct`, caught by a deserializer that reads nothing else.
/// The names come from the structs themselves, so a field added to a section
/// is known here without a second list to keep in step.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The deserializer always fails: it only records.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_structs_own() {
        assert_eq!(
            field_names::<StackConfig>(),
            [
                "deadline",
                "retry",
                "breaker",
                "concurrency",
                "rate",
                "timeout"
            ]
        );
        assert!(field_names::<RetryConfig>().contains(&"backoff_base"));
        assert!(field_names::<RateConfig>().contains(&"max_partitions"));
    }
}
