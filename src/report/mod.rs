//! Reporters over a recorded run: console lines and summary, JUnit (quick-junit), JSON.
//!
//! The runner records one [`CaseRecord`] per case, in declaration order; every reporter reads
//! the same [`RunRecord`], so the console, the JUnit and the JSON always agree.

pub mod console;
pub mod json;
pub mod junit;
mod model;

pub use model::*;

/// Serde helpers: a `Duration` as seconds (f64).
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}
