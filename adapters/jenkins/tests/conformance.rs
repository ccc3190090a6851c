//! The Jenkins adapter passes the adapter conformance kit against the fake controller.

mod support;

use std::time::Duration;

use baton_adapter_jenkins::JenkinsKind;
use baton_adapter_kit::{Scenario, run_conformance};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_jenkins_adapter_passes_the_conformance_kit() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("conformance/ok")
        .params(&["WHAT", "BATON_ATTEMPT"])
        .queued_for(2)
        .runs_for(2)
        .create();
    jenkins
        .job("conformance/broken")
        .params(&["BATON_ATTEMPT"])
        .result("FAILURE")
        .create();
    jenkins
        .job("conformance/long")
        .pipeline()
        .params(&["BATON_ATTEMPT"])
        .queued_for(0)
        .forever()
        .create();
    let config = json!({"poll_initial": "100ms", "poll_max": "1s"});
    run_conformance(Scenario {
        kind: std::sync::Arc::new(JenkinsKind::with_retry(fast_retry())),
        adapter: adapter(&jenkins, config.clone()),
        valid_with: json!({"job": "conformance/ok", "parameters": {"WHAT": "${{ .event.what }}"}}),
        invalid_with: json!({"job": "", "parameters": {"WHAT": [1]}}),
        succeed: json!({"job": "conformance/ok", "parameters": {"WHAT": "it"}}),
        fail: json!({"job": "conformance/broken"}),
        long: json!({"job": "conformance/long"}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(adapter(&jenkins, config)),
        deadline: Duration::from_secs(20),
    })
    .await;
    // The long build was stopped, not left running.
    assert!(
        jenkins
            .builds("conformance/long")
            .iter()
            .all(|b| !b.building)
    );
}
