//! Durations written as whole milliseconds in settings (`*_ms` keys), for the
//! adapters' config types to deserialize straight from a settings file or
//! the environment.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A positive number of milliseconds.
///
/// # Errors
/// Zero, a negative number, or not a number.
pub fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let ms = i64::deserialize(deserializer)?;
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(serde::de::Error::custom(format!(
            "{ms} is not accepted (a positive number of milliseconds)"
        ))),
    }
}

/// A number of milliseconds, zero included.
///
/// # Errors
/// A negative number, or not a number.
pub fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let ms = i64::deserialize(deserializer)?;
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| serde::de::Error::custom(format!("{ms} is not accepted (milliseconds >= 0)")))
}

/// A positive whole number (a count or a size) of type `T`.
///
/// # Errors
/// Zero, a negative number, one too large for `T`, or not a number.
pub fn positive_count<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + PartialOrd + Default,
{
    let n = i64::deserialize(deserializer)?;
    match T::try_from(n) {
        Ok(value) if value > T::default() => Ok(value),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not accepted (a positive whole number)"
        ))),
    }
}

/// A number of whole seconds, zero included (`*_secs` keys).
///
/// # Errors
/// A negative number, or not a number.
pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let secs = i64::deserialize(deserializer)?;
    u64::try_from(secs)
        .map(Duration::from_secs)
        .map_err(|_| serde::de::Error::custom(format!("{secs} is not accepted (seconds >= 0)")))
}

/// A positive number of whole seconds.
///
/// # Errors
/// Zero, a negative number, or not a number.
pub fn positive_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let secs = i64::deserialize(deserializer)?;
    match u64::try_from(secs) {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(serde::de::Error::custom(format!(
            "{secs} is not accepted (a positive number of seconds)"
        ))),
    }
}
