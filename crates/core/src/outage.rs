//! A failure that recurs, logged when it starts and when it ends rather than at every try:
//! a full disk fails every commit and every checkpoint, a store that is down fails every
//! poll, and a log line per try would bury the one that says what happened.

use std::time::{Duration, Instant};

/// A failure that recurs: when it started and how often it happened since.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<(Instant, u64)>,
}

impl Outage {
    /// Counts a failure; true when it is the first of an outage, the one to log.
    pub fn failed(&mut self) -> bool {
        match &mut self.since {
            Some((_, failures)) => {
                *failures += 1;
                false
            }
            None => {
                self.since = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// Counts a success; when it ends an outage, how long that lasted and how many failures
    /// it had, to log.
    pub fn recovered(&mut self) -> Option<(Duration, u64)> {
        self.since
            .take()
            .map(|(began, failures)| (began.elapsed(), failures))
    }
}
