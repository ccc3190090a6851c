//! Travis's answers as baton reads them, and its build and job states mapped to baton's.
//!
//! Only the fields baton uses are read; any other is ignored, and a state is kept as text
//! so that one Travis adds later is [`ExternalState::Unknown`] rather than a parse error.

use baton_core::ExternalState;
use serde::Deserialize;

/// The `202` answer to a create (`{"@type": "pending", …}`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Pending {
    /// The requests the repository had left in the window before this one (Travis counts
    /// before it creates the request: `services/requests/create.rb`).
    #[serde(default)]
    pub(crate) remaining_requests: Option<u32>,
    pub(crate) request: PendingRequest,
}

/// The request in a create's answer; current Travis names its `id`, older versions do not.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PendingRequest {
    #[serde(default)]
    pub(crate) id: Option<u64>,
}

/// A request (`GET /repo/{slug}/request/{id}`, and each of `GET /repo/{slug}/requests`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// `accepted` or `rejected` once processed.
    #[serde(default)]
    pub(crate) result: Option<String>,
    /// Why it was rejected, when it was.
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// The commit it builds, once processed; its `message` is the request's message.
    #[serde(default)]
    pub(crate) commit: Option<Commit>,
    #[serde(default)]
    pub(crate) builds: Vec<BuildState>,
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    #[serde(default)]
    pub(crate) event_type: Option<String>,
}

impl Request {
    /// The texts that may hold baton's marker: the commit's message (where Travis puts a
    /// request's `message`) and the request's own.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.commit
            .as_ref()
            .and_then(|c| c.message.as_deref())
            .into_iter()
            .chain(self.message.as_deref())
    }

    /// Not yet processed: no result and no commit, so its message cannot be read yet.
    pub(crate) fn unprocessed(&self) -> bool {
        self.result.is_none() && self.commit.is_none() && self.builds.is_empty()
    }

    pub(crate) fn rejected(&self) -> bool {
        self.result.as_deref() == Some("rejected")
    }

    /// When it was created, in ms since the epoch.
    pub(crate) fn created_ms(&self) -> Option<u64> {
        self.created_at.as_deref().and_then(epoch_ms)
    }
}

/// `GET /repo/{slug}/requests`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Requests {
    #[serde(default)]
    pub(crate) requests: Vec<Request>,
}

/// A commit, as far as baton reads it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Commit {
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// A build in its minimal form (in a request's `builds`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BuildState {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) number: Option<String>,
    pub(crate) state: String,
}

/// `GET /build/{id}?include=build.jobs`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Build {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) number: Option<String>,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) jobs: Vec<Job>,
}

/// A job of a build (standard form, with `include=build.jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub(crate) struct Job {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) number: Option<String>,
    #[serde(default)]
    pub(crate) state: Option<String>,
}

impl Job {
    /// Its number (`12.1`), or its id when Travis gave none.
    pub(crate) fn label(&self) -> String {
        self.number.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// It failed or errored.
    pub(crate) fn broken(&self) -> bool {
        matches!(self.state.as_deref(), Some("failed" | "errored"))
    }
}

/// Maps a build or job state (`model/build/states.rb`: `created`, `received`, `started`,
/// `passed`, `failed`, `errored`, `canceled`; jobs also `queued`).
pub(crate) fn state(raw: &str) -> ExternalState {
    match raw {
        "created" | "received" | "queued" => ExternalState::Queued,
        "started" => ExternalState::Running,
        "passed" => ExternalState::Succeeded { warnings: false },
        "failed" => ExternalState::Failed,
        // An install or setup step failed, or the config is broken: not the tests.
        "errored" => ExternalState::Errored,
        "canceled" => ExternalState::Cancelled,
        other => ExternalState::Unknown(other.to_owned()),
    }
}

/// An RFC 3339 time (`2018-06-25T12:58:48Z`) in ms since the epoch.
pub(crate) fn epoch_ms(text: &str) -> Option<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    u64::try_from(time.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_documented_state_maps_and_unknown_ones_never_end() {
        for queued in ["created", "received", "queued"] {
            assert_eq!(state(queued), ExternalState::Queued, "{queued}");
        }
        assert_eq!(state("started"), ExternalState::Running);
        assert_eq!(
            state("passed"),
            ExternalState::Succeeded { warnings: false }
        );
        assert_eq!(state("failed"), ExternalState::Failed);
        assert_eq!(state("errored"), ExternalState::Errored);
        assert_eq!(state("canceled"), ExternalState::Cancelled);
        for odd in ["Passed", "", "cancelled", "booting"] {
            let s = state(odd);
            assert_eq!(s, ExternalState::Unknown(odd.to_owned()));
            assert!(!s.is_terminal());
        }
    }

    /// A rejected request as Travis answered it (cljs-oss/canary's report of job 446).
    #[test]
    fn a_rejected_request_reads_with_its_reason_and_its_commit_message() {
        let r: Request = serde_json::from_value(json!({
            "message": "Build config file is required via repository settings, but config is empty.",
            "@href": "/repo/19845084/request/121503512", "branch_name": "master", "builds": [],
            "id": 121503512, "event_type": "api",
            "commit": {"@type": "commit", "id": 118882601, "sha": "14a76c00", "ref": null,
                       "message": "Canary test with ClojureScript 1.10.335-ef3a22d"},
            "state": "configured", "created_at": "2018-06-25T12:58:48Z", "@type": "request",
            "result": "rejected"
        }))
        .unwrap();
        assert!(r.rejected() && !r.unprocessed());
        assert_eq!(
            r.texts().collect::<Vec<_>>(),
            [
                "Canary test with ClojureScript 1.10.335-ef3a22d",
                "Build config file is required via repository settings, but config is empty."
            ]
        );
        assert_eq!(r.created_ms(), Some(1_529_931_528_000));
        let pending: Request = serde_json::from_value(
            json!({"id": 2, "state": "pending", "result": null, "commit": null}),
        )
        .unwrap();
        assert!(pending.unprocessed() && !pending.rejected());
        assert_eq!(
            epoch_ms("2018-06-25T12:58:48.250+00:00"),
            Some(1_529_931_528_250)
        );
        assert_eq!(epoch_ms("yesterday"), None);
    }
}
