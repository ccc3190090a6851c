//! One rate-limit budget per credential, shared by every stage and every adapter instance
//! that uses it.
//!
//! GitHub counts requests per token (or per App installation) in an hourly window and says
//! where the window stands on every answer (`x-ratelimit-limit`, `-remaining`, `-reset`).
//! A process-wide registry keyed by a hash of the credential keeps what the last answer
//! said and which stages are waiting on it, so that poll hints can stretch before the
//! budget runs out: with `n` stages polling, `r` requests left above the reserve and `t`
//! until the reset, a poll interval of at least `n × t / r` cannot spend the rest before
//! the reset. At the reserve only starts and cancels go out; everything else waits for
//! the reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::AttemptKey;
use reqwest::header::HeaderMap;

/// How long a stage that stopped polling still counts as waiting: past the longest hint
/// the engine takes, it has surely finished or gone.
const WAITING_EXPIRES: Duration = Duration::from_secs(3600);

/// How often stages that stopped polling are cleared from the waiting count.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The share of the limit below which poll hints begin to stretch.
const STRETCH_BELOW: f64 = 0.5;

/// What kind of request wants to go out, for the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A dispatch or a cancel: always goes while anything is left.
    Essential,
    /// A poll, an outputs read, a search: held back at the reserve.
    Routine,
}

#[derive(Debug, Default)]
struct State {
    limit: Option<u64>,
    remaining: Option<u64>,
    /// The reset as Unix seconds (GitHub's `x-ratelimit-reset`).
    reset: Option<u64>,
    /// No request before this (a secondary limit's `retry-after`, a spent budget).
    blocked_until: Option<Instant>,
    /// Attempts polling on this credential, with when they last polled.
    waiting: HashMap<AttemptKey, Instant>,
    /// When `waiting` was last cleared of stages that stopped polling.
    pruned: Option<Instant>,
    /// The lowest `remaining` seen, for tests and diagnostics.
    lowest: Option<u64>,
}

/// The budget of one credential.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<State>,
}

/// What the budget says about a request about to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Send it.
    Go,
    /// Hold it for this long (the reserve is reached, or a limit asked to wait).
    Wait(Duration),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Budget {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget of credential `id` (a hash, never the secret), shared process-wide.
    pub(crate) fn of(id: &str) -> Arc<Budget> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Budget>>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Mutex::default);
        registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Reads the rate-limit headers of an answer (any status, 304 included).
    pub(crate) fn observe(&self, headers: &HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut s = self.state();
        if let Some(limit) = number("x-ratelimit-limit") {
            s.limit = Some(limit);
        }
        if let Some(reset) = number("x-ratelimit-reset")
            && s.reset != Some(reset)
        {
            // A new window: the remaining count of the old one no longer holds.
            s.reset = Some(reset);
            s.remaining = None;
        }
        if let Some(remaining) = number("x-ratelimit-remaining") {
            // Answers to concurrent requests arrive in any order: within a window the
            // count only falls.
            s.remaining = Some(s.remaining.map_or(remaining, |r| r.min(remaining)));
            s.lowest = Some(s.lowest.map_or(remaining, |l| l.min(remaining)));
        }
    }

    /// Gives back a request the gate counted that GitHub did not (a 304).
    pub(crate) fn refund(&self) {
        let mut s = self.state();
        if let (Some(limit), Some(remaining)) = (s.limit, s.remaining) {
            s.remaining = Some((remaining + 1).min(limit));
        }
    }

    /// Holds every request for `wait` (a secondary limit's `retry-after`, a spent window).
    pub(crate) fn block_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut s = self.state();
        s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// How long until the window resets, as GitHub last said; zero when unknown or past.
    pub(crate) fn until_reset(&self) -> Duration {
        let s = self.state();
        Self::reset_in(&s)
    }

    fn reset_in(s: &State) -> Duration {
        s.reset
            .map(|r| Duration::from_secs(r.saturating_sub(now_secs())))
            .unwrap_or_default()
    }

    /// The requests kept for starts and cancels: 5% of the limit, at least 5.
    fn reserve(limit: u64) -> u64 {
        (limit / 20).max(5)
    }

    /// Whether a request of `kind` may go out now; a `Go` counts it as spent.
    pub(crate) fn gate(&self, kind: Use) -> Gate {
        self.decide(kind, true)
    }

    /// What [`Budget::gate`] would answer now, without counting anything: for a caller
    /// that only wants to know whether to send at all (its request then passes the gate).
    pub(crate) fn peek(&self, kind: Use) -> Gate {
        self.decide(kind, false)
    }

    fn decide(&self, kind: Use, spend: bool) -> Gate {
        let mut s = self.state();
        if let Some(until) = s.blocked_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Gate::Wait(left);
            }
            s.blocked_until = None;
        }
        let (Some(limit), Some(remaining)) = (s.limit, s.remaining) else {
            return Gate::Go;
        };
        let reset_in = Self::reset_in(&s);
        if reset_in.is_zero() {
            return Gate::Go;
        }
        let floor = match kind {
            Use::Essential => 0,
            Use::Routine => Self::reserve(limit),
        };
        if remaining <= floor {
            // One second past the reset: GitHub's reset is whole seconds.
            Gate::Wait(reset_in + Duration::from_secs(1))
        } else {
            // Counted as spent now, not when its answer comes: many stages pass the gate
            // before any of their answers tells how much is left.
            if spend {
                s.remaining = Some(remaining - 1);
            }
            Gate::Go
        }
    }

    /// Notes that `key` is waiting on this credential (it just polled).
    pub(crate) fn waiting(&self, key: &AttemptKey) {
        let mut s = self.state();
        let now = Instant::now();
        // A scan of every waiting stage on each poll would be quadratic per round; stages
        // count as gone after an hour, so a scan a minute is exact enough.
        if s.pruned
            .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY)
        {
            s.waiting
                .retain(|_, seen| now.duration_since(*seen) < WAITING_EXPIRES);
            s.pruned = Some(now);
        }
        s.waiting.insert(key.clone(), now);
    }

    /// Notes that `key` no longer waits (it ended, or was cancelled).
    pub(crate) fn done(&self, key: &AttemptKey) {
        self.state().waiting.remove(key);
    }

    /// The shortest poll interval that keeps the stages waiting on this credential from
    /// spending the rest of the window before it resets; zero while more than half of the
    /// limit is left.
    pub(crate) fn poll_floor(&self) -> Duration {
        let s = self.state();
        let (Some(limit), Some(remaining)) = (s.limit, s.remaining) else {
            return Duration::ZERO;
        };
        let reset_in = Self::reset_in(&s);
        if reset_in.is_zero() || (remaining as f64) >= limit as f64 * STRETCH_BELOW {
            return Duration::ZERO;
        }
        let spendable = remaining.saturating_sub(Self::reserve(limit));
        if spendable == 0 {
            return reset_in + Duration::from_secs(1);
        }
        let stages = s.waiting.len().max(1) as f64;
        // Past the reset a full window is there again: no stage need wait longer.
        reset_in
            .mul_f64(stages / spendable as f64)
            .min(reset_in + Duration::from_secs(1))
    }

    /// The lowest `x-ratelimit-remaining` seen on this credential.
    pub fn lowest_remaining(&self) -> Option<u64> {
        self.state().lowest
    }

    /// The stages counted as waiting on this credential.
    pub fn waiting_stages(&self) -> usize {
        self.state().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(limit: u64, remaining: u64, reset_in: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        // The clock read here, not through `now_secs`, so that the budget's own reading
        // of it is tested too.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        h.insert("x-ratelimit-reset", HeaderValue::from(now + reset_in));
        h
    }

    #[test]
    fn hints_stretch_below_half_so_the_rest_lasts_until_the_reset() {
        let b = Budget::default();
        for i in 0..100 {
            b.waiting(&AttemptKey::new("r", &format!("s{i}"), 1));
        }
        b.observe(&headers(5000, 4000, 1800));
        assert_eq!(b.poll_floor(), Duration::ZERO);
        assert_eq!(b.lowest_remaining(), Some(4000));
        let reset = b.until_reset();
        assert!(reset > Duration::from_secs(1798) && reset <= Duration::from_secs(1800));
        b.observe(&headers(5000, 2250, 1800));
        // 100 stages × 1800 s / (2250 − 250 reserved) = 90 s.
        let floor = b.poll_floor().as_secs_f64();
        assert!((89.0..=91.0).contains(&floor), "{floor}");
        // The count only falls within a window, whatever order answers come in.
        b.observe(&headers(5000, 3000, 1800));
        assert!((89.0..=91.0).contains(&b.poll_floor().as_secs_f64()));
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        b.observe(&headers(5000, 250, 1800));
        assert!(matches!(b.gate(Use::Routine), Gate::Wait(w) if w >= Duration::from_secs(1800)));
        assert_eq!(b.gate(Use::Essential), Gate::Go);
        b.observe(&headers(5000, 0, 1800));
        assert!(matches!(b.gate(Use::Essential), Gate::Wait(_)));
        assert_eq!(b.lowest_remaining(), Some(0));
        // A new window starts afresh.
        b.observe(&headers(5000, 4999, 3600));
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert_eq!(b.poll_floor(), Duration::ZERO);
        // Never past the reset: a full window comes then.
        b.observe(&headers(5000, 2000, 600));
        b.observe(&headers(5000, 260, 600));
        assert_eq!(b.poll_floor(), b.until_reset() + Duration::from_secs(1));
        // At the reserve, nothing is left to spread: the next poll comes after the reset.
        b.observe(&headers(5000, 250, 600));
        assert_eq!(b.poll_floor(), b.until_reset() + Duration::from_secs(1));
        b.done(&AttemptKey::new("r", "s0", 1));
        assert_eq!(b.waiting_stages(), 99);
    }

    #[test]
    fn the_gate_counts_requests_as_they_leave_and_304s_are_given_back() {
        let b = Budget::default();
        // Limit 100: 5 reserved. Two routine requests may leave, not three.
        b.observe(&headers(100, 7, 60));
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert!(matches!(b.gate(Use::Routine), Gate::Wait(_)));
        // A 304 was free: one more may go.
        b.refund();
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert!(matches!(b.gate(Use::Routine), Gate::Wait(_)));
        // Starts and cancels may spend the reserve, down to the last request.
        for _ in 0..5 {
            assert_eq!(b.gate(Use::Essential), Gate::Go);
        }
        assert!(matches!(b.gate(Use::Essential), Gate::Wait(w) if w > Duration::from_secs(58)));
    }

    #[test]
    fn a_peek_says_what_the_gate_would_and_spends_nothing() {
        let b = Budget::default();
        b.observe(&headers(100, 7, 60));
        // However often a poll asks whether it may send, only what it sends is counted:
        // two routine requests may still leave.
        for _ in 0..10 {
            assert_eq!(b.peek(Use::Routine), Gate::Go);
        }
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert_eq!(b.gate(Use::Routine), Gate::Go);
        assert!(matches!(b.peek(Use::Routine), Gate::Wait(_)));
        assert!(matches!(b.gate(Use::Routine), Gate::Wait(_)));
        assert_eq!(b.peek(Use::Essential), Gate::Go);
    }

    #[test]
    fn a_block_holds_everything() {
        let b = Budget::default();
        b.block_for(Duration::from_secs(30));
        assert!(matches!(b.gate(Use::Essential), Gate::Wait(w) if w > Duration::from_secs(29)));
        assert!(Arc::ptr_eq(&Budget::of("x"), &Budget::of("x")));
        assert!(!Arc::ptr_eq(&Budget::of("x"), &Budget::of("y")));
    }
}
