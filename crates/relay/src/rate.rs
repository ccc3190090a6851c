//! A target's rate limit.
//!
//! SKELETON (issue 24): the sender work fills it in.

use std::time::Instant;

use baton_config::RelayRate;

/// A token bucket: never more than the rate's count in any window of its period.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: RelayRate,
}

impl RateLimiter {
    /// A full bucket for `rate`.
    pub(crate) fn new(rate: RelayRate) -> Self {
        Self { rate }
    }

    /// Takes a token at `now`, or says when the next one will be there.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let _ = (now, self.rate);
        Ok(())
    }
}
