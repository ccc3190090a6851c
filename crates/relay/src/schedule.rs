//! When a failed message is tried next.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// How far the schedule's delays are spread, each way: ±10%, so messages that failed
/// together (a receiver that was down) do not all come back at the same moment.
const JITTER_SPREAD: f64 = 0.1;

/// The longest `Retry-After` honoured: a receiver asking for more is tried after a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The wait before the next try of a message whose `failed` tries (this one included, so at
/// least 1) have failed, on `schedule` (the delays between tries), moved by `jitter` (a
/// number in `[0, 1)`, spread to ±10%), and never shorter than a `Retry-After` the answer
/// gave. `None`: that was the last try; the message is dead.
pub(crate) fn retry_delay(
    schedule: &[Duration],
    failed: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let planned = *schedule.get(usize::try_from(failed).ok()?.checked_sub(1)?)?;
    let factor = 1.0 + JITTER_SPREAD * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
    // Whole milliseconds: the store keeps due times in milliseconds.
    let jittered = Duration::from_millis((planned.as_secs_f64() * 1000.0 * factor).round() as u64);
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

/// A `Retry-After` header's wait, from `now`: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, or the two obsolete forms HTTP still reads). A date
/// in the past is no wait. `None` when the value is neither.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than fit in a u64 is still "a very long time".
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_config::DEFAULT_RELAY_SCHEDULE;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn each_failure_waits_its_place_in_the_schedule_and_the_last_ends_it() {
        let schedule = DEFAULT_RELAY_SCHEDULE;
        let middle = 0.5;
        for (failed, expected) in [
            (1, Some(S(5))),
            (2, Some(S(300))),
            (3, Some(S(1800))),
            (4, Some(S(7200))),
            (5, Some(S(18000))),
            (6, Some(S(36000))),
            (7, Some(S(36000))),
            (8, None),
            (100, None),
        ] {
            assert_eq!(
                retry_delay(&schedule, failed, None, middle),
                expected,
                "after {failed} failed tries"
            );
        }
        assert_eq!(retry_delay(&schedule, 0, None, middle), None);
        assert_eq!(retry_delay(&[], 1, None, middle), None);
    }

    #[test]
    fn jitter_spreads_the_delay_ten_percent_each_way() {
        let schedule = [S(100)];
        assert_eq!(retry_delay(&schedule, 1, None, 0.0), Some(S(90)));
        assert_eq!(retry_delay(&schedule, 1, None, 0.25), Some(S(95)));
        assert_eq!(retry_delay(&schedule, 1, None, 0.75), Some(S(105)));
        assert_eq!(
            retry_delay(&schedule, 1, None, 0.999_9),
            Some(Duration::from_millis(109_998))
        );
        // Out-of-range jitter is held to the spread.
        assert_eq!(retry_delay(&schedule, 1, None, -3.0), Some(S(90)));
        assert_eq!(retry_delay(&schedule, 1, None, 7.0), Some(S(110)));
    }

    #[test]
    fn a_retry_after_longer_than_the_schedule_wins_and_is_capped_at_a_day() {
        let schedule = [S(5), S(300)];
        assert_eq!(retry_delay(&schedule, 1, Some(S(60)), 0.5), Some(S(60)));
        // Shorter than the schedule: the schedule's delay stands.
        assert_eq!(retry_delay(&schedule, 2, Some(S(60)), 0.5), Some(S(300)));
        assert_eq!(
            retry_delay(&schedule, 1, Some(S(7 * 86_400)), 0.5),
            Some(MAX_RETRY_AFTER)
        );
        // It does not add a try past the schedule's end.
        assert_eq!(retry_delay(&schedule, 3, Some(S(60)), 0.5), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let now = SystemTime::UNIX_EPOCH + S(1_445_412_480);
        let read = |text: &str| parse_retry_after(&HeaderValue::from_str(text).unwrap(), now);
        assert_eq!(read("120"), Some(S(120)));
        assert_eq!(read(" 0 "), Some(S(0)));
        assert_eq!(read("99999999999999999999999"), Some(S(u64::MAX)));
        assert_eq!(read("Wed, 21 Oct 2015 07:30:00 GMT"), Some(S(120)));
        assert_eq!(read("Wednesday, 21-Oct-15 07:29:00 GMT"), Some(S(60)));
        assert_eq!(read("Wed Oct 21 07:28:30 2015"), Some(S(30)));
        assert_eq!(read("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        for junk in [
            "",
            "-5",
            "1.5",
            "soon",
            "in 5 minutes",
            "Wed, 32 Oct 2015 07:30:00 GMT",
        ] {
            assert_eq!(read(junk), None, "{junk:?}");
        }
    }
}
