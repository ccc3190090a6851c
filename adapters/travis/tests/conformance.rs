//! The Travis adapter passes the adapter conformance kit against the fake Travis.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_kit::{Scenario, run_conformance};
use baton_forge_fakes::travis::{BuildPlan, JobPlan};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_travis_adapter_passes_the_conformance_kit() {
    let lab = Lab::start().await;
    let ms = Duration::from_millis;
    // Builds appear at once, so that the long one is a build by the kit's first poll.
    let quick = |jobs| {
        BuildPlan::new(jobs)
            .build_after(ms(0), ms(0))
            .queued_for(ms(50), ms(50))
    };
    lab.travis
        .repo(REPO)
        .plan(quick(vec![JobPlan::passes()]))
        .plan_for_branch("broken", quick(vec![JobPlan::fails("3 tests failed\n")]))
        .plan_for_branch(
            "long",
            quick(vec![JobPlan::passes().runs_for(Duration::from_secs(3600))]),
        );
    run_conformance(Scenario {
        kind: Arc::new(kind()),
        adapter: lab.adapter(json!({})),
        valid_with: json!({"branch": "${{ .event.branch }}", "config": {"env": {"global": ["A=${{ .event.a }}"]}}}),
        invalid_with: json!({"branch": "", "merge_mode": "squash"}),
        succeed: json!({"branch": "main", "message": "conformance"}),
        fail: json!({"branch": "broken"}),
        long: json!({"branch": "long"}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(lab.adapter(json!({}))),
        deadline: Duration::from_secs(20),
    })
    .await;
    // The long build was cancelled, not left running.
    let long: Vec<_> = lab
        .travis
        .requests()
        .into_iter()
        .filter(|r| r.branch == "long")
        .collect();
    assert_eq!(long.len(), 1);
    let build = long[0]
        .build
        .expect("the long request has its build")
        .to_string();
    assert_eq!(lab.build(&build).state, "canceled");
}
