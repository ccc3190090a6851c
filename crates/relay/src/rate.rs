//! A target's rate limit.
//!
//! A token bucket holding a burst of at most a tenth of the rate's count (at least 1),
//! kept as the time the bucket will next be full (the "theoretical arrival time" of the
//! generic cell rate algorithm), so taking a token is a comparison, whatever the count.
//!
//! A plain bucket that refills at `count` per `per` lets a full burst and then a period's
//! worth of refills through in one period: `burst + count`. Tokens here come one every
//! `per / (count - burst + 1)`, so a burst followed by the steady pace never starts more
//! than `count` tries in any window of length `per`; the steady pace is that much below
//! `count` per `per` when the burst is above 1.

use std::time::{Duration, Instant};

use baton_config::RelayRate;

/// A token bucket: never more than the rate's count in any window of its period.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// The time between two tokens.
    interval: Duration,
    /// How far ahead of now the bucket's next-full time may be for a token to be taken:
    /// `(burst - 1) × interval`.
    tolerance: Duration,
    /// When the bucket would hold only what it has now plus nothing owed: every take
    /// pushes it one interval later. `None`: full.
    next_free: Option<Instant>,
}

impl RateLimiter {
    /// A full bucket for `rate`.
    pub(crate) fn new(rate: RelayRate) -> Self {
        let count = rate.count.max(1);
        let burst = (count / 10).max(1);
        let steps = u128::from(count - burst + 1);
        // Rounded up: an interval a nanosecond short would let one token too many into
        // a window.
        let nanos = rate.per.as_nanos().div_ceil(steps);
        let interval = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Self {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            next_free: None,
        }
    }

    /// Takes a token at `now`, or says when the next one will be there.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let due = self.next_free.map_or(now, |at| at.max(now));
        if due.duration_since(now) > self.tolerance {
            return Err(due - self.tolerance);
        }
        self.next_free = Some(due.checked_add(self.interval).unwrap_or(due));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(count: u32, per: Duration) -> RateLimiter {
        RateLimiter::new(RelayRate { count, per })
    }

    /// Takes greedily from `start` for `span`: whenever refused, waits exactly until the
    /// time the refusal names. Returns each take's time.
    fn greedy(limiter: &mut RateLimiter, start: Instant, span: Duration) -> Vec<Instant> {
        let mut taken = Vec::new();
        let mut now = start;
        while now < start + span {
            match limiter.take(now) {
                Ok(()) => taken.push(now),
                Err(when) => {
                    assert!(when > now, "a refusal names a later time");
                    now = when;
                }
            }
        }
        taken
    }

    /// The most takes in any half-open window of length `per`.
    fn busiest_window(taken: &[Instant], per: Duration) -> usize {
        taken
            .iter()
            .enumerate()
            .map(|(i, &from)| taken[i..].iter().take_while(|&&t| t < from + per).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_of_the_period_holds_more_than_the_count() {
        let second = Duration::from_secs(1);
        for (count, per) in [
            (1, second),
            (2, second),
            (9, second),
            (10, second),
            (19, second),
            (20, second),
            (50, second),
            (600, Duration::from_secs(60)),
            (7, Duration::from_millis(333)),
        ] {
            let mut limiter = limiter(count, per);
            let taken = greedy(&mut limiter, Instant::now(), per * 5);
            let busiest = busiest_window(&taken, per);
            assert_eq!(busiest, count as usize, "{count}/{per:?}");
        }
    }

    #[test]
    fn the_burst_is_a_tenth_of_the_count_and_at_least_one() {
        for (count, burst) in [(1, 1), (9, 1), (19, 1), (20, 2), (50, 5), (600, 60)] {
            let mut limiter = limiter(count, Duration::from_secs(60));
            let now = Instant::now();
            let at_once = (0..count).take_while(|_| limiter.take(now).is_ok()).count();
            assert_eq!(at_once, burst as usize, "{count}/min");
        }
    }

    #[test]
    fn a_refusal_names_when_the_next_token_comes_and_it_does() {
        let mut limiter = limiter(1, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(limiter.take(now), Ok(()));
        let next = limiter.take(now + Duration::from_secs(1)).unwrap_err();
        assert_eq!(next, now + Duration::from_secs(60));
        assert!(limiter.take(next - Duration::from_millis(1)).is_err());
        assert_eq!(limiter.take(next), Ok(()));
    }

    #[test]
    fn an_idle_bucket_fills_up_to_its_burst_and_no_more() {
        let mut limiter = limiter(50, Duration::from_secs(1));
        let now = Instant::now();
        let first = (0..50).take_while(|_| limiter.take(now).is_ok()).count();
        assert_eq!(first, 5);
        let later = now + Duration::from_secs(3600);
        let second = (0..50).take_while(|_| limiter.take(later).is_ok()).count();
        assert_eq!(second, 5);
    }

    #[test]
    fn the_steady_pace_is_one_token_per_interval() {
        // 50/s, burst 5: 46 intervals per second.
        let mut limiter = limiter(50, Duration::from_secs(1));
        let start = Instant::now();
        let taken = greedy(&mut limiter, start, Duration::from_secs(10));
        // The burst of 5, then one every 1/46 s for the rest of the ten seconds.
        let expected = 5 + (10 * 46 - 1);
        assert!(
            taken.len().abs_diff(expected) <= 1,
            "{} taken, expected about {expected}",
            taken.len()
        );
    }
}
