//! The Kubernetes model as the real `kube` client sees it: rollouts, watches and their
//! 410 recovery, server-side apply conflicts, rollbacks, progress deadlines, Jobs, deletes
//! with propagation, RBAC, and the cost of many watches.

use std::time::Duration;

use baton_forge_fakes::Served;
use baton_forge_fakes::kubernetes::{Cluster, PodOutcome, RolloutPlan, Rules};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};

const USER: &str = "system:serviceaccount:ci:baton";

/// How long any wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(15);

/// A cluster with namespace `app`, a token `t0k3n` allowed everything, served, and a
/// client reaching it through a kubeconfig written by the model.
async fn cluster() -> (Cluster, Served, kube::Client) {
    let cluster = Cluster::new();
    cluster.add_namespace("app");
    cluster.add_token("t0k3n", USER, Rules::all());
    let served = cluster.serve().await.expect("serve");
    let client = client(&cluster, &served, "t0k3n").await;
    (cluster, served, client)
}

async fn client(cluster: &Cluster, served: &Served, token: &str) -> kube::Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    cluster
        .write_kubeconfig(served, &path, "fake", token)
        .expect("kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let options = kube::config::KubeConfigOptions {
        context: Some("fake".to_owned()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Waits (bounded) until `check` holds for the stored object, and returns it.
async fn until(
    cluster: &Cluster,
    resource: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(object) = cluster.get(resource, "app", name)
            && check(&object)
        {
            return object;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{resource}/{name} never got there: {:#}",
            cluster.get(resource, "app", name).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ten Deployments `d0`..`d9` of `replicas` in each of twenty namespaces `ns0`..`ns19`.
fn twenty_namespaces(cluster: &Cluster, replicas: i32) -> Vec<(String, String)> {
    let mut targets = Vec::new();
    for n in 0..20 {
        let ns = format!("ns{n}");
        cluster.add_namespace(&ns);
        for d in 0..10 {
            let name = format!("d{d}");
            cluster.add_deployment(&ns, &name, "web", "web:1", replicas);
            targets.push((ns.clone(), name));
        }
    }
    targets
}

/// What `kubectl rollout status` calls done for a Deployment.
fn rolled_out(d: &Value) -> bool {
    let s = &d["status"];
    s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == d["spec"]["replicas"]
        && s["replicas"] == s["updatedReplicas"]
        && s["availableReplicas"] == s["updatedReplicas"]
}

/// The API's refusal of a request that should have been refused.
fn refusal<T: std::fmt::Debug>(answer: kube::Result<T>) -> Box<kube::core::Status> {
    match answer {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected a refusal: {other:?}"),
    }
}

fn image_patch(image: &str) -> Patch<Value> {
    Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}),
    )
}

fn revision(object: &Value) -> &str {
    object["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_strategic_merge_patch_rolls_out_a_new_replicaset_at_revision_2() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 3);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let patched = api
        .patch("web", &PatchParams::default(), &image_patch("web:2"))
        .await
        .expect("patch");
    assert_eq!(patched.metadata.generation, Some(2));
    let done = until(&cluster, "deployments", "web", |d| {
        rolled_out(d) && d["status"]["observedGeneration"] == 2
    })
    .await;
    assert_eq!(revision(&done), "2");
    let sets: Api<ReplicaSet> = Api::namespaced(client, "app");
    let sets = sets.list(&ListParams::default()).await.expect("list");
    let new: Vec<Value> = sets
        .items
        .iter()
        .map(|rs| serde_json::to_value(rs).unwrap())
        .filter(|rs| rs["spec"]["replicas"] == 3)
        .collect();
    assert_eq!(new.len(), 1, "one ReplicaSet holds the replicas");
    assert_eq!(revision(&new[0]), "2");
    assert_eq!(
        new[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:2"
    );
    assert_eq!(
        cluster.list("pods", "app").len(),
        3,
        "the old pods are gone"
    );
    assert!(cluster.rollout_completed_at("app", "web").is_some());
    assert_eq!(
        cluster.writes("deployments", "app", "web")[0]
            .content_type
            .as_deref(),
        Some("application/strategic-merge-patch+json")
    );
}

#[tokio::test]
async fn a_watch_from_a_resource_version_sees_the_status_move_in_order() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 3);
    let api: Api<Deployment> = Api::namespaced(client, "app");
    let before = api.get("web").await.expect("get");
    let rv = before.metadata.resource_version.clone().unwrap();
    api.patch("web", &PatchParams::default(), &image_patch("web:2"))
        .await
        .expect("patch");
    until(&cluster, "deployments", "web", rolled_out).await;
    let params = WatchParams::default()
        .fields("metadata.name=web")
        .timeout(5);
    let mut stream = api.watch(&params, &rv).await.expect("watch").boxed();
    let mut updated = Vec::new();
    let mut versions = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, stream.try_next())
        .await
        .expect("in time")
        .expect("event")
    {
        let WatchEvent::Modified(d) = event else {
            panic!("only changes: {event:?}")
        };
        versions.push(d.metadata.resource_version.unwrap().parse::<u64>().unwrap());
        let status = d.status.unwrap_or_default();
        updated.push((
            status.observed_generation.unwrap_or(0),
            status.updated_replicas.unwrap_or(0),
        ));
        if updated.last() == Some(&(2, 3)) && status.replicas == Some(3) {
            break;
        }
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "in resourceVersion order: {versions:?}"
    );
    assert_eq!(
        updated[0],
        (1, 3),
        "the spec change comes first, not yet observed"
    );
    let seen: Vec<i32> = updated
        .iter()
        .filter(|(g, _)| *g == 2)
        .map(|(_, u)| *u)
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.contains(&1) && seen.contains(&2),
        "one replica at a time: {seen:?}"
    );
}

#[tokio::test]
async fn after_compaction_a_watch_gets_410_and_the_watcher_relists() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 1);
    let api: Api<Deployment> = Api::namespaced(client, "app");
    let rv = api
        .get("web")
        .await
        .expect("get")
        .metadata
        .resource_version
        .unwrap();
    cluster.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {rv} (")),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410: {other:?}"),
    }
    assert!(
        stream.try_next().await.expect("end").is_none(),
        "the stream ends after it"
    );

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut inits = 0;
    let mut restarted = false;
    let mut gone = Vec::new();
    while inits < 2 {
        let event = match tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("in time")
        {
            Ok(event) => event,
            Err(watcher::Error::WatchError(status)) => {
                gone.push(status.code);
                continue;
            }
            Err(other) => panic!("unexpected: {other}"),
        };
        if let Some(watcher::Event::InitDone) = event {
            inits += 1;
            if !restarted {
                // The watcher's next watch starts from the version it listed: forgotten.
                api.patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
                )
                .await
                .expect("patch");
                cluster.compact();
                restarted = true;
            }
        }
    }
    assert_eq!(gone, [410], "the watcher saw the 410 once, then relisted");
    assert!(cluster.watches_opened("deployments", "app") >= 2);
}

#[tokio::test]
async fn an_apply_of_a_field_another_manager_set_conflicts_until_forced() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 1);
    let api: Api<Deployment> = Api::namespaced(client, "app");
    let apply = |image: &str| {
        Patch::Apply(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}),
        )
    };
    api.patch("web", &PatchParams::apply("baton"), &apply("web:2"))
        .await
        .expect("first apply");
    api.patch(
        "web",
        &PatchParams {
            field_manager: Some("kubectl-set".into()),
            ..Default::default()
        },
        &image_patch("web:3"),
    )
    .await
    .expect("kubectl set image");
    let refused = api
        .patch("web", &PatchParams::apply("baton"), &apply("web:4"))
        .await;
    let status = refusal(refused);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-set\" using apps/v1: .spec.template.spec.containers[name=\"web\"].image"
    );
    let forced = api
        .patch("web", &PatchParams::apply("baton").force(), &apply("web:4"))
        .await
        .expect("forced");
    let forced_json = serde_json::to_value(&forced).unwrap();
    assert_eq!(
        forced_json["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:4"
    );
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"baton".to_owned()), "{managers:?}");
    let no_manager = api
        .patch("web", &PatchParams::default(), &apply("web:5"))
        .await;
    assert!(matches!(no_manager, Err(kube::Error::Api(s)) if s.code == 422));
}

#[tokio::test]
async fn a_json_patch_restoring_the_old_template_reuses_the_old_replicaset() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 2);
    let first = cluster.list("replicasets", "app")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let api: Api<Deployment> = Api::namespaced(client, "app");
    api.patch("web", &PatchParams::default(), &image_patch("web:2"))
        .await
        .expect("patch");
    until(&cluster, "deployments", "web", |d| {
        rolled_out(d) && revision(d) == "2"
    })
    .await;
    let old = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "web:1"}]);
    let patch: json_patch::Patch = serde_json::from_value(old).unwrap();
    api.patch("web", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .expect("json patch");
    let done = until(&cluster, "deployments", "web", |d| {
        rolled_out(d) && d["status"]["observedGeneration"] == 3
    })
    .await;
    assert_eq!(revision(&done), "3");
    assert_eq!(
        cluster.list("replicasets", "app").len(),
        2,
        "no third ReplicaSet"
    );
    let reused = cluster.get("replicasets", "app", &first).unwrap();
    assert_eq!(revision(&reused), "3");
    assert_eq!(reused["spec"]["replicas"], 2);
}

#[tokio::test]
async fn a_stalled_rollout_passes_its_progress_deadline() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 2);
    cluster.rollout_plan("app", "web", RolloutPlan::completes().image_pull_backoff());
    let api: Api<Deployment> = Api::namespaced(client, "app");
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 1}})),
    )
    .await
    .expect("deadline");
    api.patch("web", &PatchParams::default(), &image_patch("web:bad"))
        .await
        .expect("patch");
    let started = std::time::Instant::now();
    let stalled = until(&cluster, "deployments", "web", |d| {
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["status"] == "False")
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the deadline"
    );
    let progressing = stalled["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
    assert_eq!(
        stalled["status"]["availableReplicas"], 2,
        "the old pods still serve"
    );
    let waiting: Vec<Value> = cluster
        .list("pods", "app")
        .into_iter()
        .filter_map(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                .as_str()
                .map(|r| json!(r))
        })
        .collect();
    assert_eq!(waiting, [json!("ImagePullBackOff")]);
}

fn job(name: &str, image: &str, backoff_limit: i32) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "args": ["go"],
                "env": [{"name": "GREETING", "value": "hi"}],
                "volumeMounts": [{"name": "input", "mountPath": "/in"}]}],
            "volumes": [{"name": "input", "configMap": {"name": format!("{name}-input")}}]}}},
    }))
    .expect("job")
}

fn condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Creates `job`'s input ConfigMap (`<name>-input`, empty), then the Job.
async fn start_job(client: &kube::Client, job: &Job) {
    let name = job.metadata.name.clone().unwrap_or_default();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let input = json!({"metadata": {"name": format!("{name}-input")}});
    let input: ConfigMap = serde_json::from_value(input).unwrap();
    configmaps
        .create(&PostParams::default(), &input)
        .await
        .expect("configmap");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "app");
    jobs.create(&PostParams::default(), job).await.expect("job");
}

/// Waits for Job `name` to fail; returns it and its `Failed` reason.
async fn failure(cluster: &Cluster, name: &str) -> (Value, String) {
    let failed = until(cluster, "jobs", name, |j| condition(j, "Failed").is_some()).await;
    let reason = condition(&failed, "Failed").unwrap()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (failed, reason)
}

#[tokio::test]
async fn a_job_waits_for_its_configmap_runs_and_leaves_its_log_and_message() {
    let (cluster, _served, client) = cluster().await;
    cluster.image("runner:1", |input| {
        let log = format!(
            "{} {} {}\n",
            input.env["GREETING"],
            input.args.join(" "),
            input.files["/in/script"]
        );
        PodOutcome::succeeds(&log, Duration::from_millis(100)).with_termination_message("all good")
    });
    let jobs: Api<Job> = Api::namespaced(client.clone(), "app");
    jobs.create(&PostParams::default(), &job("run", "runner:1", 6))
        .await
        .expect("create");
    eventually("a pod", || !cluster.list("pods", "app").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pods = cluster.list("pods", "app");
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0]["status"]["phase"], "Pending",
        "waits for its ConfigMap"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "run-input"}, "data": {"script": "echo"}}),
    )
    .unwrap();
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect("configmap");
    let done = until(&cluster, "jobs", "run", |j| {
        condition(j, "Complete").is_some()
    })
    .await;
    assert_eq!(done["status"]["succeeded"], 1);
    assert!(
        condition(&done, "SuccessCriteriaMet").is_some(),
        "written before Complete"
    );
    let pod_name = cluster.list("pods", "app")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let pods: Api<Pod> = Api::namespaced(client, "app");
    let pod = pods.get(&pod_name).await.expect("pod");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["batch.kubernetes.io/job-name"], "run");
    let terminated = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (
            terminated.exit_code,
            terminated.reason.as_deref(),
            terminated.message.as_deref()
        ),
        (0, Some("Completed"), Some("all good"))
    );
    assert_eq!(
        pods.logs(&pod_name, &LogParams::default())
            .await
            .expect("log"),
        "hi go echo\n"
    );
}

#[tokio::test]
async fn a_failing_job_retries_up_to_its_backoff_limit_then_fails() {
    let (cluster, _served, client) = cluster().await;
    cluster.image("broken:1", |_| {
        PodOutcome::fails("boom\n", 2, Duration::from_millis(20))
    });
    start_job(&client, &job("fail", "broken:1", 2)).await;
    let (failed, reason) = failure(&cluster, "fail").await;
    assert_eq!(reason, "BackoffLimitExceeded");
    assert!(condition(&failed, "FailureTarget").is_some());
    assert_eq!(
        failed["status"]["failed"], 3,
        "the first try and two retries"
    );
    assert_eq!(cluster.list("pods", "app").len(), 3);
}

#[tokio::test]
async fn a_foreground_delete_leaves_no_pod_and_a_delete_without_policy_orphans_them() {
    let (cluster, served, client) = cluster().await;
    cluster.image("runner:1", |_| {
        PodOutcome::succeeds("", Duration::from_secs(60))
    });
    for name in ["a", "b"] {
        start_job(&client, &job(name, "runner:1", 0)).await;
    }
    let jobs: Api<Job> = Api::namespaced(client, "app");
    eventually("two pods", || cluster.list("pods", "app").len() >= 2).await;
    let marked = jobs
        .delete("a", &DeleteParams::foreground())
        .await
        .expect("delete a");
    assert!(
        marked
            .left()
            .is_some_and(|j| j.metadata.deletion_timestamp.is_some()),
        "the Job waits for its pods"
    );
    let path = "/apis/batch/v1/namespaces/app/jobs/b";
    let deleted = raw_request(&served, "DELETE", path, "application/json", "").await;
    assert!(deleted.starts_with("HTTP/1.1 200"), "{deleted}");
    assert!(
        deleted.contains("warning: 299 - \"child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning\""),
        "{deleted}"
    );
    eventually("the Job gone", || cluster.get("jobs", "app", "a").is_none()).await;
    let pods = cluster.list("pods", "app");
    assert_eq!(pods.len(), 1, "only b's pod is left");
    assert_eq!(pods[0]["metadata"]["labels"]["job-name"], "b");
    assert_eq!(cluster.orphaned_pods("app").len(), 1);
    let writes = cluster.writes("jobs", "app", "b");
    assert_eq!(
        writes.iter().map(|w| w.verb.as_str()).collect::<Vec<_>>(),
        ["create", "delete"]
    );
}

#[tokio::test]
async fn a_token_without_patch_gets_the_api_servers_403() {
    let (cluster, served, _) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 1);
    cluster.add_token(
        "reader",
        USER,
        Rules::none().allow(&["get", "watch", "list"], "apps", "deployments"),
    );
    let reader = client(&cluster, &served, "reader").await;
    let api: Api<Deployment> = Api::namespaced(reader, "app");
    api.get("web").await.expect("get is allowed");
    let refused = api
        .patch("web", &PatchParams::default(), &image_patch("web:2"))
        .await;
    let status = refusal(refused);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:ci:baton\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"app\""
    );
    assert_eq!(cluster.writes("deployments", "app", "web")[0].status, 403);
    let stranger = client(&cluster, &served, "nobody").await;
    let unknown = Api::<Deployment>::namespaced(stranger, "app")
        .get("web")
        .await;
    assert!(matches!(unknown, Err(kube::Error::Api(s)) if s.code == 401));
    assert!(cluster.meter().by_credential(USER) >= 2);
}

#[tokio::test]
async fn two_hundred_watches_in_twenty_namespaces_cost_little() {
    let (cluster, _served, client) = cluster().await;
    let mut streams = Vec::new();
    for (ns, name) in twenty_namespaces(&cluster, 1) {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        streams.push(api.watch(&params, "0").await.expect("watch").boxed());
    }
    assert_eq!(cluster.open_watches(), 200);
    let started = std::time::Instant::now();
    let meter_before = cluster.meter().total();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cluster.meter().total(),
        meter_before,
        "an idle watch makes no requests"
    );
    for stream in &mut streams {
        let first = tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .expect("in time")
            .expect("event");
        assert!(matches!(first, Some(WatchEvent::Added(_))));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    cluster.drop_watches();
    for stream in &mut streams {
        let end = tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .expect("in time");
        assert!(end.expect("clean end").is_none());
    }
    eventually("every watch closed", || cluster.open_watches() == 0).await;
    assert_eq!(cluster.peak_open_watches(), 200);
    assert_eq!(cluster.watches_opened("deployments", "ns3"), 10);
}

#[tokio::test]
async fn discovery_maps_a_manifests_kind_and_an_apply_in_yaml_creates_it() {
    let (cluster, served, client) = cluster().await;
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let gvk = kube::api::GroupVersionKind::gvk("apps", "v1", "StatefulSet");
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .expect("statefulsets are served");
    assert_eq!(resource.plural, "statefulsets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");

    // kubectl sends YAML to apply; the model reads it.
    let listed = Api::<ConfigMap>::namespaced(client.clone(), "app")
        .list(&ListParams::default())
        .await
        .expect("list");
    let before: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    let yaml =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n";
    let http = raw_request(
        &served,
        "PATCH",
        "/api/v1/namespaces/app/configmaps/settings?fieldManager=baton",
        "application/apply-patch+yaml",
        yaml,
    )
    .await;
    assert!(http.starts_with("HTTP/1.1 201"), "{http}");
    let settings = cluster.get("configmaps", "app", "settings").unwrap();
    assert_eq!(settings["data"]["mode"], "fast");
    let managed = &settings["metadata"]["managedFields"][0];
    assert_eq!(
        (&managed["manager"], &managed["operation"]),
        (&json!("baton"), &json!("Apply"))
    );
    let created_at: u64 = settings["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(created_at, before + 1, "an apply that creates is one write");
    assert_eq!(
        cluster.writes("configmaps", "app", "settings")[0]
            .field_manager
            .as_deref(),
        Some("baton")
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let named: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "run-"}})).unwrap();
    let made = configmaps
        .create(&PostParams::default(), &named)
        .await
        .expect("generateName");
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("run-") && name.len() == 9, "{name}");
    let again: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let taken = configmaps.create(&PostParams::default(), &again).await;
    assert!(
        matches!(taken, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists")
    );
    assert_eq!(cluster.creates("configmaps", "app"), 2);

    let mut stale = configmaps.get("settings").await.expect("get");
    let mut current = stale.clone();
    current.data = Some([("mode".to_owned(), "medium".to_owned())].into());
    configmaps
        .replace("settings", &PostParams::default(), &current)
        .await
        .expect("a current version");
    stale.data = Some([("mode".to_owned(), "slow".to_owned())].into());
    let conflict = configmaps
        .replace("settings", &PostParams::default(), &stale)
        .await;
    assert!(
        matches!(conflict, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict")
    );

    let elsewhere: Api<ConfigMap> = Api::namespaced(client, "nowhere");
    let missing = elsewhere.create(&PostParams::default(), &again).await;
    assert!(
        matches!(missing, Err(kube::Error::Api(s)) if s.code == 404 && s.message == "namespaces \"nowhere\" not found")
    );
}

/// One raw HTTP request with the all-powerful token (for what the typed client does not
/// send or show, such as a YAML body or a warning header); returns the whole answer.
async fn raw_request(
    served: &Served,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(served.addr)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k3n\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_initial_events_and_their_bookmark() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_statefulset("app", "db", "db", "db:1", 2);
    cluster.add_daemonset("app", "agent", "agent", "agent:1", 4);
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client, "app");
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("in time")
            .expect("event");
        match event {
            Some(watcher::Event::InitApply(sts)) => names.push(sts.metadata.name.unwrap()),
            Some(watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(names, ["db"]);
    let patch = Patch::Merge(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "db:2"}]}}}}),
    );
    api.patch("db", &PatchParams::default(), &patch)
        .await
        .expect("patch");
    let done = until(&cluster, "statefulsets", "db", |s| {
        s["status"]["observedGeneration"] == 2
            && s["status"]["updatedReplicas"] == 2
            && s["status"]["currentRevision"] == s["status"]["updateRevision"]
    })
    .await;
    assert_eq!(done["status"]["readyReplicas"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rollouts_in_twenty_namespaces_all_complete() {
    let (cluster, _served, client) = cluster().await;
    let targets = twenty_namespaces(&cluster, 3);
    let started = std::time::Instant::now();
    let patches = targets.iter().map(|(ns, name)| {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        async move {
            api.patch(name, &PatchParams::default(), &image_patch("web:2"))
                .await
        }
    });
    for patched in futures::future::join_all(patches).await {
        patched.expect("patch");
    }
    let patched = started.elapsed();
    eventually("every rollout completed", || {
        targets
            .iter()
            .all(|(ns, name)| cluster.rollout_completed_at(ns, name).is_some())
    })
    .await;
    let took = started.elapsed();
    // Observed after 20 ms, three replicas 50 ms apart: the model itself adds little.
    assert!(took < Duration::from_secs(3), "200 rollouts took {took:?}");
    println!(
        "200 rollouts of 3 replicas in 20 namespaces: patched in {patched:?}, completed in {took:?}"
    );
}

#[test]
fn a_cluster_served_in_the_background_runs_its_controllers() {
    let cluster = Cluster::new();
    cluster.add_namespace("app");
    cluster.add_token("t0k3n", USER, Rules::all());
    cluster.add_deployment("app", "web", "web", "web:1", 2);
    let served = cluster.serve_in_background().expect("serve");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = client(&cluster, &served, "t0k3n").await;
        let api: Api<Deployment> = Api::namespaced(client, "app");
        api.patch("web", &PatchParams::default(), &image_patch("web:2"))
            .await
            .expect("patch");
        until(&cluster, "deployments", "web", |d| {
            rolled_out(d) && d["status"]["observedGeneration"] == 2
        })
        .await;
    });
}

#[tokio::test]
async fn a_job_past_its_deadline_fails_and_its_ttl_removes_it_with_its_pods() {
    let (cluster, _served, client) = cluster().await;
    cluster.image("slow:1", |_| {
        PodOutcome::succeeds("working\n", Duration::from_secs(60))
    });
    let mut slow = serde_json::to_value(job("slow", "slow:1", 6)).unwrap();
    slow["spec"]["activeDeadlineSeconds"] = json!(1);
    slow["spec"]["ttlSecondsAfterFinished"] = json!(1);
    start_job(&client, &serde_json::from_value(slow).unwrap()).await;
    assert_eq!(failure(&cluster, "slow").await.1, "DeadlineExceeded");
    let pod = &cluster.list("pods", "app")[0];
    assert_eq!(pod["status"]["phase"], "Failed", "the pod was killed");
    eventually("the Job and its pod gone after their ttl", || {
        cluster.get("jobs", "app", "slow").is_none() && cluster.list("pods", "app").is_empty()
    })
    .await;
    assert!(cluster.orphaned_pods("app").is_empty());

    // An image nobody can pull never runs.
    start_job(&client, &job("lost", "nowhere:1", 0)).await;
    eventually("ImagePullBackOff", || {
        cluster.list("pods", "app").iter().any(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
        })
    })
    .await;
}

#[tokio::test]
async fn old_pods_that_take_long_to_terminate_hold_the_rollout_open() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_deployment("app", "web", "web", "web:1", 2);
    cluster.add_daemonset("app", "agent", "agent", "agent:1", 4);
    let linger = Duration::from_millis(400);
    cluster.rollout_plan(
        "app",
        "web",
        RolloutPlan::completes().old_pods_terminate_after(linger),
    );
    let api: Api<Deployment> = Api::namespaced(client.clone(), "app");
    api.patch("web", &PatchParams::default(), &image_patch("web:2"))
        .await
        .expect("patch");
    let lingering = until(&cluster, "deployments", "web", |d| {
        d["status"]["updatedReplicas"] == 2
            && d["status"]["availableReplicas"] == 2
            && d["status"]["observedGeneration"] == 2
    })
    .await;
    assert_eq!(
        lingering["status"]["replicas"], 3,
        "an old pod still terminates"
    );
    assert!(cluster.rollout_completed_at("app", "web").is_none());
    let since = std::time::Instant::now();
    until(&cluster, "deployments", "web", rolled_out).await;
    assert!(
        since.elapsed() >= linger / 2,
        "not before the old pod is gone"
    );

    let agents: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client, "app");
    let patch = Patch::Merge(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "agent:2"}]}}}}),
    );
    agents
        .patch("agent", &PatchParams::default(), &patch)
        .await
        .expect("patch");
    let done = until(&cluster, "daemonsets", "agent", |d| {
        d["status"]["observedGeneration"] == 2 && d["status"]["updatedNumberScheduled"] == 4
    })
    .await;
    assert_eq!(done["status"]["numberAvailable"], 4);
}

#[tokio::test]
async fn a_watch_ends_at_its_timeout() {
    let (_cluster, _served, client) = cluster().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "app");
    let started = std::time::Instant::now();
    let params = WatchParams::default().timeout(1);
    let mut stream = api.watch(&params, "0").await.expect("watch").boxed();
    let end = tokio::time::timeout(PATIENCE, stream.try_next())
        .await
        .expect("in time");
    assert!(end.expect("clean end").is_none(), "nothing happened");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_partitioned_statefulset_updates_only_the_ordinals_above_its_partition() {
    let (cluster, _served, client) = cluster().await;
    cluster.add_statefulset("app", "db", "db", "db:1", 3);
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client, "app");
    let patch = Patch::Merge(json!({"spec": {
        "updateStrategy": {"rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "db", "image": "db:2"}]}}}}));
    api.patch("db", &PatchParams::default(), &patch)
        .await
        .expect("patch");
    eventually("the partitioned rollout done", || {
        cluster.rollout_completed_at("app", "db").is_some()
    })
    .await;
    let status = &cluster.get("statefulsets", "app", "db").unwrap()["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["updatedReplicas"], 1, "only ordinal 2");
    assert_eq!(status["currentReplicas"], 2);
    assert_ne!(status["currentRevision"], status["updateRevision"]);
}
