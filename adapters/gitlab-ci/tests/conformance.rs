//! The GitLab adapter passes the adapter conformance kit against the fake GitLab.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_gitlab_ci::GitLabKind;
use baton_adapter_kit::{Scenario, run_conformance};
use baton_forge_fakes::gitlab::{JobPlan, PipelinePlan};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_gitlab_adapter_passes_the_conformance_kit() {
    let lab = Lab::start().await;
    let quick = |jobs| {
        PipelinePlan::new(jobs).queued_for(Duration::from_millis(100), Duration::from_millis(100))
    };
    // One project; what a pipeline does depends on its ref.
    lab.gitlab
        .project(PROJECT)
        .plan(quick(vec![JobPlan::new("build", "build")]))
        .plan_for_ref(
            "broken",
            quick(vec![JobPlan::new("test", "test").fails("ERROR\n")]),
        )
        .plan_for_ref(
            "long",
            quick(vec![
                JobPlan::new("soak", "test").runs_for(Duration::from_secs(3600)),
            ]),
        );
    run_conformance(Scenario {
        kind: Arc::new(GitLabKind::with_retry(fast_retry())),
        adapter: lab.adapter(json!({})),
        valid_with: json!({"ref": "${{ .event.ref }}", "variables": {"WHAT": "${{ .event.what }}"}}),
        invalid_with: json!({"ref": "", "variables": {"WHAT": [1]}}),
        succeed: json!({"ref": "main", "variables": {"WHAT": "it"}}),
        fail: json!({"ref": "broken"}),
        long: json!({"ref": "long"}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(lab.adapter(json!({}))),
        deadline: Duration::from_secs(20),
    })
    .await;
    // The long pipeline was cancelled, not left running.
    let long: Vec<_> = lab
        .gitlab
        .pipelines()
        .into_iter()
        .filter(|p| p.git_ref == "long")
        .collect();
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].status, "canceled");
}
