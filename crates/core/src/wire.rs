//! What adapters that talk HTTP share, with no I/O of their own: poll hints and retry
//! waits that grow, URL path segments, and error messages that name every cause.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use crate::adapter::{AdapterError, AttemptKey};
use crate::duration::HumanDuration;

/// Now, in ms since the epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// The start of an answer's body for an error message, `: \`…\``, or nothing when it is
/// empty.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.trim() {
        "" => String::new(),
        text => format!(": `{}`", text.chars().take(200).collect::<String>()),
    }
}

/// The JSON of an answer `system` (such as ``Travis `ci` ``) gave when baton tried to
/// `what`; `body` was cut at `cap` bytes when `cut`. A body that was cut or is not the
/// JSON expected is a protocol error that quotes its start.
pub fn read_json<T: DeserializeOwned>(
    (body, cut, cap): (&[u8], bool, usize),
    system: &str,
    what: &str,
) -> Result<T, AdapterError> {
    if cut {
        return Err(AdapterError::Protocol(format!(
            "{system}'s answer to {what} is larger than {cap} bytes"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        let quoted = excerpt(body);
        AdapterError::Protocol(format!(
            "{system} answered something baton cannot read when it tried to {what} ({e}){quoted}"
        ))
    })
}

/// The poll hint after `polls` polls in one phase: `initial × 1.5^polls`, capped at `max`,
/// times `jitter` (drawn by the caller, such as from [0.8, 1.2]), never above `max` nor
/// below a millisecond.
pub fn poll_hint(initial: Duration, max: Duration, polls: u32, jitter: f64) -> Duration {
    let max = max.as_secs_f64();
    let grown = (initial.as_secs_f64() * 1.5f64.powi(polls.min(64) as i32)).min(max);
    Duration::from_secs_f64((grown * jitter).clamp(0.001, max.max(0.001)))
}

/// How transient answers (429, 5xx, a refused connection) are retried within one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests in all, the first included.
    pub attempts: u32,
    /// The wait before the first retry; it doubles for each later one.
    pub base: Duration,
    /// The longest single wait.
    pub cap: Duration,
    /// The most time spent waiting between retries in one call, `Retry-After` included;
    /// past it the call fails as transient and the engine tries again later.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
            budget: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `n` (0-based): `base × 2^n`, capped at `cap`, times `jitter`
    /// (drawn by the caller, such as from [0.5, 1.0]).
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(n.min(16)))
            .min(self.cap)
            .mul_f64(jitter)
    }

    /// The wait before retry `n` (0-based) of a call that has waited `waited` so far and
    /// just met `failure`: the backoff (with `jitter`), longer where the server asked to
    /// wait `retry_after`. Past the budget, `failure` as a transient error instead, saying
    /// when the server's own wait was too long.
    pub fn wait_within_budget(
        &self,
        n: u32,
        jitter: f64,
        retry_after: Option<Duration>,
        waited: Duration,
        failure: &AdapterError,
    ) -> Result<Duration, AdapterError> {
        let wait = self.backoff(n, jitter).max(retry_after.unwrap_or_default());
        if waited + wait <= self.budget {
            return Ok(wait);
        }
        let mut message = failure.to_string();
        if let Some(after) = retry_after {
            message.push_str(&format!(
                "; it asked to wait {} (Retry-After), longer than baton waits within one call: baton tries again later",
                HumanDuration(after)
            ));
        }
        Err(AdapterError::Transient(message))
    }
}

/// Whether a request may be sent again after an ambiguous failure (a timeout, a dropped
/// connection, a 5xx after the server may have acted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Sending it twice does no harm (reads, stops, cancels).
    Safe,
    /// Sending it twice may start a second build, pipeline or run: retried only when the
    /// server surely did not act on it (429, a refused connection).
    Once,
}

/// Percent-encodes every byte of `text` outside the URL's unreserved set, for one path
/// segment or query value.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// When the run of `key` was created (Unix ms), from its id when that is a UUIDv7 as the
/// engine makes them (the first 48 bits are a Unix time in milliseconds); `None` for other
/// ids. Adapters that look for work a lost start may have made search from there.
pub fn run_created_ms(key: &AttemptKey) -> Option<u64> {
    let hex: String = key.run_id().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || &hex[12..13] != "7" {
        return None;
    }
    u64::from_str_radix(&hex[..12], 16).ok()
}

/// `ms` since the epoch in ISO 8601, UTC, to the second (`2016-08-12T15:23:28Z`), as
/// GitLab's `updated_after` and GitHub's `created` filters take it.
pub fn iso_utc(ms: u64) -> String {
    let (days, secs) = ((ms / 86_400_000) as i64, ms / 1000 % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant, "chrono-Compatible Low-Level
    // Date Algorithms", public domain).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let m = (5 * day_of_year + 2) / 153;
    let (d, month) = (
        day_of_year - (153 * m + 2) / 5 + 1,
        if m < 10 { m + 3 } else { m - 9 },
    );
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// An error and every cause below it, each said once: `error sending request: connection
/// refused`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_their_caps() {
        let s = Duration::from_secs;
        assert_eq!(poll_hint(s(2), s(30), 0, 1.0), s(2));
        assert_eq!(poll_hint(s(2), s(30), 2, 1.0), Duration::from_secs_f64(4.5));
        assert_eq!(poll_hint(s(2), s(30), 40, 1.2), s(30));
        assert_eq!(poll_hint(s(2), s(30), 40, 0.8), s(24));
        let ms = Duration::from_millis;
        let p = RetryPolicy {
            base: ms(100),
            cap: ms(350),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(0, 1.0), ms(100));
        assert_eq!(p.backoff(10, 0.5), ms(175));
        assert_eq!(encode_segment("a b/ü~"), "a%20b%2F%C3%BC~");
    }

    #[test]
    fn a_wait_past_the_budget_gives_up_and_says_why() {
        let s = Duration::from_secs;
        let p = RetryPolicy {
            base: s(1),
            cap: s(4),
            budget: s(10),
            ..RetryPolicy::default()
        };
        let failure = AdapterError::Transient("429 Too Many Requests".into());
        assert_eq!(p.wait_within_budget(0, 1.0, None, s(0), &failure), Ok(s(1)));
        assert_eq!(
            p.wait_within_budget(0, 1.0, Some(s(7)), s(0), &failure),
            Ok(s(7)),
            "the server's wait is honoured when longer than the backoff"
        );
        assert_eq!(
            p.wait_within_budget(2, 1.0, None, s(7), &failure),
            Err(AdapterError::Transient("429 Too Many Requests".into()))
        );
        let Err(AdapterError::Transient(message)) =
            p.wait_within_budget(0, 1.0, Some(s(60)), s(0), &failure)
        else {
            panic!("a minute's Retry-After is past the budget")
        };
        assert!(
            message.starts_with("429 Too Many Requests; it asked to wait 1m (Retry-After)"),
            "{message}"
        );
    }

    #[test]
    fn answers_are_read_as_json_or_quoted() {
        let read = |body: &[u8], cut: bool| {
            read_json::<serde_json::Value>((body, cut, 9), "CI `x`", "read a build")
        };
        assert_eq!(
            read(br#"{"id": 1}"#, false),
            Ok(serde_json::json!({"id": 1}))
        );
        assert_eq!(
            read(b"<html>down</html>", false),
            Err(AdapterError::Protocol(
                "CI `x` answered something baton cannot read when it tried to read a build (expected value at line 1 column 1): `<html>down</html>`".into()
            ))
        );
        assert_eq!(
            read(b"{\"id\": 1", true),
            Err(AdapterError::Protocol(
                "CI `x`'s answer to read a build is larger than 9 bytes".into()
            ))
        );
        assert_eq!(excerpt(b"  "), "");
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn run_ids_give_their_creation_time() {
        let key = AttemptKey::new("019a8f3c-2b1e-7c3d-8e4f-5a6b7c8d9e0f", "s", 1);
        assert_eq!(run_created_ms(&key), Some(0x019a8f3c2b1e));
        let run = |id| run_created_ms(&AttemptKey::new(id, "s", 1));
        assert_eq!(
            run("019a8f3c2b1e7c3d8e4f5a6b7c8d9e0f"),
            Some(0x019a8f3c2b1e)
        );
        assert_eq!(run("r1"), None);
        assert_eq!(run("019a8f3c2b1e4c3d8e4f5a6b7c8d9e0f"), None, "a UUIDv4");
        assert_eq!(run("019a8f3c2b1e7c3d8e4f5a6b7c8d9exx"), None);
        assert_eq!(run("019a8f3c2b1e7c3d8e4f5a6b7c8d9eé"), None);
    }

    #[test]
    fn times_are_iso_8601() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_471_015_408_999), "2016-08-12T15:23:28Z");
        assert_eq!(iso_utc(951_868_799_000), "2000-02-29T23:59:59Z");
        // Leap days, century years that are not leap years, and the ends of 400-year eras.
        for (ms, text) in [
            (1_709_208_000_000, "2024-02-29T12:00:00Z"),
            (1_735_689_599_000, "2024-12-31T23:59:59Z"),
            (4_107_456_000_000, "2100-02-28T00:00:00Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00Z"),
            (13_569_465_599_000, "2399-12-31T23:59:59Z"),
            (13_574_585_228_000, "2400-02-29T06:07:08Z"),
            (946_684_799_000, "1999-12-31T23:59:59Z"),
            (951_868_800_000, "2000-03-01T00:00:00Z"),
        ] {
            assert_eq!(iso_utc(ms), text);
        }
    }
}
