//! Whether the store can write now ([`Store::writable`], behind `/readyz`), and failures that
//! recur (a full disk fails every commit and every checkpoint) logged when they start and
//! when they end rather than each time.
//!
//! The writer records each group's outcome here. Readiness answers from that record while
//! it is fresh, so a busy store is never probed: its own commits tell. Otherwise (idle, or
//! the last write failed a while ago) it asks the writer for a probe, a real commit of 64 KiB.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_core::outage::Outage;

use crate::*;

/// A commit that succeeded less than this long ago answers readiness without a probe, so an
/// idle store is probed (one commit and its flush) at most this often however often
/// readiness is asked.
pub(super) const FRESH: Duration = Duration::from_secs(5);

/// A failure to write less than this long ago keeps the store unready, whatever succeeded
/// since: on a nearly full disk a small commit may fit where a delivery does not, and
/// readiness must not flap with them. Older, and with nothing written since, a probe tells,
/// so an idle store that cannot write is probed at most this often (a failing probe ends
/// before its flush). Space that returns shows within this.
pub(super) const RECHECK_FAILURE: Duration = Duration::from_secs(1);

/// What readiness should answer.
pub(super) enum Verdict {
    /// A commit succeeded recently.
    Writes,
    /// A write failed recently, for this reason.
    Fails(Arc<StoreError>),
    /// Nothing recent is known: a probe must tell.
    Probe,
}

/// The outcome of the writer's last group, shared with readiness.
#[derive(Default)]
pub(super) struct WriteHealth {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When a commit last succeeded.
    wrote_at: Option<Instant>,
    /// The last failure to write, and when it happened.
    failure: Option<(Instant, Arc<StoreError>)>,
    outage: Outage,
    /// Probes run, for the tests that show a busy store is not probed.
    #[cfg(test)]
    probes: u64,
}

impl State {
    /// The last failure, if it is recent enough to answer for the store.
    fn recent_failure(&self, now: Instant) -> Option<&Arc<StoreError>> {
        self.failure
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < RECHECK_FAILURE)
            .map(|(_, error)| error)
    }
}

impl WriteHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A group committed changes. When that ends an outage (its last failure is older than
    /// [`RECHECK_FAILURE`]), answers how long it lasted and how many failures it had.
    pub(super) fn wrote(&self) -> Option<(Duration, u64)> {
        let now = Instant::now();
        let mut state = self.lock();
        state.wrote_at = Some(now);
        if state.recent_failure(now).is_some() {
            return None;
        }
        state.outage.recovered()
    }

    /// A write failed for want of space or with failing files; true when this starts an
    /// outage (the failure to log).
    pub(super) fn failed(&self, error: Arc<StoreError>) -> bool {
        let mut state = self.lock();
        state.failure = Some((Instant::now(), error));
        state.outage.failed()
    }

    /// What readiness should answer at `now`.
    pub(super) fn verdict(&self, now: Instant) -> Verdict {
        let state = self.lock();
        if let Some(error) = state.recent_failure(now) {
            return Verdict::Fails(error.clone());
        }
        let failed_at = state.failure.as_ref().map(|(at, _)| *at);
        match state.wrote_at {
            Some(at)
                if now.saturating_duration_since(at) < FRESH
                    && failed_at.is_none_or(|failed| failed < at) =>
            {
                Verdict::Writes
            }
            _ => Verdict::Probe,
        }
    }

    /// Counts a probe (tests only).
    #[cfg(test)]
    pub(super) fn probed(&self) {
        self.lock().probes += 1;
    }

    /// Probes run so far (tests only).
    #[cfg(test)]
    pub(super) fn probes(&self) -> u64 {
        self.lock().probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Arc<StoreError> {
        Arc::new(StoreError::Full {
            detail: "database or disk is full".into(),
        })
    }

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let mut outage = Outage::default();
        assert_eq!(outage.recovered(), None, "no outage, nothing to report");
        assert!(outage.failed());
        assert!(!outage.failed());
        assert!(!outage.failed());
        let (_, failures) = outage.recovered().expect("the outage ended");
        assert_eq!(failures, 3);
        assert_eq!(outage.recovered(), None);
        assert!(outage.failed(), "a new outage is reported again");
    }

    #[test]
    fn readiness_trusts_recent_outcomes_and_probes_otherwise() {
        let health = WriteHealth::default();
        let now = Instant::now();
        assert!(
            matches!(health.verdict(now), Verdict::Probe),
            "nothing known"
        );
        assert_eq!(health.wrote(), None);
        assert!(matches!(health.verdict(Instant::now()), Verdict::Writes));
        assert!(matches!(
            health.verdict(Instant::now() + FRESH),
            Verdict::Probe
        ));
        assert!(health.failed(full()));
        assert!(!health.failed(full()));
        let fails = |at| match health.verdict(at) {
            Verdict::Fails(e) => e.to_string().contains("disk full"),
            _ => false,
        };
        assert!(
            fails(Instant::now()),
            "a recent failure is answered as it is"
        );
        // A small commit that fits does not make a recent failure go away, nor end the
        // outage.
        assert_eq!(health.wrote(), None);
        assert!(fails(Instant::now()));
        // Once the failure is old, what was written after it answers...
        assert!(matches!(
            health.verdict(Instant::now() + RECHECK_FAILURE),
            Verdict::Writes
        ));
        // ...and a failure with nothing written after it is probed.
        assert!(!health.failed(full()));
        assert!(matches!(
            health.verdict(Instant::now() + RECHECK_FAILURE),
            Verdict::Probe
        ));
    }

    #[test]
    fn an_outage_ends_with_a_write_once_its_failures_are_old() {
        let health = WriteHealth::default();
        assert!(health.failed(full()));
        assert_eq!(health.wrote(), None, "the failure is recent");
        std::thread::sleep(RECHECK_FAILURE);
        let (_, failures) = health.wrote().expect("the outage ended");
        assert_eq!(failures, 1);
        assert!(matches!(health.verdict(Instant::now()), Verdict::Writes));
    }
}
