//! Travis's limit on API requests per repository (10 in any hour unless an admin set the
//! repository's `api_builds_rate_limit`): what baton knows of it, shared by every instance
//! of this process that creates requests for the same repository of the same API, so that
//! none sends a request it knows will be refused.
//!
//! Travis reports `remaining_requests` with every create, counted *before* the new request
//! (`services/requests/create.rb`), so one fewer is left after it. When none are left, or a
//! create met `429 request_limit_reached`, the window is spent until its oldest request is
//! an hour (`per_seconds`) old; baton works that out from the repository's recent requests
//! and sends nothing before.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

/// What is known of one repository's window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// Requests left, when a create said so.
    pub(crate) left: Option<u32>,
    /// The most requests in a window, when Travis said so (a 429 names it).
    pub(crate) max: Option<u32>,
    /// The window's length, when Travis said so.
    pub(crate) per: Option<Duration>,
    /// When a spent window frees (ms since the epoch, baton's clock), once worked out.
    pub(crate) frees_ms: Option<u64>,
    /// Why it is spent and until when, in words, once worked out.
    pub(crate) said: Option<String>,
}

impl Window {
    /// Spent: nothing may be sent until it frees.
    pub(crate) fn spent(&self) -> bool {
        self.left == Some(0)
    }
}

static WINDOWS: LazyLock<Mutex<HashMap<String, Window>>> = LazyLock::new(Mutex::default);

/// One repository's window, by API root and repository.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    key: String,
}

impl Limit {
    /// The window of repository `slug` at the API `api`.
    pub(crate) fn of(api: &str, slug: &str) -> Self {
        Self {
            key: format!(
                "{} {}",
                api.trim_end_matches('/'),
                slug.to_ascii_lowercase()
            ),
        }
    }

    fn edit<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
        f(windows.entry(self.key.clone()).or_default())
    }

    /// The window as known at `now_ms`: a spent window whose time to free has come is
    /// open again (unknown), since its oldest request has left it.
    pub(crate) fn at(&self, now_ms: u64) -> Window {
        self.edit(|w| {
            if w.frees_ms.is_some_and(|t| t <= now_ms) {
                *w = Window {
                    max: w.max,
                    per: w.per,
                    ..Window::default()
                };
            }
            w.clone()
        })
    }

    /// A create was answered with `remaining` (counted before it).
    pub(crate) fn created(&self, remaining: Option<u32>) {
        self.edit(|w| {
            w.left = remaining.map(|r| r.saturating_sub(1));
            w.frees_ms = None;
            w.said = None;
        });
    }

    /// A create may or may not have been carried out (no answer): count it as spent.
    pub(crate) fn maybe_created(&self) {
        self.edit(|w| w.left = w.left.map(|l| l.saturating_sub(1)));
    }

    /// Travis refused a create with `429 request_limit_reached`, naming the limit.
    pub(crate) fn refused(&self, max: Option<u32>, per: Option<Duration>) {
        self.edit(|w| {
            w.left = Some(0);
            w.max = max.or(w.max);
            w.per = per.or(w.per);
        });
    }

    /// The spent window frees at `frees_ms` (baton's clock), as `said` explains.
    pub(crate) fn frees_at(&self, frees_ms: u64, said: &str) {
        self.edit(|w| {
            if w.spent() {
                w.frees_ms = Some(frees_ms);
                w.said = Some(said.to_owned());
            }
        });
    }
}

/// The creation times (ms) among `created` that are inside a window of `per` ending at
/// `now_ms`: Travis counts the requests created less than `per` ago.
pub(crate) fn inside(
    created: impl IntoIterator<Item = u64>,
    per: Duration,
    now_ms: u64,
) -> Vec<u64> {
    let per_ms = per.as_millis() as u64;
    created
        .into_iter()
        .filter(|c| c.saturating_add(per_ms) > now_ms)
        .collect()
}

/// When a window of `per` frees, from the creation times (ms, Travis's clock) of the
/// requests [`inside`] it and Travis's clock now: its oldest request leaves it `per` after
/// its creation. `None` when none is inside (Travis counts some that it does not list, or
/// the clocks disagree).
pub(crate) fn frees_in(inside: &[u64], per: Duration, server_now_ms: u64) -> Option<Duration> {
    let oldest = inside.iter().min()?;
    // Travis writes times to the second: a second more makes sure the oldest is out.
    let frees = oldest + per.as_millis() as u64 + 1_000;
    Some(Duration::from_millis(frees.saturating_sub(server_now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_spent_by_the_last_request_and_frees_in_time() {
        let limit = Limit::of("http://travis.test/", "Octo/App-limit-test");
        assert_eq!(limit.at(0), Window::default());
        // Travis counts before the new request: 2 remaining means 1 left after it.
        limit.created(Some(2));
        assert_eq!(limit.at(0).left, Some(1));
        assert!(!limit.at(0).spent());
        limit.created(Some(1));
        assert!(limit.at(0).spent());
        // The same repository spelled otherwise is the same window.
        let same = Limit::of("http://travis.test", "octo/app-limit-test");
        assert!(same.at(0).spent());
        same.frees_at(5_000, "spent");
        assert_eq!(limit.at(0).said.as_deref(), Some("spent"));
        assert!(limit.at(4_999).spent());
        let open = limit.at(5_000);
        assert!(!open.spent() && open.left.is_none() && open.frees_ms.is_none());
        assert_eq!(open.said, None);
        // A refusal names the limit, which is kept when the window opens again.
        limit.refused(Some(3), Some(Duration::from_secs(60)));
        limit.frees_at(9_000, "spent again");
        assert_eq!(limit.at(9_000).max, Some(3));
        assert_eq!(limit.at(9_000).per, Some(Duration::from_secs(60)));
        // An answer that never came may have spent one.
        limit.created(Some(3));
        limit.maybe_created();
        assert_eq!(limit.at(9_000).left, Some(1));
        // Another repository has a window of its own.
        assert_eq!(
            Limit::of("http://travis.test", "octo/other").at(0),
            Window::default()
        );
    }

    #[test]
    fn the_window_frees_when_its_oldest_request_leaves_it() {
        let hour = Duration::from_secs(3600);
        let now = 10_000_000;
        // Requests 50 min, 20 min and 2 h ago: the 50-minute one leaves in 10 min (+1 s).
        let created = [now - 3_000_000, now - 1_200_000, now - 7_200_000];
        let counted = inside(created, hour, now);
        assert_eq!(counted, [now - 3_000_000, now - 1_200_000]);
        assert_eq!(
            frees_in(&counted, hour, now),
            Some(Duration::from_secs(601))
        );
        assert_eq!(frees_in(&[], hour, now), None);
        // Travis counts requests created less than an hour ago: one an hour old is out.
        assert!(inside([now - 3_600_000], hour, now).is_empty());
        let newest = inside([now - 3_599_999], hour, now);
        assert_eq!(
            frees_in(&newest, hour, now),
            Some(Duration::from_millis(1_001))
        );
    }
}
