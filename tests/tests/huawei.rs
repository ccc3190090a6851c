//! The Huawei example runs as its README says, with its own `baton.toml`, workflow and
//! event, against a fake Jenkins and the in-process Kubernetes API server, reached as the
//! ServiceAccount of its `rbac.yaml` (with exactly the rules that file grants): the build
//! gives the image, a release manager approves it with `baton runs approve`, the Deployment
//! gets the image, and the smoke-check component's outputs come back from its Job. When the
//! new image stalls past the Deployment's progress deadline, the run fails saying the
//! rollout was undone, and the Deployment is back on its old template.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_tests::forge::Served;
use baton_tests::forge::kubernetes::{Cluster, PodInput, PodOutcome, RolloutPlan, Rules};
use baton_tests::kubernetes::{role_rules, set_progress_deadline, template_image};
use baton_tests::{FakeJenkins, Finished, Sandbox, repo_root, wait_with_deadline};
use serde_json::{Value, json};

/// What the Deployment runs before the release.
const OLD: &str = "swr.cn-north-4.myhuaweicloud.com/huawei/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// What the Jenkins build pushes and archives in `image.properties`.
const NEW: &str = "swr.cn-north-4.myhuaweicloud.com/huawei/app@sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// The component image the workflow's `smoke` stage runs.
const SMOKE: &str = "swr.cn-north-4.myhuaweicloud.com/huawei/smoke-check:1";
/// The ServiceAccount of rbac.yaml, as the API server names it.
const SERVICE_ACCOUNT: &str = "system:serviceaccount:baton:baton";
const SA_TOKEN: &str = "sa-token-baton";
const ADMIN_TOKEN: &str = "admin-token";
const JENKINS_TOKEN: &str = "11aa22bb33cc";
const PIPELINE_TOKEN: &str = "pipeline-token";
const RELEASE_TOKEN: &str = "release-manager-token";

/// What the smoke-check component saw in its pod: `CO_DATA` and the file `BATON_INPUT` names.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// The example's files in a sandbox, the systems it talks to, and the environment that
/// points it at them (as the README's "How the test runs it" says).
struct Example {
    sb: Sandbox,
    cluster: Cluster,
    served: Served,
    jenkins: FakeJenkins,
    seen: Seen,
    env: Vec<(String, String)>,
}

impl Example {
    fn new() -> Self {
        let example = repo_root().join("examples/huawei");
        let sb = Sandbox::new();
        for file in ["baton.toml", "workflow.yaml", "event.json"] {
            sb.write(file, &std::fs::read_to_string(example.join(file)).unwrap());
        }

        let cluster = Cluster::new();
        cluster.add_namespace("app");
        cluster.add_deployment("app", "web", "web", OLD, 3);
        cluster.add_token(
            SA_TOKEN,
            SERVICE_ACCOUNT,
            role_rules(&example.join("rbac.yaml")),
        );
        cluster.add_token(ADMIN_TOKEN, "kubernetes-admin", Rules::all());
        let seen = Seen::default();
        let record = seen.clone();
        cluster.image(SMOKE, move |pod: &PodInput| smoke_check(pod, &record));
        let served = cluster
            .serve_in_background()
            .expect("serve the fake cluster");
        let kubeconfig = sb.path().join("kubeconfig.yaml");
        cluster
            .write_kubeconfig(&served, &kubeconfig, "huawei-prod", SA_TOKEN)
            .unwrap();

        let jenkins = FakeJenkins::start("baton", JENKINS_TOKEN);
        jenkins.add_job(
            "app/build",
            &["GIT_REF", "GIT_COMMIT"],
            Duration::from_millis(300),
            "image.properties",
            &format!("# pushed by the build\nIMAGE={NEW}\n"),
        );

        let env = [
            ("BATON_ADAPTERS__JENKINS__URL", jenkins.url.as_str()),
            ("BATON_ADAPTERS__JENKINS__POLL_INITIAL", "200ms"),
            (
                "BATON_ADAPTERS__PROD__KUBECONFIG",
                kubeconfig.to_str().unwrap(),
            ),
            ("JENKINS_TOKEN", JENKINS_TOKEN),
            ("BATON_PIPELINE_TOKEN", PIPELINE_TOKEN),
            ("BATON_RELEASE_TOKEN", RELEASE_TOKEN),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        Self {
            sb,
            cluster,
            served,
            jenkins,
            seen,
            env,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `baton ARGS` in the sandbox with the example's environment, to its end.
    fn baton(&self, args: &[&str], extra: &[(&str, &str)]) -> Finished {
        let child = self
            .sb
            .baton(args)
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton starts");
        wait_with_deadline(child, Duration::from_secs(120))
    }

    fn deployment(&self) -> Value {
        self.cluster
            .get("deployments", "app", "web")
            .expect("the Deployment exists")
    }
}

/// The smoke-check component (`examples/huawei/component/smoke-check.sh`) as the fake
/// cluster runs it: it reads `CO_DATA`, says it probed the service once, and writes its JSON
/// output to the termination message.
fn smoke_check(pod: &PodInput, seen: &Mutex<Vec<(String, String)>>) -> PodOutcome {
    let data = pod.env.get("CO_DATA").cloned().unwrap_or_default();
    let file = pod
        .env
        .get("BATON_INPUT")
        .and_then(|path| pod.files.get(path))
        .cloned()
        .unwrap_or_default();
    seen.lock().unwrap().push((data.clone(), file));
    let input: Value = serde_json::from_str(&data).unwrap_or_default();
    let log = format!(
        "smoke-check: {} (revision {}) at {}\n[COUT] healthy = true\n[COUT] probes = 1\n",
        input["image"], input["revision"], input["url"]
    );
    let output = json!({"checked_image": input["image"], "revision": input["revision"]});
    PodOutcome::succeeds(&log, Duration::from_millis(200))
        .with_termination_message(&output.to_string())
}

fn stage<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no stage {id} in {run:#}"))
}

/// A revision as text, whether an output gives it as a number or a string.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

#[test]
fn the_huawei_example_builds_waits_for_approval_deploys_and_checks_in_a_job() {
    let example = Example::new();
    let valid = example.baton(&["validate", "-c", "baton.toml"], &[]);
    assert_eq!(valid.code, Some(0), "{}{}", valid.stdout, valid.stderr);

    let server = example.sb.serve("baton.toml", &example.env());
    let event = std::fs::read_to_string(example.sb.path().join("event.json")).unwrap();
    let run = server.start_run("huawei-release", PIPELINE_TOKEN, &event);
    let waiting = server.wait_for(
        &format!("/api/v1/runs/{run}"),
        PIPELINE_TOKEN,
        "the release to wait for its approval",
        |r| stage(r, "release")["status"] == "waiting",
    );
    let build = stage(&waiting, "build");
    assert_eq!(build["outputs"]["properties"]["IMAGE"], NEW, "{build:#}");
    let message = stage(&waiting, "release")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(NEW),
        "the approval quotes the image: {waiting:#}"
    );
    // Nothing reaches the cluster before someone approves.
    assert!(
        example
            .cluster
            .writes("deployments", "app", "web")
            .is_empty()
    );
    let triggered = example.jenkins.builds("app/build");
    assert_eq!(triggered.len(), 1, "{triggered:?}");
    assert_eq!(triggered[0]["GIT_REF"], "release/2.3");
    assert!(triggered[0].contains_key("BATON_ATTEMPT"), "{triggered:?}");

    // The release manager approves from the command line, as the README says.
    let approved = example.baton(
        &["runs", "approve", &run, "release", "--comment", "ship 2.3"],
        &[("BATON_URL", &server.url), ("BATON_TOKEN", RELEASE_TOKEN)],
    );
    assert_eq!(
        approved.code,
        Some(0),
        "{}{}",
        approved.stdout,
        approved.stderr
    );

    let ended = server.run_ended(&run, PIPELINE_TOKEN);
    assert_eq!(ended["status"], "succeeded", "{ended:#}\n{}", server.log());
    let release = stage(&ended, "release");
    assert_eq!(release["outputs"]["decision"], "approved", "{release:#}");
    assert_eq!(release["outputs"]["by"], "release-manager", "{release:#}");

    let deploy = stage(&ended, "deploy");
    assert_eq!(deploy["outputs"]["image"], NEW, "{deploy:#}");
    assert_eq!(text(&deploy["outputs"]["revision"]), "2", "{deploy:#}");
    let deployment = example.deployment();
    assert_eq!(template_image(&deployment), NEW, "{deployment:#}");
    let patches = example.cluster.writes("deployments", "app", "web");
    assert_eq!(patches.len(), 1, "one patch, the image: {patches:#?}");
    assert_eq!(patches[0].verb, "patch");
    assert_eq!(patches[0].field_manager.as_deref(), Some("baton"));

    let smoke = stage(&ended, "smoke");
    let outputs = &smoke["outputs"];
    assert_eq!(outputs["healthy"], Value::Bool(true), "{smoke:#}");
    assert_eq!(outputs["probes"], 1, "{smoke:#}");
    assert_eq!(outputs["checked_image"], NEW, "{smoke:#}");
    assert_eq!(text(&outputs["revision"]), "2", "{smoke:#}");
    assert_eq!(outputs["exit_code"], 0, "{smoke:#}");
    let seen = example.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the component ran once: {seen:?}");
    let (data, file) = &seen[0];
    let input: Value = serde_json::from_str(data).unwrap();
    assert_eq!(input["image"], NEW);
    assert_eq!(input["url"], "http://web.app.svc.cluster.local/healthz");
    assert_eq!(file, data, "BATON_INPUT holds the same input as CO_DATA");
    assert_eq!(example.cluster.creates("jobs", "app"), 1);
    assert!(example.cluster.orphaned_pods("app").is_empty());
}

#[test]
fn a_release_that_stalls_past_its_progress_deadline_is_rolled_back() {
    let example = Example::new();
    set_progress_deadline(
        &example.cluster,
        &example.served.url,
        ADMIN_TOKEN,
        ("app", "web"),
        1,
    );
    example
        .cluster
        .rollout_plan("app", "web", RolloutPlan::completes().stalls());

    let run = example.baton(
        &[
            "run",
            "-c",
            "baton.toml",
            "huawei-release",
            "--event",
            "event.json",
            "--approve",
            "release",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let deploy = run.stage("deploy");
    assert_eq!(deploy["status"], "failed", "{deploy:#}");
    let message = deploy["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(r#"deployment "web" exceeded its progress deadline"#)
            && message.contains("rolled back to revision 1"),
        "{deploy:#}"
    );
    // The old template is back (the undo's JSON patch restored revision 1's ReplicaSet).
    let deployment = example.deployment();
    assert_eq!(template_image(&deployment), OLD, "{deployment:#}");
    // baton's writes, after the test's own merge patch of the deadline: the image, then
    // the undo.
    let kinds: Vec<String> = example
        .cluster
        .writes("deployments", "app", "web")
        .into_iter()
        .skip(1)
        .map(|w| format!("{} {}", w.verb, w.content_type.unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        [
            "patch application/strategic-merge-patch+json",
            "patch application/json-patch+json"
        ],
        "{kinds:?}"
    );
    // The smoke check never ran against a release that was rolled back.
    assert_ne!(run.stage("smoke")["status"], "succeeded");
    assert_eq!(example.cluster.creates("jobs", "app"), 0);
}
