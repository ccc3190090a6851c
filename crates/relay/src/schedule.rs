//! When a failed message is tried next.
//!
//! SKELETON (issue 24): the sender work fills it in.

use std::time::Duration;

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
    let _ = (jitter, retry_after);
    schedule
        .get(usize::try_from(failed).ok()?.checked_sub(1)?)
        .copied()
}
