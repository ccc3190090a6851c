//! Durations as users write them: `500ms`, `30s`, `5m`, `2h`, `3d`, or sums such as `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in a config or workflow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a duration: expected a number and a unit (ms, s, m, h, d), like `30s`, `5m`, `2h` or `1h30m`"
)]
pub struct DurationError {
    /// The text that was rejected.
    pub input: String,
}

impl HumanDuration {
    /// Parses `30s`, `5m`, `2h`, `3d`, `500ms` and concatenations such as `1h30m`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = || DurationError {
            input: input.to_owned(),
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(value),
                "s" => Duration::from_secs(value),
                "m" => Duration::from_secs(value.checked_mul(60).ok_or_else(err)?),
                "h" => Duration::from_secs(value.checked_mul(3600).ok_or_else(err)?),
                "d" => Duration::from_secs(value.checked_mul(86_400).ok_or_else(err)?),
                _ => return Err(err()),
            };
            total = total.checked_add(part).ok_or_else(err)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_sums() {
        let p = |s| HumanDuration::parse(s).unwrap().0;
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("5m"), Duration::from_secs(300));
        assert_eq!(p("2h"), Duration::from_secs(7200));
        assert_eq!(p("3d"), Duration::from_secs(3 * 86_400));
        assert_eq!(p("250ms"), Duration::from_millis(250));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-5s",
            "5 s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(
                HumanDuration::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["30s", "5m", "2h", "3d", "1h30m", "250ms"] {
            assert_eq!(HumanDuration::parse(s).unwrap().to_string(), s);
        }
    }
}
