//! The adapter against the in-process Kubernetes API server of `baton_forge_fakes`, through
//! the real `kube` client: the conformance kit, kubectl's progress lines, undo, shared
//! watches, server-side apply conflicts, Jobs, RBAC and credentials.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_adapter_kit::harness::TableSecrets;
use baton_adapter_kit::{Scenario, fresh_key, run_conformance};
use baton_adapter_kubernetes::KubernetesKind;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, PollOutcome,
    PollRequest, StartRequest, Waker,
};
use baton_forge_fakes::Served;
use baton_forge_fakes::kubernetes::{Cluster, PodOutcome, RolloutPlan, Rules};
use serde_json::{Value, json};

const NS: &str = "app";
const USER: &str = "system:serviceaccount:ci:baton";
/// The bound on every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(30);

struct Fixture {
    cluster: Cluster,
    _served: Served,
    dir: tempfile::TempDir,
    /// The adapter's instance block, for building replicas.
    config: Value,
    adapter: Arc<dyn Adapter>,
    wakes: Arc<Mutex<Vec<AttemptKey>>>,
}

fn build(config: &Value) -> Arc<dyn Adapter> {
    KubernetesKind
        .build("k8s", config, &TableSecrets::default())
        .unwrap()
}

impl Fixture {
    async fn new() -> Self {
        Self::with_rules(Rules::all(), "t").await
    }

    /// A cluster with namespaces `app` and `ci`, a token `t` for `rules`, and an adapter
    /// that reaches it with `token`.
    async fn with_rules(rules: Rules, token: &str) -> Self {
        let cluster = Cluster::new();
        let served = cluster.serve().await.unwrap();
        cluster.add_token("t", USER, rules);
        cluster.add_namespace(NS);
        cluster.add_namespace("ci");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        cluster
            .write_kubeconfig(&served, &path, "test", token)
            .unwrap();
        let config = json!({"kubeconfig": path.to_str().unwrap(), "namespace": NS, "request_timeout": "10s"});
        assert!(KubernetesKind.validate_instance(&config).is_empty());
        let adapter = build(&config);
        let wakes = Arc::new(Mutex::new(Vec::new()));
        let seen = wakes.clone();
        adapter.attach(Waker::new(move |key| {
            seen.lock().unwrap().push(key.clone());
        }));
        Self {
            cluster,
            _served: served,
            dir,
            config,
            adapter,
            wakes,
        }
    }

    /// Another adapter built from the same instance block, as a second `baton serve` builds
    /// it: it shares nothing with [`Self::adapter`] but the cluster.
    fn replica(&self) -> Arc<dyn Adapter> {
        build(&self.config)
    }

    /// A Deployment `name` of 3 replicas whose progress deadline is 1 s, rolling out as
    /// `plan` says.
    fn deployment(&self, name: &str, plan: RolloutPlan) {
        self.cluster
            .add_deployment(NS, name, name, &format!("{name}:1"), 3);
        self.cluster.rollout_plan(NS, name, plan);
    }

    async fn start(&self, key: &AttemptKey, input: Value) -> Result<ExternalRef, AdapterError> {
        self.adapter
            .start(&StartRequest {
                key: key.clone(),
                workflow: "w".into(),
                input,
                timeout: Duration::from_secs(600),
            })
            .await
    }

    /// Polls until terminal, as the engine does: at once on a wake, else at the hint (capped
    /// at 100 ms here); every message seen, and the last outcome.
    async fn wait(
        &self,
        key: &AttemptKey,
        mut external: ExternalRef,
    ) -> (Vec<String>, PollOutcome, ExternalRef) {
        let until = Instant::now() + DEADLINE;
        let mut messages = Vec::new();
        loop {
            assert!(
                Instant::now() < until,
                "{key} did not end; messages: {messages:?}"
            );
            let outcome = self.poll(key, &external).await;
            if let Some(replaced) = &outcome.external {
                external = replaced.clone();
            }
            if let Some(m) = &outcome.message
                && messages.last() != Some(m)
            {
                messages.push(m.clone());
            }
            if outcome.state.is_terminal() {
                return (messages, outcome, external);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A Deployment `name` rolling out as `plan` says, and a set-image stage started on it
    /// (to `<name>:2`).
    async fn rolling(
        &self,
        name: &str,
        plan: RolloutPlan,
        undo: bool,
    ) -> (AttemptKey, ExternalRef) {
        self.deployment(name, plan);
        let key = fresh_key("deploy");
        let input = self.set_image(name, &format!("{name}:2"), undo);
        let external = self.start(&key, input).await.unwrap();
        (key, external)
    }

    /// A Deployment `name` whose next rollout stalls past a 1 s progress deadline, and a
    /// set-image stage with `undo_on_failure` started on it (to `<name>:2`).
    async fn stalling(&self, name: &str) -> (AttemptKey, ExternalRef) {
        self.deployment(name, RolloutPlan::completes().stalls());
        self.short_deadline(name).await;
        let key = fresh_key("deploy");
        let input = self.set_image(name, &format!("{name}:2"), true);
        let external = self.start(&key, input).await.unwrap();
        (key, external)
    }

    /// One poll, as the engine makes it.
    async fn poll(&self, key: &AttemptKey, external: &ExternalRef) -> PollOutcome {
        let request = PollRequest {
            key,
            external,
            signal: None,
        };
        self.adapter.poll(&request).await.unwrap()
    }

    fn set_image(&self, name: &str, image: &str, undo: bool) -> Value {
        json!({"action": "set-image", "deployment": name, "container": name, "image": image, "undo_on_failure": undo})
    }

    /// Sets `spec.progressDeadlineSeconds` of `name` to 1 (as a test may) and waits for the
    /// controller to observe it.
    async fn short_deadline(&self, name: &str) {
        let client = self.client().await;
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, NS);
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 1}})),
        )
        .await
        .unwrap();
        let until = Instant::now() + DEADLINE;
        loop {
            let d = self.cluster.get("deployments", NS, name).unwrap();
            if d["metadata"]["generation"] == d["status"]["observedGeneration"] {
                return;
            }
            assert!(Instant::now() < until);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client(&self) -> kube::Client {
        let path = self.dir.path().join("kubeconfig");
        let config = kube::config::Kubeconfig::read_from(path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    fn image_of(&self, name: &str) -> String {
        let d = self.cluster.get("deployments", NS, name).unwrap();
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn patches(&self, name: &str) -> usize {
        self.cluster
            .writes("deployments", NS, name)
            .iter()
            .filter(|w| w.verb == "patch")
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_passes_the_conformance_kit() {
    let f = Fixture::new().await;
    f.deployment("ok", RolloutPlan::completes());
    f.deployment("stuck", RolloutPlan::completes().stalls());
    f.short_deadline("stuck").await;
    f.deployment(
        "slow",
        RolloutPlan::completes().step(Duration::from_secs(30)),
    );
    run_conformance(Scenario {
        kind: Arc::new(KubernetesKind),
        adapter: f.adapter.clone(),
        valid_with: f.set_image("ok", "ok:${{ .event.tag }}", false),
        invalid_with: json!({"action": "set-image", "deployment": "ok", "image": "x"}),
        succeed: f.set_image("ok", "ok:2", false),
        fail: f.set_image("stuck", "stuck:2", false),
        long: f.set_image("slow", "slow:2", false),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(f.replica()),
        deadline: DEADLINE,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_passes_the_conformance_kit() {
    let f = Fixture::new().await;
    f.cluster.image("ok:1", |_| {
        PodOutcome::succeeds("[COUT] a = 1\n", Duration::from_millis(50))
    });
    f.cluster.image("bad:1", |_| {
        PodOutcome::fails("boom\n", 3, Duration::from_millis(50))
    });
    f.cluster.image("long:1", |_| {
        PodOutcome::succeeds("", Duration::from_secs(120))
    });
    let job = |image: &str| json!({"action": "job", "namespace": "ci", "image": image, "input": {"x": 1}});
    run_conformance(Scenario {
        kind: Arc::new(KubernetesKind),
        adapter: f.adapter.clone(),
        valid_with: job("ok:${{ .event.tag }}"),
        invalid_with: json!({"action": "job", "image": "x", "network": "host"}),
        succeed: job("ok:1"),
        fail: job("bad:1"),
        long: job("long:1"),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(f.replica()),
        deadline: DEADLINE,
    })
    .await;
    assert!(
        f.cluster.orphaned_pods("ci").is_empty(),
        "{:?}",
        f.cluster.orphaned_pods("ci")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_reports_kubectl_s_lines_and_is_woken_by_the_watch() {
    let f = Fixture::new().await;
    let (key, external) = f
        .rolling(
            "web",
            RolloutPlan::completes().step(Duration::from_millis(100)),
            false,
        )
        .await;
    let (messages, outcome, external) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(
        outcome.message.as_deref(),
        Some("deployment \"web\" successfully rolled out")
    );
    assert!(
        messages.iter().any(|m| m
            .starts_with("Waiting for deployment \"web\" rollout to finish: ")
            && m.ends_with("new replicas have been updated...")),
        "{messages:?}"
    );
    assert_eq!(f.image_of("web"), "web:2");
    assert!(
        f.wakes.lock().unwrap().contains(&key),
        "the watch never woke the attempt"
    );
    let outputs = f.adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(outputs["image"], "web:2");
    assert_eq!(outputs["revision"], "2");
    assert_eq!(
        (
            outputs["replicas"].clone(),
            outputs["ready_replicas"].clone()
        ),
        (json!(3), json!(3))
    );
    let patch = &f.cluster.writes("deployments", NS, "web")[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(patch.field_manager.as_deref(), Some("baton"));
    assert_eq!(
        patch.body["metadata"]["annotations"]["baton.dev/attempt"],
        key.as_str()
    );
    assert_eq!(
        patch.body["metadata"]["annotations"]["baton.dev/revision-before"],
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_observation_and_slow_old_pods_are_waited_for() {
    let f = Fixture::new().await;
    let (key, external) = f
        .rolling(
            "web",
            RolloutPlan::completes()
                .observed_after(Duration::from_millis(400))
                .old_pods_terminate_after(Duration::from_millis(400)),
            false,
        )
        .await;
    let (messages, outcome, _) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
    assert!(
        messages.contains(&"Waiting for deployment spec update to be observed...".to_owned()),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.ends_with("old replicas are pending termination...")),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rollout_is_undone_to_the_revision_before() {
    let f = Fixture::new().await;
    let (key, external) = f.stalling("web").await;
    let (_, outcome, _) = f.wait(&key, external.clone()).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some("deployment \"web\" exceeded its progress deadline; rolled back to revision 1")
    );
    // A poll at once, before the watch has seen the undo (as after a crash between the
    // undo and the stored verdict), reports the same and writes nothing more.
    let at_once = f.poll(&key, &external).await;
    assert_eq!(at_once.message, outcome.message);
    assert_eq!(f.image_of("web"), "web:1");
    let undo = f
        .cluster
        .writes("deployments", NS, "web")
        .into_iter()
        .find(|w| w.content_type.as_deref() == Some("application/json-patch+json"))
        .expect("a JSON patch");
    assert_eq!(undo.body[0]["path"], "/spec/template");
    assert!(
        undo.body[0]["value"]["metadata"]["labels"]
            .get("pod-template-hash")
            .is_none()
    );
    // The controller reuses the old ReplicaSet and gives it the next revision.
    let until = Instant::now() + DEADLINE;
    loop {
        let sets = f.cluster.list("replicasets", NS);
        assert_eq!(sets.len(), 2, "no third ReplicaSet: {sets:?}");
        let old = sets
            .iter()
            .find(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1")
            .unwrap();
        if old["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3" {
            break;
        }
        assert!(
            Instant::now() < until,
            "the old ReplicaSet kept its revision: {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A poll after a crash knows the stage failed and was undone.
    let again = f.poll(&key, &external).await;
    assert_eq!(again.state, ExternalState::Failed);
    assert!(
        again
            .message
            .unwrap()
            .ends_with("rolled back to revision 1")
    );
    let kinds: Vec<_> = f
        .cluster
        .writes("deployments", NS, "web")
        .into_iter()
        .filter_map(|w| w.content_type)
        // The fixture's own write (the short deadline) comes first.
        .skip_while(|t| t != "application/strategic-merge-patch+json")
        .collect();
    assert_eq!(
        kinds,
        [
            "application/strategic-merge-patch+json",
            "application/json-patch+json"
        ],
        "one patch to roll out, one to undo, nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_polls_at_once_undo_a_stall_once() {
    let f = Fixture::new().await;
    let (key, external) = f.stalling("web").await;
    // No poll until the deadline has passed, then two at once (a wake arriving while the
    // engine's poll runs).
    let until = Instant::now() + DEADLINE;
    while !f.cluster.get("deployments", NS, "web").unwrap()["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["reason"] == "ProgressDeadlineExceeded")
    {
        assert!(
            Instant::now() < until,
            "the rollout never passed its deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, second) = tokio::join!(f.poll(&key, &external), f.poll(&key, &external));
    for outcome in [&first, &second] {
        assert_eq!(outcome.state, ExternalState::Failed);
        assert!(
            outcome
                .message
                .as_deref()
                .unwrap()
                .ends_with("rolled back to revision 1"),
            "{outcome:?}"
        );
    }
    let undos = f
        .cluster
        .writes("deployments", NS, "web")
        .into_iter()
        .filter(|w| {
            w.content_type.as_deref() == Some("application/json-patch+json")
                || w.content_type.as_deref() == Some("application/merge-patch+json")
                    && w.body["metadata"]["annotations"]
                        .get("baton.dev/undone-by")
                        .is_some()
        })
        .count();
    assert_eq!(undos, 1, "the stall is undone once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_undoes_with_a_note_and_without_undo_it_is_recorded() {
    let f = Fixture::new().await;
    let (key, external) = f
        .rolling(
            "web",
            RolloutPlan::completes().step(Duration::from_secs(30)),
            true,
        )
        .await;
    let note = f.adapter.cancel_explained(&key, &external).await.unwrap();
    assert_eq!(
        note.as_deref(),
        Some("rolled back deployment \"web\" to revision 1")
    );
    assert_eq!(f.image_of("web"), "web:1");

    let (key, external) = f
        .rolling(
            "api",
            RolloutPlan::completes().step(Duration::from_secs(30)),
            false,
        )
        .await;
    let note = f
        .adapter
        .cancel_explained(&key, &external)
        .await
        .unwrap()
        .unwrap();
    assert!(note.contains("goes on"), "{note}");
    assert_eq!(
        f.image_of("api"),
        "api:2",
        "without undo the rollout goes on"
    );
    let outcome = f.poll(&key, &external).await;
    assert_eq!(outcome.state, ExternalState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_adopts_without_a_second_patch() {
    let f = Fixture::new().await;
    f.deployment("web", RolloutPlan::completes());
    let key = fresh_key("deploy");
    let input = f.set_image("web", "web:2", false);
    let started = f.start(&key, input.clone()).await.unwrap();
    let found = f.adapter.find(&key, &input).await.unwrap().unwrap();
    assert_eq!(found.id, started.id);
    let again = f.start(&key, input).await.unwrap();
    assert_eq!(again.id, started.id);
    assert_eq!(f.patches("web"), 1);
    assert!(
        f.adapter
            .find(&fresh_key("deploy"), &f.set_image("web", "web:3", false))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_across_a_410_and_a_dropped_watch() {
    let f = Fixture::new().await;
    let (key, external) = f
        .rolling(
            "web",
            RolloutPlan::completes().step(Duration::from_millis(300)),
            false,
        )
        .await;
    let first = f.poll(&key, &external).await;
    assert!(!first.state.is_terminal());
    f.cluster.compact();
    f.cluster.drop_watches();
    let (_, outcome, _) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stages_in_one_namespace_share_one_watch() {
    let f = Fixture::new().await;
    let mut stages = Vec::new();
    for i in 0..20 {
        let name = format!("web{i}");
        f.deployment(&name, RolloutPlan::completes());
        let key = fresh_key("deploy");
        let external = f
            .start(&key, f.set_image(&name, &format!("{name}:2"), false))
            .await
            .unwrap();
        stages.push((key, external));
    }
    let waits = stages
        .iter()
        .map(|(key, external)| f.wait(key, external.clone()));
    for (_, outcome, _) in futures::future::join_all(waits).await {
        assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
    }
    assert_eq!(f.cluster.watches_opened("deployments", NS), 1);
    assert_eq!(f.cluster.peak_open_watches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_names_the_conflicting_manager_and_force_takes_over() {
    let f = Fixture::new().await;
    f.deployment("web", RolloutPlan::completes());
    // `kubectl set image` owns the image.
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(f.client().await, NS);
    let params = kube::api::PatchParams {
        field_manager: Some("kubectl-set".into()),
        ..Default::default()
    };
    let body = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}});
    api.patch("web", &params, &kube::api::Patch::Strategic(body))
        .await
        .unwrap();
    let manifest: PathBuf = f.dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: '3'}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: 'web:3'}]\n",
    )
    .unwrap();
    let input = |force: bool| json!({"action": "apply", "manifest": manifest.to_str().unwrap(), "force": force});
    let refused = f
        .start(&fresh_key("apply"), input(false))
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(matches!(refused, AdapterError::Invalid(_)), "{refused:?}");
    assert!(
        text.contains("kubectl-set") && text.contains(".image") && text.contains("force: true"),
        "{text}"
    );
    let key = fresh_key("apply");
    let external = f.start(&key, input(true)).await.unwrap();
    let (_, outcome, external) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(f.image_of("web"), "web:3");
    let settings = f.cluster.get("configmaps", NS, "settings").unwrap();
    assert_eq!(
        settings["metadata"]["annotations"]["baton.dev/attempt"],
        key.as_str()
    );
    let outputs = f.adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(outputs["workloads"][0]["name"], "web");
    assert_eq!(outputs["workloads"][0]["image"], "web:3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gives_the_component_s_outputs_and_sees_its_input() {
    let f = Fixture::new().await;
    let seen = Arc::new(Mutex::new(None));
    let saw = seen.clone();
    f.cluster.image("tool:1", move |input| {
        *saw.lock().unwrap() = Some(input.clone());
        PodOutcome::succeeds(
            "hello\n[COUT] version = 1\n[COUT] name = lint\n",
            Duration::from_millis(50),
        )
        .with_termination_message(r#"{"version": "2", "report": {"ok": true}}"#)
    });
    let key = fresh_key("lint");
    let input = json!({"action": "job", "namespace": "ci", "image": "tool:1", "input": {"files": ["a.rs"]}, "env": {"LEVEL": "3"}});
    let external = f.start(&key, input).await.unwrap();
    let (_, outcome, external) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
    let outputs = f.adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(
        Value::Object(outputs),
        json!({"version": "2", "name": "lint", "report": {"ok": true}, "exit_code": 0})
    );
    let pod = seen.lock().unwrap().clone().unwrap();
    assert_eq!(pod.env["CO_DATA"], r#"{"files":["a.rs"]}"#);
    assert_eq!(pod.env["LEVEL"], "3");
    assert_eq!(pod.files[&pod.env["BATON_INPUT"]], r#"{"files":["a.rs"]}"#);
    assert_eq!(pod.env["BATON_OUTPUT"], "/dev/termination-log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_retries_up_to_its_backoff_limit() {
    let f = Fixture::new().await;
    f.cluster.image("bad:1", |_| {
        PodOutcome::fails("step 1\nboom\n", 3, Duration::from_millis(30))
    });
    let key = fresh_key("lint");
    let input = json!({"action": "job", "namespace": "ci", "image": "bad:1", "backoff_limit": 1});
    let external = f.start(&key, input).await.unwrap();
    let (_, outcome, _) = f.wait(&key, external).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    let message = outcome.message.unwrap();
    assert!(
        message.contains("backoff_limit")
            && message.contains("exited with 3")
            && message.ends_with("boom"),
        "{message}"
    );
    assert_eq!(
        f.cluster.list("pods", "ci").len(),
        2,
        "one run and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_leaves_no_pod() {
    let f = Fixture::new().await;
    f.cluster.image("long:1", |_| {
        PodOutcome::succeeds("", Duration::from_secs(120))
    });
    let key = fresh_key("lint");
    let external = f
        .start(
            &key,
            json!({"action": "job", "namespace": "ci", "image": "long:1"}),
        )
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while f.cluster.list("pods", "ci").is_empty() {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.adapter.cancel(&key, &external).await.unwrap();
    let name = external.id.rsplit('/').next().unwrap().to_owned();
    let delete = f
        .cluster
        .writes("jobs", "ci", &name)
        .into_iter()
        .find(|w| w.verb == "delete")
        .unwrap();
    assert_eq!(delete.body["propagationPolicy"], "Foreground");
    while !f.cluster.list("pods", "ci").is_empty() {
        assert!(Instant::now() < until, "the pod stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f.cluster.orphaned_pods("ci").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_named_with_its_role_rule() {
    let rules = Rules::none().allow(&["get", "list", "watch"], "apps", "deployments");
    let f = Fixture::with_rules(rules, "t").await;
    f.deployment("web", RolloutPlan::completes());
    let error = f
        .start(&fresh_key("deploy"), f.set_image("web", "web:2", false))
        .await
        .unwrap_err();
    assert!(matches!(error, AdapterError::Auth(_)), "{error:?}");
    assert!(
        error.to_string().contains(r#"the service account needs verb "patch" on "deployments" (apiGroup "apps") in namespace "app""#),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_say_so() {
    let f = Fixture::with_rules(Rules::all(), "wrong").await;
    f.deployment("web", RolloutPlan::completes());
    let error = f
        .start(&fresh_key("deploy"), f.set_image("web", "web:2", false))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AdapterError::Auth(m) if m.contains("refused the credentials")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stuck_pulling_its_image_says_so_and_keeps_waiting() {
    let f = Fixture::new().await;
    let (key, external) = f
        .rolling("web", RolloutPlan::completes().image_pull_backoff(), false)
        .await;
    let until = Instant::now() + DEADLINE;
    let line = loop {
        let outcome = f.poll(&key, &external).await;
        assert!(!outcome.state.is_terminal(), "{outcome:?}");
        let line = outcome.message.unwrap_or_default();
        if line.contains("ImagePullBackOff") {
            break line;
        }
        assert!(Instant::now() < until, "never said: {line}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        line.starts_with("Waiting for deployment \"web\" rollout to finish: "),
        "{line}"
    );
    assert!(line.contains("(pod web-"), "{line}");
    f.adapter.cancel(&key, &external).await.unwrap();
}
