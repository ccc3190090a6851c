//! Kill a real `baton run` with SIGKILL while a `kubernetes` stage waits, then `baton
//! resume`: the stage ends as it would have without the kill, and the cluster (the
//! in-process API server of `baton_forge_fakes::kubernetes`, served by this test) saw each
//! write once. Mid-rollout: one image patch, the rollout followed to its end. Mid-Job: one
//! Job created, its outputs read. After a stall's deadline: one undo, the stage failed with
//! the undo's note.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use baton_tests::forge::Served;
use baton_tests::forge::kubernetes::{Cluster, PodInput, PodOutcome, RolloutPlan, Rules};
use baton_tests::kubernetes::{set_progress_deadline, template_image};
use baton_tests::{Finished, Sandbox};
use serde_json::Value;

const OLD: &str = "registry.example.com/shop/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NEW: &str = "registry.example.com/shop/web@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const COMPONENT: &str = "registry.example.com/components/check:1";
const TOKEN: &str = "baton-token";
/// Long enough for the kill to land between the stage's first write and its end.
const SLOW_STEP: Duration = Duration::from_millis(800);

/// A cluster with namespace `shop` and Deployment `shop/web` (3 replicas of `OLD`), served
/// in this process, and a sandbox whose `baton.toml` reaches it as instance `k8s`.
struct Setup {
    sb: Sandbox,
    cluster: Cluster,
    served: Served,
}

impl Setup {
    fn new(workflow: &str) -> Self {
        let cluster = Cluster::new();
        cluster.add_namespace("shop");
        cluster.add_deployment("shop", "web", "web", OLD, 3);
        cluster.add_token(TOKEN, "system:serviceaccount:ci:baton", Rules::all());
        let served = cluster
            .serve_in_background()
            .expect("serve the fake cluster");
        let sb = Sandbox::new();
        let kubeconfig = sb.path().join("kubeconfig.yaml");
        cluster
            .write_kubeconfig(&served, &kubeconfig, "fake", TOKEN)
            .unwrap();
        sb.write(
            "baton.toml",
            &format!(
                r#"
workflows = ["wf.yaml"]

[store]
url = "sqlite://state/baton.db"

[adapters.k8s]
kind = "kubernetes"
kubeconfig = "{}"
context = "fake"
"#,
                kubeconfig.display()
            ),
        );
        sb.write("wf.yaml", workflow);
        Self {
            sb,
            cluster,
            served,
        }
    }

    /// `baton run` of the workflow, in the background.
    fn start(&self) -> Child {
        self.sb
            .baton(&["run", "-c", "baton.toml", "release"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("baton starts")
    }

    /// SIGKILLs `child` once `happened` holds (within 30 s). It looks again without pausing,
    /// so the kill lands within a moment of the event, before baton can act on it.
    fn kill_when(child: &mut Child, what: &str, mut happened: impl FnMut() -> bool) {
        let begun = Instant::now();
        while !happened() {
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "timed out waiting for: {what}"
            );
            std::thread::yield_now();
        }
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    /// `baton resume` to its end; the one run it finished.
    fn resume(&self) -> Value {
        let resumed: Finished = self.sb.run(&["resume", "-c", "baton.toml", "--json"]);
        let runs = resumed.json();
        assert_eq!(
            runs.as_array().map(Vec::len),
            Some(1),
            "{}{}",
            resumed.stdout,
            resumed.stderr
        );
        runs[0].clone()
    }

    fn deployment(&self) -> Value {
        self.cluster.get("deployments", "shop", "web").unwrap()
    }

    /// True once the Deployment's status says the latest rollout is complete, in kubectl's
    /// terms (observed, every replica updated and available, no old ones).
    fn rolled_out(&self) -> bool {
        let d = self.deployment();
        let status = &d["status"];
        let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
        d["metadata"]["generation"].as_i64() <= status["observedGeneration"].as_i64()
            && status["updatedReplicas"].as_i64() == Some(want)
            && status["availableReplicas"].as_i64() == Some(want)
            && status["replicas"].as_i64() == Some(want)
    }
}

/// A workflow `release` whose one stage sets `NEW` on `shop/web`.
fn set_image_workflow(undo_on_failure: bool) -> String {
    format!(
        r#"
name: release
stages:
  deploy:
    uses: k8s
    timeout: 2m
    with:
      action: set-image
      namespace: shop
      deployment: web
      container: web
      image: "{NEW}"
      undo_on_failure: {undo_on_failure}
"#
    )
}

fn only_stage(run: &Value) -> &Value {
    &run["stages"][0]
}

#[test]
fn a_run_killed_mid_rollout_resumes_and_patches_once() {
    let setup = Setup::new(&set_image_workflow(false));
    setup
        .cluster
        .rollout_plan("shop", "web", RolloutPlan::completes().step(SLOW_STEP));
    let mut child = setup.start();
    Setup::kill_when(&mut child, "the image patch reaches the cluster", || {
        !setup
            .cluster
            .writes("deployments", "shop", "web")
            .is_empty()
    });
    assert!(
        !setup.rolled_out(),
        "killed before the rollout ended: {:#}",
        setup.deployment()
    );

    let run = setup.resume();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let stage = only_stage(&run);
    assert_eq!(stage["attempt"], 1, "{stage:#}");
    assert_eq!(stage["outputs"]["image"], NEW, "{stage:#}");
    assert!(setup.rolled_out(), "{:#}", setup.deployment());
    assert_eq!(template_image(&setup.deployment()), NEW);
    let writes = setup.cluster.writes("deployments", "shop", "web");
    assert_eq!(writes.len(), 1, "one patch, before the kill: {writes:#?}");
    assert_eq!(writes[0].verb, "patch");
}

#[test]
fn a_run_killed_mid_job_resumes_adopts_the_job_and_reads_its_outputs() {
    let setup = Setup::new(&format!(
        r#"
name: release
stages:
  check:
    uses: k8s
    timeout: 2m
    with:
      action: job
      namespace: shop
      image: {COMPONENT}
      input: {{ release: "2.3" }}
"#
    ));
    setup.cluster.image(COMPONENT, |pod: &PodInput| {
        let data = pod.env.get("CO_DATA").cloned().unwrap_or_default();
        let input: Value = serde_json::from_str(&data).unwrap_or_default();
        let log = format!("checking\n[COUT] release = {}\n", input["release"]);
        PodOutcome::succeeds(&log, Duration::from_secs(3))
            .with_termination_message(r#"{"verdict": "ok"}"#)
    });
    let mut child = setup.start();
    Setup::kill_when(&mut child, "the component's pod runs", || {
        setup.cluster.creates("jobs", "shop") == 1
            && setup
                .cluster
                .list("pods", "shop")
                .iter()
                .any(|p| p["status"]["phase"] == "Running")
    });

    let run = setup.resume();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let stage = only_stage(&run);
    assert_eq!(stage["attempt"], 1, "{stage:#}");
    assert_eq!(stage["outputs"]["release"], "2.3", "{stage:#}");
    assert_eq!(stage["outputs"]["verdict"], "ok", "{stage:#}");
    assert_eq!(stage["outputs"]["exit_code"], 0, "{stage:#}");
    assert_eq!(
        setup.cluster.creates("jobs", "shop"),
        1,
        "the Job of the killed run was adopted"
    );
    assert!(setup.cluster.orphaned_pods("shop").is_empty());
}

#[test]
fn a_run_killed_when_its_rollout_stalls_is_undone_once() {
    let setup = Setup::new(&set_image_workflow(true));
    set_progress_deadline(&setup.cluster, &setup.served.url, TOKEN, ("shop", "web"), 1);
    setup
        .cluster
        .rollout_plan("shop", "web", RolloutPlan::completes().stalls());
    let mut child = setup.start();
    Setup::kill_when(
        &mut child,
        "the controller marks the rollout past its deadline",
        || {
            setup.deployment()["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["reason"] == "ProgressDeadlineExceeded")
        },
    );

    let run = setup.resume();
    assert_eq!(run["status"], "failed", "{run:#}");
    let stage = only_stage(&run);
    let message = stage["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exceeded its progress deadline")
            && message.contains("rolled back to revision 1"),
        "{stage:#}"
    );
    assert_eq!(template_image(&setup.deployment()), OLD);
    // The test's deadline patch, the image, and one undo, whichever process sent it.
    let patches: Vec<String> = setup
        .cluster
        .writes("deployments", "shop", "web")
        .into_iter()
        .map(|w| w.content_type.unwrap_or_default())
        .collect();
    assert_eq!(
        patches,
        [
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json"
        ],
        "{patches:?}\n{run:#}"
    );
}
