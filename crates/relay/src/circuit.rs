//! The circuit breaker of one target.
//!
//! SKELETON (issue 24): the sender work fills it in.

use std::time::{Duration, Instant};

/// Consecutive failed tries (no success between) that open a target's circuit.
pub(crate) const OPEN_AFTER: u32 = 5;

/// What the dispatcher may send to a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Anything: the circuit is closed.
    Open,
    /// One message, as a probe; nothing else until its result is known.
    Probe,
    /// Nothing until then (a probe is in flight: `None`).
    Wait(Option<Instant>),
}

/// The circuit as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    /// Sending.
    Closed,
    /// Not sending; the next probe is at `probe_at` (`None`: a probe is in flight).
    Open {
        /// The failed tries in a row.
        failures: u32,
        /// When the next probe goes.
        probe_at: Option<Instant>,
    },
}

/// One target's breaker: opens after [`OPEN_AFTER`] failed tries in a row, then lets one
/// probe through after each delay of the target's schedule; a delivered probe closes it.
#[derive(Debug)]
pub(crate) struct Circuit {
    schedule: Vec<Duration>,
    failures: u32,
}

impl Circuit {
    /// A closed circuit whose probes follow `schedule`.
    pub(crate) fn new(schedule: Vec<Duration>) -> Self {
        Self {
            schedule,
            failures: 0,
        }
    }

    /// What may be sent at `now`; a [`Gate::Probe`] answer counts the probe as sent.
    pub(crate) fn gate(&mut self, now: Instant) -> Gate {
        let _ = (now, &self.schedule);
        Gate::Open
    }

    /// A try was delivered (or the receiver answered in a way that says it is up).
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A try failed at `now`.
    pub(crate) fn failed(&mut self, now: Instant) {
        let _ = now;
        self.failures += 1;
    }

    /// The state, for people.
    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::Closed
    }
}
