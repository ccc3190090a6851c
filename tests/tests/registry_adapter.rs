//! The real `baton run` driving the `registry` adapter against the real registry
//! (`BATON_REGISTRY_URL`, started by `scripts/containers.sh`): a `wait` for a tag nobody
//! pushes keeps waiting until the engine's stage timeout ends it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_tests::{Sandbox, container_service};

#[test]
fn a_wait_for_a_missing_tag_ends_at_the_stage_timeout_naming_the_image() {
    let url = container_service("BATON_REGISTRY_URL");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let image = format!("baton-test/never-{}-{nanos}:v1", std::process::id());
    let sb = Sandbox::new();
    sb.write(
        "baton.toml",
        &format!(
            "workflows = [\"wf.yaml\"]\n\n[store]\nurl = \"sqlite://baton.db\"\n\n[adapters.reg]\nkind = \"registry\"\nurl = \"{url}\"\npoll_initial = \"200ms\"\npoll_max = \"1s\"\n"
        ),
    );
    sb.write(
        "wf.yaml",
        &format!(
            "name: wait\nstages:\n  image:\n    uses: reg\n    timeout: 3s\n    with: {{ action: wait, image: '{image}' }}\n"
        ),
    );
    let begun = Instant::now();
    let run = sb.run(&["run", "-c", "baton.toml", "wait", "--json"]);
    let took = begun.elapsed();
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let stage = run.stage("image");
    assert_eq!(stage["status"], "failed", "{stage:#}");
    assert!(
        stage["message"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 3s"),
        "{stage:#}"
    );
    // While it waited, the progress said what it waited for.
    assert!(run.stderr.contains(&image), "{}", run.stderr);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "{took:?}"
    );
}
