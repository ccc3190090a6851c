//! The github-actions adapter passes the adapter conformance kit against the fake GitHub.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_github_actions::GithubActionsKind;
use baton_adapter_kit::{Scenario, run_conformance};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_actions_adapter_passes_the_conformance_kit() {
    let gh = Gh::start().await;
    let declared = ["what", "baton_attempt"];
    let title = "${{ github.workflow }} ${{ inputs.baton_attempt }}";
    gh.add(Workflow::new("ok.yml").inputs(&declared).run_name(title))
        .add(
            Workflow::new("broken.yml")
                .inputs(&declared)
                .run_name(title)
                .conclusion(Some("failure")),
        )
        .add(
            Workflow::new("long.yml")
                .inputs(&declared)
                .run_name(title)
                .runs_for(Duration::from_secs(300)),
        );
    let config = json!({"correlation_input": "baton_attempt", "stop_grace": "1s"});
    let adapter = gh.adapter(config.clone());
    run_conformance(Scenario {
        kind: Arc::new(GithubActionsKind::with_retry(fast_retry())),
        adapter,
        valid_with: json!({"workflow": "ok.yml", "ref": "main", "inputs": {"what": "${{ .event.what }}"}}),
        invalid_with: json!({"workflow": "", "inputs": {"what": [1]}}),
        succeed: json!({"workflow": "ok.yml", "ref": "main", "inputs": {"what": "it"}}),
        fail: json!({"workflow": "broken.yml", "ref": "main"}),
        long: json!({"workflow": "long.yml", "ref": "main"}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(gh.adapter(config)),
        deadline: Duration::from_secs(20),
    })
    .await;
    // The long run was cancelled at GitHub, not left running.
    let long: Vec<_> = gh
        .github
        .runs()
        .into_iter()
        .filter(|r| r.workflow == "long.yml")
        .collect();
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].conclusion.as_deref(), Some("cancelled"));
}
