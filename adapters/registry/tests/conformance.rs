//! The registry adapter passes the adapter conformance kit against the real registry.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_kit::{Scenario, run_conformance};
use baton_adapter_registry::RegistryKind;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_registry_adapter_passes_the_conformance_kit() {
    let url = open_url();
    let host = authority(&url);
    let repo = pushed_image(&host, "conformance", "amd64", 1024);
    let promoted = unique("conformance-prod");
    run_conformance(Scenario {
        kind: Arc::new(RegistryKind),
        adapter: adapter(json!({ "url": url, "poll_initial": "100ms", "poll_max": "1s" }), &[]),
        valid_with: json!({"action": "promote", "from": "app:${{ .stages.build.outputs.tag }}", "to": "app-prod:stable"}),
        invalid_with: json!({"action": "promote", "from": "app", "image": "app:1"}),
        succeed: json!({"action": "promote", "from": format!("{repo}:v1"), "to": format!("{promoted}:stable")}),
        fail: json!({"action": "inspect", "image": format!("{repo}:missing")}),
        // A tag nobody pushes: the wait runs until it is cancelled.
        long: json!({"action": "wait", "image": format!("{repo}:never")}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        // `find` knows only this process's attempts, by design: another instance starts the
        // (repeatable) action again, or takes it up from a stored reference
        // (docs/adapters/registry.md, "Correlation and restarts"; registry.rs checks the
        // latter with a second adapter).
        replica: None,
        deadline: Duration::from_secs(30),
    })
    .await;
    // The promote the kit ran left the same bytes at the destination.
    assert_eq!(
        raw(&format!("{host}/{promoted}:stable"), None),
        raw(&format!("{host}/{repo}:v1"), None)
    );
}
