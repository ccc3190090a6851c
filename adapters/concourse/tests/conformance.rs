//! The Concourse adapter passes the adapter conformance kit against the fake Concourse,
//! with its event stream on and off.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_concourse::ConcourseKind;
use baton_adapter_kit::{Scenario, run_conformance};
use serde_json::json;
use support::*;

async fn conformance(events: bool) {
    let lab = Lab::start().await;
    lab.app()
        .job(
            "broken",
            quick()
                .fails(2)
                .logs(&["compiling\n", "error: 3 tests failed\n"]),
        )
        .job("soak", quick().runs_for(Duration::from_secs(3600)));
    run_conformance(Scenario {
        kind: Arc::new(ConcourseKind::with_retry(fast_retry())),
        adapter: lab.adapter(json!({"events": events})),
        valid_with: json!({"pipeline": "app", "job": "${{ .event.job }}", "instance_vars": {"branch": "${{ .event.ref }}"}}),
        invalid_with: json!({"pipeline": "", "job": ["deploy"]}),
        succeed: deploy(),
        fail: json!({"pipeline": "app", "job": "broken"}),
        long: json!({"pipeline": "app", "job": "soak"}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(lab.adapter(json!({"events": events}))),
        deadline: Duration::from_secs(20),
    })
    .await;
    // The long build was aborted, not left running.
    let soak: Vec<_> = lab
        .ci
        .job_builds()
        .into_iter()
        .filter(|b| b.job == "soak")
        .collect();
    assert_eq!(soak.len(), 1);
    assert_eq!(soak[0].status, "aborted");
}

#[tokio::test]
async fn the_concourse_adapter_passes_the_conformance_kit_following_events() {
    conformance(true).await;
}

#[tokio::test]
async fn the_concourse_adapter_passes_the_conformance_kit_polling_only() {
    conformance(false).await;
}
