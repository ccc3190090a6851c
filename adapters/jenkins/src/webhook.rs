//! Completion webhooks from the Jenkins Notification plugin (JSON format).
//!
//! The plugin POSTs, for each phase of a build (`QUEUED`, `STARTED`, `COMPLETED`,
//! `FINALIZED`), an object such as:
//!
//! ```json
//! {"name": "deploy", "url": "job/team/job/deploy/",
//!  "build": {"full_url": "https://ci.example/job/team/job/deploy/14/", "number": 14,
//!            "queue_id": 812, "phase": "COMPLETED", "status": "SUCCESS",
//!            "url": "job/team/job/deploy/14/", "parameters": {"BATON_ATTEMPT": "r/s/1"}}}
//! ```
//!
//! A notification is only a hint: the engine polls the attempts it names, and the poll reads
//! the state back through the API. So nothing here is trusted beyond choosing what to poll.

use baton_core::{AdapterError, AttemptKey, WebhookRequest};
use serde_json::Value;

use crate::tracked::watch_path;
use crate::{JenkinsAdapter, lock};

/// What a notification says about one build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Notice {
    /// `QUEUED`, `STARTED`, `COMPLETED`, `FINALIZED` (or a newer word).
    pub phase: Option<String>,
    /// The build's result so far.
    pub status: Option<String>,
    /// The queue item the build came from.
    pub queue_id: Option<u64>,
    /// The build's path below the root (`job/a/job/b/14/`).
    pub build_path: Option<String>,
    /// The `BATON_ATTEMPT` parameter, when the job has it.
    pub attempt: Option<String>,
}

/// The largest body read (a notification with its log lines can be long; ours need none).
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

/// Reads a Notification plugin body; an error says what was wrong with it.
pub(crate) fn parse(body: &[u8]) -> Result<Notice, String> {
    if body.len() > MAX_BODY {
        return Err(format!(
            "the notification is larger than {MAX_BODY} bytes: set the plugin's `Log` lines to 0"
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let xml = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');
        if xml {
            "the notification is XML: set the Notification plugin's format to JSON".to_owned()
        } else {
            format!("the notification is not JSON ({e})")
        }
    })?;
    let build = value
        .get("build")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            "the notification has no `build` object: is this the Jenkins Notification plugin's JSON format?"
                .to_owned()
        })?;
    let text = |key: &str| build.get(key).and_then(Value::as_str).map(str::to_owned);
    let queue_id = match build.get("queue_id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let build_path = text("url")
        .filter(|u| u.starts_with("job/"))
        .or_else(|| text("full_url").and_then(|u| crate::model::below_root(&u)));
    let attempt = build
        .get("parameters")
        .and_then(|p| p.get(crate::config::ATTEMPT_PARAMETER))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Notice {
        phase: text("phase"),
        status: text("status"),
        queue_id,
        build_path,
        attempt,
    })
}

impl JenkinsAdapter {
    /// The attempts a Notification plugin webhook concerns: the one its `BATON_ATTEMPT` names and those watching its queue item or build.
    pub(crate) fn webhook_attempts(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        let notice = parse(request.body).map_err(|e| {
            AdapterError::Invalid(format!("adapter `{}`: {e}", self.inner.client.instance()))
        })?;
        let mut keys = Vec::new();
        if let Some(key) = notice.attempt.as_deref().and_then(AttemptKey::parse) {
            keys.push(key);
        }
        let watched = lock(&self.inner.watched);
        let mut extra = Vec::new();
        if let Some(q) = notice.queue_id {
            extra.extend(watched.get(&format!("queue:{q}")).cloned());
        }
        if let Some(path) = &notice.build_path {
            extra.extend(watched.get(&watch_path(path)).cloned());
        }
        drop(watched);
        for key in extra {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plugin_format() {
        let body = br#"{"name":"deploy","url":"job/team/job/deploy/","build":{"full_url":"https://ci.example/job/team/job/deploy/14/","number":14,"queue_id":812,"phase":"COMPLETED","status":"UNSTABLE","url":"job/team/job/deploy/14/","scm":{},"parameters":{"BATON_ATTEMPT":"r1/deploy/2","IMAGE":"x"},"log":"","artifacts":{}}}"#;
        let n = parse(body).unwrap();
        assert_eq!(
            n,
            Notice {
                phase: Some("COMPLETED".into()),
                status: Some("UNSTABLE".into()),
                queue_id: Some(812),
                build_path: Some("job/team/job/deploy/14/".into()),
                attempt: Some("r1/deploy/2".into()),
            }
        );
        // No relative url: the full one gives the path.
        let n =
            parse(br#"{"build":{"full_url":"http://x/jenkins/job/a/3/","queue_id":"9"}}"#).unwrap();
        assert_eq!(n.build_path.as_deref(), Some("job/a/3/"));
        assert_eq!(n.queue_id, Some(9));
    }

    #[test]
    fn refuses_other_bodies_with_reasons() {
        assert!(parse(b"<build/>").unwrap_err().contains("XML"));
        assert!(parse(b"{").unwrap_err().contains("not JSON"));
        assert!(parse(b"[1,2]").unwrap_err().contains("no `build`"));
        assert!(
            parse(br#"{"build":"x"}"#)
                .unwrap_err()
                .contains("no `build`")
        );
        let odd = parse(br#"{"build":{"parameters":{"BATON_ATTEMPT":7},"queue_id":-1,"url":5}}"#)
            .unwrap();
        assert_eq!(odd, Notice::default());
    }
}
