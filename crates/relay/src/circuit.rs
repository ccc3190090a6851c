//! The circuit breaker of one target.
//!
//! A receiver that fails every try would otherwise be sent every pending message on every
//! retry, each try waiting out its timeout. After [`OPEN_AFTER`] failed tries in a row the
//! circuit opens: nothing is sent but one probe after each delay of the target's schedule
//! (the first after its first delay, then the next, staying at the last), and the first
//! probe delivered closes it. Time is passed in, so the breaker is a plain state machine.

use std::time::{Duration, Instant};

use baton_config::DEFAULT_RELAY_SCHEDULE;

/// Consecutive failed tries (no success between) that open a target's circuit.
pub(crate) const OPEN_AFTER: u32 = 5;

/// The farthest a probe is put off when a delay does not fit in an `Instant`.
const FARTHEST_PROBE: Duration = Duration::from_secs(365 * 86_400);

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

/// Where an open circuit's probing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probing {
    /// The next probe may go at this time.
    At(Instant),
    /// A probe was let through; its result is not known yet.
    InFlight,
}

/// One target's breaker: opens after [`OPEN_AFTER`] failed tries in a row, then lets one
/// probe through after each delay of the target's schedule; a delivered probe closes it.
#[derive(Debug)]
pub(crate) struct Circuit {
    /// The delays between probes (never empty).
    schedule: Vec<Duration>,
    /// Failed tries since the last success.
    failures: u32,
    /// `None` while closed.
    probing: Option<Probing>,
    /// Probes that failed since the circuit opened: which delay of the schedule is next.
    failed_probes: usize,
}

impl Circuit {
    /// A closed circuit whose probes follow `schedule` (the default schedule when it is
    /// empty: a target tried once per message still needs time between probes).
    pub(crate) fn new(schedule: Vec<Duration>) -> Self {
        let schedule = if schedule.is_empty() {
            DEFAULT_RELAY_SCHEDULE.to_vec()
        } else {
            schedule
        };
        Self {
            schedule,
            failures: 0,
            probing: None,
            failed_probes: 0,
        }
    }

    /// What may be sent at `now`; a [`Gate::Probe`] answer counts the probe as sent.
    pub(crate) fn gate(&mut self, now: Instant) -> Gate {
        match self.probing {
            None => Gate::Open,
            Some(Probing::InFlight) => Gate::Wait(None),
            Some(Probing::At(at)) if now < at => Gate::Wait(Some(at)),
            Some(Probing::At(_)) => {
                self.probing = Some(Probing::InFlight);
                Gate::Probe
            }
        }
    }

    /// The probe [`Circuit::gate`] let through told nothing (the receiver answered 429: it
    /// is up, but wants to wait): the next [`Circuit::gate`] lets one through again.
    pub(crate) fn probe_told_nothing(&mut self, now: Instant) {
        if self.probing == Some(Probing::InFlight) {
            self.probing = Some(Probing::At(now));
        }
    }

    /// A try was delivered (or the receiver answered in a way that says it is up).
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.probing = None;
        self.failed_probes = 0;
    }

    /// A try failed at `now`.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        match self.probing {
            None if self.failures >= OPEN_AFTER => {
                self.probing = Some(Probing::At(self.probe_after(now)));
            }
            Some(Probing::InFlight) => {
                self.failed_probes = self.failed_probes.saturating_add(1);
                self.probing = Some(Probing::At(self.probe_after(now)));
            }
            // Still closed, or a try sent before the circuit opened came back: the next
            // probe keeps its time.
            None | Some(Probing::At(_)) => {}
        }
    }

    /// The state, for people.
    pub(crate) fn state(&self) -> CircuitState {
        match self.probing {
            None => CircuitState::Closed,
            Some(probing) => CircuitState::Open {
                failures: self.failures,
                probe_at: match probing {
                    Probing::At(at) => Some(at),
                    Probing::InFlight => None,
                },
            },
        }
    }

    /// When the next probe may go, after a failure at `now`.
    fn probe_after(&self, now: Instant) -> Instant {
        let last = self.schedule.len() - 1;
        let delay = self.schedule[self.failed_probes.min(last)];
        now.checked_add(delay)
            .or_else(|| now.checked_add(FARTHEST_PROBE))
            .unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// What a step does to the circuit.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// A try failed at this second.
        Fail(u64),
        /// A try was delivered.
        Succeed,
        /// The dispatcher asks at this second; the answer must be this.
        Ask(u64, Expect),
        /// A probe let through told nothing (a 429), at this second.
        ToldNothing(u64),
    }

    /// A gate answer, with times in seconds from the start.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        Open,
        Probe,
        WaitUntil(u64),
        WaitForProbe,
    }

    /// Runs `steps` on a circuit with `schedule` (seconds) and checks every gate answer.
    fn run(schedule: &[u64], steps: &[Step]) -> (Circuit, Instant) {
        let start = Instant::now();
        let at = |s: u64| start + S(s);
        let mut circuit = Circuit::new(schedule.iter().copied().map(S).collect());
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Fail(t) => circuit.failed(at(t)),
                Succeed => circuit.succeeded(),
                ToldNothing(t) => circuit.probe_told_nothing(at(t)),
                Ask(t, expected) => {
                    let got = match circuit.gate(at(t)) {
                        Gate::Open => Open,
                        Gate::Probe => Probe,
                        Gate::Wait(None) => WaitForProbe,
                        Gate::Wait(Some(when)) => WaitUntil((when - start).as_secs()),
                    };
                    assert_eq!(got, expected, "step {i}: {step:?}");
                }
            }
        }
        (circuit, start)
    }

    use Expect::*;
    use Step::*;

    #[test]
    fn it_opens_after_five_failures_in_a_row_and_not_before() {
        run(
            &[10, 60],
            &[
                Fail(0),
                Fail(1),
                Fail(2),
                Fail(3),
                Ask(3, Open),
                Fail(4),
                Ask(4, WaitUntil(14)),
                Ask(13, WaitUntil(14)),
            ],
        );
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        run(
            &[10],
            &[
                Fail(0),
                Fail(1),
                Fail(2),
                Fail(3),
                Succeed,
                Fail(4),
                Fail(5),
                Fail(6),
                Fail(7),
                Ask(7, Open),
                Fail(8),
                Ask(8, WaitUntil(18)),
            ],
        );
    }

    #[test]
    fn one_probe_goes_at_its_time_and_nothing_else_until_it_is_answered() {
        run(
            &[10, 60],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Ask(9, WaitUntil(10)),
                Ask(10, Probe),
                Ask(10, WaitForProbe),
                Ask(500, WaitForProbe),
                Succeed,
                Ask(501, Open),
                Ask(501, Open),
            ],
        );
    }

    #[test]
    fn failed_probes_follow_the_schedule_and_stay_at_its_last_delay() {
        run(
            &[10, 60, 300],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Ask(10, Probe),
                Fail(12),
                Ask(12, WaitUntil(72)),
                Ask(72, Probe),
                Fail(73),
                Ask(73, WaitUntil(373)),
                Ask(373, Probe),
                Fail(380),
                Ask(380, WaitUntil(680)),
                Ask(680, Probe),
                Fail(681),
                Ask(681, WaitUntil(981)),
            ],
        );
    }

    #[test]
    fn a_delivered_probe_closes_it_and_the_next_opening_starts_the_schedule_over() {
        run(
            &[10, 60],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Ask(10, Probe),
                Fail(10),
                Ask(70, Probe),
                Succeed,
                Ask(70, Open),
                Fail(80),
                Fail(80),
                Fail(80),
                Fail(80),
                Ask(80, Open),
                Fail(80),
                Ask(80, WaitUntil(90)),
            ],
        );
    }

    #[test]
    fn late_failures_of_tries_sent_before_it_opened_keep_the_probe_time() {
        run(
            &[10, 60],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(3),
                Fail(4),
                Ask(5, WaitUntil(10)),
            ],
        );
    }

    #[test]
    fn a_probe_that_told_nothing_lets_another_go_at_the_next_gate() {
        run(
            &[10],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Ask(10, Probe),
                ToldNothing(11),
                Ask(11, Probe),
                Ask(11, WaitForProbe),
                // Told nothing, but no probe was out: nothing changes.
                Succeed,
                ToldNothing(12),
                Ask(12, Open),
            ],
        );
    }

    #[test]
    fn an_empty_schedule_probes_on_the_default_one() {
        run(
            &[],
            &[
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Fail(0),
                Ask(0, WaitUntil(5)),
                Ask(5, Probe),
                Fail(5),
                Ask(5, WaitUntil(305)),
            ],
        );
    }

    #[test]
    fn the_state_shows_the_failures_and_the_next_probe() {
        let (mut circuit, start) = run(&[10], &[Fail(0), Fail(0), Fail(0), Fail(0)]);
        assert_eq!(circuit.state(), CircuitState::Closed);
        circuit.failed(start);
        assert_eq!(
            circuit.state(),
            CircuitState::Open {
                failures: 5,
                probe_at: Some(start + S(10)),
            }
        );
        assert_eq!(circuit.gate(start + S(10)), Gate::Probe);
        assert_eq!(
            circuit.state(),
            CircuitState::Open {
                failures: 5,
                probe_at: None,
            }
        );
        circuit.failed(start + S(11));
        assert_eq!(
            circuit.state(),
            CircuitState::Open {
                failures: 6,
                probe_at: Some(start + S(21)),
            }
        );
        circuit.succeeded();
        assert_eq!(circuit.state(), CircuitState::Closed);
    }
}
