//! Durations in configuration files, written for people: `"30s"`,
//! `"1m 30s"`, `"250ms"` (the `humantime` format the crate already uses for
//! reset headers). A plain number is read as seconds, so `30` and `0.5` work
//! too.

use std::fmt;
use std::time::Duration;

use ::serde::de::{self, Visitor};
use ::serde::{Deserializer, Serializer};

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"1m 30s\", \"250ms\", or a number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        humantime::parse_duration(v).map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("invalid duration {v}: {e}")))
    }
}

/// `#[serde(with = "plain")]` for a `Duration`.
pub(crate) mod plain {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// `#[serde(with = "opt_serde")]` for an `Option<Duration>`: `"off"` (or
/// `null` where the format has one) is `None`.
///
/// A missing field takes the section's default, which is `Some` for some
/// settings (the attempt timeout, aging), and TOML has no `null`: `"off"` is
/// how a file turns such a setting off, and how `None` is written back, so a
/// configuration round-trips through every format.
pub(crate) mod opt_serde {
    use super::*;

    /// The word for "no duration", in both directions.
    const OFF: &str = "off";

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration, or \"off\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(OptionVisitor)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.trim().eq_ignore_ascii_case(OFF) {
                return Ok(None);
            }
            DurationVisitor.visit_str(v).map(Some)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            DurationVisitor.visit_u64(v).map(Some)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            DurationVisitor.visit_i64(v).map(Some)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            DurationVisitor.visit_f64(v).map(Some)
        }
    }

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_str(OFF),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }
}

/// `Option<Duration>` for a setting whose absence means "the default"
/// (`None`) and whose `"off"` means zero: the rate window's guard band.
pub(crate) mod guard_serde {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        super::opt_serde::serialize(d, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        // Written down at all: "off" (or null) turns it off rather than
        // falling back to the default, which only a missing field gives.
        Ok(Some(
            super::opt_serde::deserialize(d)?.unwrap_or(Duration::ZERO),
        ))
    }
}
