//! The approval adapter through the shared conformance kit.

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_approval::{ApprovalAdapter, ApprovalKind, Decision};
use baton_adapter_kit::{Scenario, run_conformance};
use serde_json::json;

#[tokio::test]
async fn approval_conforms() {
    run_conformance(Scenario {
        kind: Arc::new(ApprovalKind),
        adapter: Arc::new(ApprovalAdapter::new()),
        valid_with: json!({"message": "Release ${{ .event.sha }}?", "role": "approver"}),
        invalid_with: json!({"message": "Release?", "role": 5}),
        succeed: json!({"message": "Ship it?"}),
        fail: json!({"message": "Ship it?", "role": "ops"}),
        long: json!({"message": "Nobody answers this one"}),
        success_signal: Some(Decision::approved("alice").to_signal()),
        failure_signal: Some(
            Decision::rejected("bob")
                .with_comment("not today")
                .to_signal(),
        ),
        side_effect_free: true,
        // Everything an approval knows is in its reference and the signal.
        replica: Some(Arc::new(ApprovalAdapter::new())),
        deadline: Duration::from_secs(10),
    })
    .await;
}
