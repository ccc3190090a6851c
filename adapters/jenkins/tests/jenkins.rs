//! The Jenkins adapter against a fake controller that follows the remote API.

mod support;

use std::time::{Duration, Instant};

use baton_core::expr::to_val;
use baton_core::{
    AdapterError, AdapterKind, AttemptKey, ExternalState, TemplatedValue, WebhookRequest,
};
use serde_json::{Value, json};
use support::*;
use wiremock::ResponseTemplate;

fn key(stage: &str) -> AttemptKey {
    key_now(stage, 1)
}

fn succeeded() -> ExternalState {
    ExternalState::Succeeded { warnings: false }
}

#[tokio::test]
async fn happy_path_with_folders_and_parameters() {
    // Jenkins under /jenkins, writing its public name into its answers (a proxy in front).
    let jenkins = Jenkins::start_with(|c| {
        c.prefix = "/jenkins".into();
        c.public_root = Some("https://ci.example.invalid/jenkins/".into());
    })
    .await;
    jenkins
        .job("team/backend/deploy")
        .params(&["IMAGE", "DRY_RUN", "BATON_ATTEMPT"])
        .queued_for(2)
        .runs_for(2)
        .artifact("out/app.tar.gz", "…")
        .create();
    let ci = adapter(&jenkins, json!({}));
    let key = key("deploy");
    let mut stage = Stage::start(
        &ci,
        key.clone(),
        json!({"job": "team/backend/deploy", "parameters": {"IMAGE": "reg/app@sha256:ab12", "DRY_RUN": false}}),
    )
    .await
    .unwrap();
    assert_eq!(stage.external.id, "queue:800");
    assert_eq!(
        stage.external.url.as_deref(),
        Some(format!("{}queue/item/800/", jenkins.url()).as_str())
    );

    let done = stage.run_to_end().await;
    assert_eq!(done.state, succeeded());
    assert_eq!(
        stage.raws(),
        [
            "WaitingItem",
            "WaitingItem",
            "started",
            "building",
            "building",
            "SUCCESS"
        ]
    );
    assert_eq!(stage.external.id, "team/backend/deploy#1");
    // The link for people is Jenkins' own; every request went to the configured URL.
    assert_eq!(
        stage.external.url.as_deref(),
        Some("https://ci.example.invalid/jenkins/job/team/job/backend/job/deploy/1/")
    );
    assert!(
        jenkins
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/jenkins/"))
    );

    // One trigger, as a form, with the attempt key; an API token needs no crumb.
    let posts: Vec<_> = jenkins
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].path,
        "/jenkins/job/team/job/backend/job/deploy/buildWithParameters"
    );
    assert!(posts[0].body.contains("IMAGE=reg%2Fapp%40sha256%3Aab12"));
    assert!(posts[0].body.contains("DRY_RUN=false"));
    assert!(posts[0].body.contains(&format!(
        "BATON_ATTEMPT={}",
        key.as_str().replace('/', "%2F")
    )));
    assert_eq!(posts[0].crumb, None);
    assert_eq!(jenkins.count("GET", "crumbIssuer"), 0);

    let outputs = stage.outputs().await.unwrap();
    assert_eq!(outputs["number"], 1);
    assert_eq!(outputs["result"], "SUCCESS");
    assert_eq!(outputs["queue_id"], 800);
    assert_eq!(outputs["job"], "team/backend/deploy");
    assert_eq!(
        outputs["parameters"],
        json!({"IMAGE": "reg/app@sha256:ab12", "DRY_RUN": "false", "BATON_ATTEMPT": key.as_str()})
    );
    assert_eq!(
        outputs["artifacts"],
        json!([{"name": "app.tar.gz", "path": "out/app.tar.gz",
                "url": "https://ci.example.invalid/jenkins/job/team/job/backend/job/deploy/1/artifact/out/app.tar.gz"}])
    );

    let logs = ci.logs(&key, &stage.external).await.unwrap();
    assert_eq!(
        logs.text.as_deref(),
        Some("Started by user alice\nBuilding…\nFinished\n")
    );
    assert_eq!(
        logs.links[0].url,
        "https://ci.example.invalid/jenkins/job/team/job/backend/job/deploy/1/console"
    );
    // Finished: the plain log, not progressiveText.
    assert_eq!(jenkins.count("GET", "/1/consoleText"), 1);
}

#[tokio::test]
async fn a_job_without_parameters_is_started_with_build() {
    let jenkins = Jenkins::start().await;
    jenkins.job("lint").create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("lint"), json!({"job": "lint"}))
        .await
        .unwrap();
    assert_eq!(stage.run_to_end().await.state, succeeded());
    assert_eq!(jenkins.count("POST", "/job/lint/build?delay=0sec"), 1);
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 0);
}

#[tokio::test]
async fn multibranch_branch_names_are_double_encoded() {
    let jenkins = Jenkins::start().await;
    // A multibranch project stores branch `feature/foo` as the job `feature%2Ffoo`.
    jenkins
        .job("repo/feature%2Ffoo")
        .params(&["BATON_ATTEMPT"])
        .create();
    let ci = adapter(&jenkins, json!({}));
    for job in [json!("repo/feature%2Ffoo"), json!(["repo", "feature/foo"])] {
        let mut stage = Stage::start(&ci, key("branch"), json!({"job": job}))
            .await
            .unwrap();
        assert_eq!(stage.run_to_end().await.state, succeeded());
    }
    assert_eq!(
        jenkins.count("POST", "/job/repo/job/feature%252Ffoo/buildWithParameters"),
        2
    );
}

#[tokio::test]
async fn a_password_needs_a_crumb_and_its_session_cookie() {
    let jenkins = Jenkins::start().await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();

    // The controller refuses a POST with a password but no crumb, as Jenkins does.
    let raw = reqwest::Client::new()
        .post(format!("{}job/deploy/buildWithParameters", jenkins.url()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 403);
    assert!(raw.text().await.unwrap().contains("No valid crumb"));

    // baton fetches a crumb and keeps the session cookie for the POST.
    let ci = adapter(
        &jenkins,
        json!({"token": null, "password": {"env": "JENKINS_PASSWORD"}}),
    );
    let mut stage = Stage::start(&ci, key("deploy"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(stage.run_to_end().await.state, succeeded());
    let post = jenkins
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.contains("buildWithParameters") && r.crumb.is_some())
        .expect("a POST with a crumb");
    assert!(post.cookie.unwrap().contains("JSESSIONID.7d5c1a2b="));
    assert_eq!(jenkins.count("GET", "crumbIssuer"), 1);

    // The crumb is reused for the next POST of the same client (its session lasts).
    stage.cancel().await.unwrap();
    let mut second = Stage::start(&ci, key("deploy"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(second.run_to_end().await.state, succeeded());
    assert_eq!(jenkins.count("GET", "crumbIssuer"), 1);
}

#[tokio::test]
async fn no_valid_crumb_fails_saying_to_use_an_api_token() {
    // A proxy in front of Jenkins drops the session cookie, so no crumb is ever valid.
    let jenkins = Jenkins::start_with(|c| c.strip_session_cookie = true).await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    let ci = adapter(
        &jenkins,
        json!({"token": null, "password": {"env": "JENKINS_PASSWORD"}}),
    );
    let err = Stage::start(&ci, key("deploy"), json!({"job": "deploy"}))
        .await
        .err()
        .unwrap();
    let AdapterError::Auth(message) = err else {
        panic!("{err:?}")
    };
    assert!(message.contains("no valid crumb"), "{message}");
    assert!(message.contains("give an API token"), "{message}");
    // It tried once more with a fresh crumb before giving up; nothing was queued.
    assert_eq!(jenkins.count("GET", "crumbIssuer"), 2);
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 2);
    assert!(jenkins.items().is_empty());
}

#[tokio::test]
async fn refusals_say_what_to_fix() {
    let jenkins = Jenkins::start().await;
    jenkins.job("team/deploy").params(&["IMAGE"]).create();
    jenkins.job("old").disabled().create();

    let wrong = adapter(&jenkins, json!({"token": {"env": "WRONG"}}));
    let err = Stage::start(&wrong, key("d"), json!({"job": "team/deploy"}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::Auth(m) if m.contains("user `alice`") && m.contains("`token`")),
        "{err:?}"
    );

    let anonymous = adapter(&jenkins, json!({"user": null, "token": null}));
    let err = Stage::start(&anonymous, key("d"), json!({"job": "team/deploy"}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::Auth(m) if m.contains("anonymous") && m.contains("`user` and `token`")),
        "{err:?}"
    );

    let ci = adapter(&jenkins, json!({}));
    let err = Stage::start(&ci, key("d"), json!({"job": "team/deplyo"}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::NotFound(m) if m.contains("no job `team/deplyo`") && m.contains("check `job`")),
        "{err:?}"
    );
    let err = Stage::start(&ci, key("d"), json!({"job": "team"}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("is a folder")),
        "{err:?}"
    );
    let err = Stage::start(&ci, key("d"), json!({"job": "old"}))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("disabled")),
        "{err:?}"
    );
    let err = Stage::start(
        &ci,
        key("d"),
        json!({"job": "team/deploy", "parameters": {"IMAGE": "x", "TAG": "y"}}),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("TAG") && m.contains("it defines IMAGE")),
        "{err:?}"
    );
    let err = Stage::start(&ci, key("d"), json!({"job": 7}))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AdapterError::Invalid(_)), "{err:?}");
    // Nothing was triggered by any of these.
    assert_eq!(jenkins.count("POST", ""), 0);
}

#[tokio::test]
async fn a_queue_item_cancelled_in_jenkins_cancels_the_stage() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(10)
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Queued);
    jenkins.cancel_item(800);
    let done = stage.poll().await.unwrap();
    assert_eq!(done.state, ExternalState::Cancelled);
    assert_eq!(done.raw.as_deref(), Some("cancelled"));
    assert!(
        done.message
            .unwrap()
            .contains("cancelled before it started")
    );
    let outputs = stage.outputs().await.unwrap();
    assert_eq!(
        Value::Object(outputs),
        json!({"job": "deploy", "queue_id": 800})
    );
}

#[tokio::test]
async fn a_queue_item_that_404s_after_its_build_started_is_found_by_queue_id() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(10)
        .runs_for(1)
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Queued);
    // baton was away for a while: the build started and Jenkins forgot the left item.
    jenkins.start_item(800);
    jenkins.forget_item(800);
    let found = stage.poll().await.unwrap();
    assert_eq!(found.state, ExternalState::Running);
    assert!(
        found.message.unwrap().contains("came from it"),
        "{:?}",
        stage.polls
    );
    assert_eq!(stage.external.id, "deploy#1");
    assert!(jenkins.count("GET", "/job/deploy/api/json?tree=builds") >= 1);
    assert_eq!(stage.run_to_end().await.state, succeeded());
}

#[tokio::test]
async fn a_missing_queue_item_is_looked_for_a_bounded_time() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(10)
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    // A 404 right after the trigger: not terminal, looked at again.
    jenkins.forget_item(800);
    let first = stage.poll().await.unwrap();
    assert_eq!(first.state, ExternalState::Queued);
    assert_eq!(first.raw.as_deref(), Some("vanished"));
    // Still nothing long after: the attempt errs, saying why.
    stage.external.data["missing_since_ms"] = json!(1);
    let done = stage.poll().await.unwrap();
    assert_eq!(done.state, ExternalState::Errored);
    assert!(done.message.unwrap().contains("probably cancelled"));
}

#[tokio::test]
async fn unstable_fails_by_default_and_passes_with_warnings_when_configured() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("tests")
        .params(&["BATON_ATTEMPT"])
        .result("UNSTABLE")
        .create();

    let strict = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&strict, key("t"), json!({"job": "tests"}))
        .await
        .unwrap();
    let done = stage.run_to_end().await;
    assert_eq!(done.state, ExternalState::Failed);
    assert_eq!(done.raw.as_deref(), Some("UNSTABLE"));
    assert!(done.message.unwrap().contains("unstable = \"success\""));

    let lenient = adapter(&jenkins, json!({"unstable": "success"}));
    let mut stage = Stage::start(&lenient, key("t"), json!({"job": "tests"}))
        .await
        .unwrap();
    assert_eq!(
        stage.run_to_end().await.state,
        ExternalState::Succeeded { warnings: true }
    );

    // A stage may decide for itself.
    let mut stage = Stage::start(
        &strict,
        key("t"),
        json!({"job": "tests", "unstable": "success"}),
    )
    .await
    .unwrap();
    assert_eq!(
        stage.run_to_end().await.state,
        ExternalState::Succeeded { warnings: true }
    );
}

#[tokio::test]
async fn other_results_map_and_unknown_ones_never_end_the_stage() {
    let jenkins = Jenkins::start().await;
    for (job, result) in [("a", "ABORTED"), ("n", "NOT_BUILT"), ("f", "FAILURE")] {
        jenkins.job(job).result(result).create();
    }
    jenkins.job("odd").result("SUPERSEDED").create();
    jenkins.job("null").no_result().create();
    let ci = adapter(&jenkins, json!({}));
    for (job, state) in [
        ("a", ExternalState::Cancelled),
        ("n", ExternalState::Skipped),
        ("f", ExternalState::Failed),
    ] {
        let mut stage = Stage::start(&ci, key(job), json!({"job": job}))
            .await
            .unwrap();
        assert_eq!(stage.run_to_end().await.state, state, "{job}");
    }
    for (job, raw) in [("odd", "SUPERSEDED"), ("null", "null")] {
        let mut stage = Stage::start(&ci, key(job), json!({"job": job}))
            .await
            .unwrap();
        let mut last = None;
        for _ in 0..8 {
            last = Some(stage.poll().await.unwrap());
        }
        let last = last.unwrap();
        assert_eq!(last.state, ExternalState::Unknown(raw.into()), "{job}");
        assert!(!last.state.is_terminal());
        assert!(last.next_poll.is_some());
        assert!(last.message.unwrap().contains("polling again"));
    }
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried_with_backoff() {
    let jenkins = Jenkins::start().await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    let ci = adapter(&jenkins, json!({}));

    // Two 503s on the job read, then the real answer.
    jenkins.fault("GET", "/job/deploy/api/json", 2, ResponseTemplate::new(503));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(jenkins.count("GET", "/job/deploy/api/json?tree=_class"), 3);

    // A 429 asking to wait a second is honoured.
    jenkins.fault(
        "GET",
        "/queue/item/800/",
        1,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
    );
    let began = Instant::now();
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Queued);
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );

    // Past the retries, a transient error: the engine polls again later.
    jenkins.fault("GET", "/queue/item/800/", 4, ResponseTemplate::new(502));
    let err = stage.poll().await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Transient(m) if m.contains("502") && m.contains("tried 4 times")),
        "{err:?}"
    );
    // A Retry-After longer than baton waits within a call ends the call at once.
    jenkins.fault(
        "GET",
        "/queue/item/800/",
        1,
        ResponseTemplate::new(429).insert_header("Retry-After", "3600"),
    );
    let err = stage.poll().await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Transient(m) if m.contains("Retry-After")),
        "{err:?}"
    );
    assert_eq!(stage.run_to_end().await.state, succeeded());
}

#[tokio::test]
async fn garbage_answers_and_odd_statuses_are_errors_not_panics() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .runs_for(3)
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    for template in [
        ResponseTemplate::new(200).set_body_string("<html>not json</html>"),
        ResponseTemplate::new(200).set_body_string("{\"executable\": 5, \"cancelled\": \"yes\"}"),
        ResponseTemplate::new(200).set_body_bytes(vec![0xff, 0x00, 0x13]),
    ] {
        jenkins.fault("GET", "/queue/item/800/", 1, template);
        let err = stage.poll().await.unwrap_err();
        assert!(matches!(err, AdapterError::Protocol(_)), "{err:?}");
    }
    jenkins.fault("GET", "/queue/item/800/", 1, ResponseTemplate::new(418));
    let err = stage.poll().await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Protocol(m) if m.contains("418")),
        "{err:?}"
    );
    // A redirect means a wrong root URL: said so, and never followed.
    jenkins.fault(
        "GET",
        "/queue/item/800/",
        1,
        ResponseTemplate::new(302).insert_header("Location", "https://login.example.invalid/"),
    );
    let err = stage.poll().await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Protocol(m) if m.contains("root URL")),
        "{err:?}"
    );
    assert_eq!(stage.run_to_end().await.state, succeeded());
}

#[tokio::test]
async fn requests_time_out() {
    let jenkins = Jenkins::start().await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    let ci = adapter(&jenkins, json!({"request_timeout": "300ms"}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    jenkins.fault(
        "GET",
        "/queue/item/800/",
        1,
        ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
    );
    let began = Instant::now();
    let err = stage.poll().await.unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(
        matches!(&err, AdapterError::Transient(m) if m.contains("did not answer within 300ms")),
        "{err:?}"
    );
    assert_eq!(stage.run_to_end().await.state, succeeded());
}

#[tokio::test]
async fn a_trigger_whose_answer_is_lost_is_found_not_sent_again() {
    let jenkins = Jenkins::start().await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    let ci = adapter(&jenkins, json!({"request_timeout": "300ms"}));
    let key = key("d");
    let input = json!({"job": "deploy"});

    // Jenkins queues the build but its answer never arrives in time.
    jenkins.slow_answer("POST", "buildWithParameters", Duration::from_secs(3));
    let err = Stage::start(&ci, key.clone(), input.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, AdapterError::Transient(m) if m.contains("looks for it before trying again")),
        "{err:?}"
    );
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 1);

    // The engine asks `find` before starting again: the queued item is adopted.
    let found = ci.find(&key, &input).await.unwrap().expect("found");
    assert_eq!(found.id, "queue:800");
    let mut stage = Stage::adopt(&ci, key, input, found);
    assert_eq!(stage.run_to_end().await.state, succeeded());
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 1);

    // A 5xx on the trigger is not retried blindly either.
    jenkins.fault("POST", "buildWithParameters", 1, ResponseTemplate::new(502));
    let err = Stage::start(&ci, key_now("d", 2), json!({"job": "deploy"}))
        .await
        .err()
        .unwrap();
    assert!(err.is_transient());
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 2);
}

#[tokio::test]
async fn a_property_file_feeds_the_next_stage() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("build")
        .params(&["SHA", "BATON_ATTEMPT"])
        .artifact(
            "out/build.properties",
            "# computed by the job\nIMAGE=reg/app@sha256:ab12\nversion = 1.4.2\n",
        )
        .artifact("out/meta.json", "{\"tests\": 311, \"flaky\": [\"t1\"]}")
        .create();
    jenkins
        .job("deploy")
        .params(&["IMAGE", "VERSION", "BATON_ATTEMPT"])
        .create();
    let ci = adapter(&jenkins, json!({}));

    let mut build = Stage::start(
        &ci,
        key("build"),
        json!({"job": "build", "parameters": {"SHA": "9f1c"}, "properties_artifact": "out/build.properties"}),
    )
    .await
    .unwrap();
    assert_eq!(build.run_to_end().await.state, succeeded());
    let outputs = build.outputs().await.unwrap();
    assert_eq!(
        outputs["properties"],
        json!({"IMAGE": "reg/app@sha256:ab12", "version": "1.4.2"})
    );

    // The next stage's `with:` reads them through a template, as the engine renders it.
    let with = json!({
        "job": "deploy",
        "parameters": {
            "IMAGE": "${{ .stages.build.outputs.properties.IMAGE }}",
            "VERSION": "v${{ .stages.build.outputs.properties.version }}",
        }
    });
    assert!(
        baton_adapter_jenkins::JenkinsKind::default()
            .validate_stage(&with)
            .is_empty()
    );
    let context = json!({"stages": {"build": {"outputs": outputs}}});
    let rendered = TemplatedValue::compile(&with)
        .unwrap()
        .render(&to_val(&context))
        .unwrap();
    let mut deploy = Stage::start(&ci, key("deploy"), rendered).await.unwrap();
    assert_eq!(deploy.run_to_end().await.state, succeeded());
    let post = jenkins
        .requests()
        .into_iter()
        .find(|r| r.path == "/job/deploy/buildWithParameters")
        .unwrap();
    assert!(
        post.body.contains("IMAGE=reg%2Fapp%40sha256%3Aab12"),
        "{}",
        post.body
    );
    assert!(post.body.contains("VERSION=v1.4.2"), "{}", post.body);

    // A JSON file keeps its types; it may be named by its file name alone.
    let mut again = Stage::start(
        &ci,
        key("build"),
        json!({"job": "build", "properties_artifact": "meta.json"}),
    )
    .await
    .unwrap();
    again.run_to_end().await;
    assert_eq!(
        again.outputs().await.unwrap()["properties"],
        json!({"tests": 311, "flaky": ["t1"]})
    );

    // A successful build without the file fails the outputs, saying what was archived.
    let mut missing = Stage::start(
        &ci,
        key("build"),
        json!({"job": "build", "properties_artifact": "out/result.properties"}),
    )
    .await
    .unwrap();
    missing.run_to_end().await;
    let err = missing.outputs().await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("out/build.properties, out/meta.json")),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancel_in_the_queue() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(100)
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Queued);
    stage.cancel().await.unwrap();
    assert_eq!(jenkins.count("POST", "/queue/cancelItem?id=800"), 1);
    assert_eq!(jenkins.item(800).state, ItemState::Cancelled);
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Cancelled);
    // Cancelling again is fine and changes nothing.
    stage.cancel().await.unwrap();
    assert!(jenkins.builds("deploy").is_empty());
}

#[tokio::test]
async fn cancel_while_building() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(0)
        .forever()
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Running);
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Running);
    stage.cancel().await.unwrap();
    let done = stage.poll().await.unwrap();
    assert_eq!(done.state, ExternalState::Cancelled);
    assert_eq!(done.raw.as_deref(), Some("ABORTED"));
    assert_eq!(jenkins.builds("deploy")[0].steps, ["stop"]);
    // The escalation sees the build stopped and does nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jenkins.builds("deploy")[0].steps, ["stop"]);
    // A cancel of finished work sends nothing.
    stage.cancel().await.unwrap();
    assert_eq!(jenkins.count("POST", "/stop"), 1);
}

#[tokio::test]
async fn a_build_that_ignores_stop_is_terminated_then_killed() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("pipeline")
        .pipeline()
        .params(&["BATON_ATTEMPT"])
        .queued_for(0)
        .forever()
        .stubborn(Stubborn::UntilKill)
        .create();
    let ci = adapter(&jenkins, json!({"stop_grace": "1s"}));
    let mut stage = Stage::start(&ci, key("p"), json!({"job": "pipeline"}))
        .await
        .unwrap();
    stage.poll().await.unwrap();
    let began = Instant::now();
    stage.cancel().await.unwrap();
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "cancel returns after the stop"
    );
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Running);
    let deadline = Instant::now() + Duration::from_secs(15);
    while jenkins.builds("pipeline")[0].building {
        assert!(Instant::now() < deadline, "never killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = began.elapsed();
    assert_eq!(
        jenkins.builds("pipeline")[0].steps,
        ["stop", "term", "kill"]
    );
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(stage.poll().await.unwrap().state, ExternalState::Cancelled);
}

#[tokio::test]
async fn crash_recovery_finds_the_build_by_baton_attempt() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("team/deploy")
        .params(&["IMAGE", "BATON_ATTEMPT"])
        .queued_for(1)
        .runs_for(1)
        .create();
    let input = json!({"job": "team/deploy", "parameters": {"IMAGE": "a"}});
    let key = key("deploy");
    // Another attempt with the same parameters, to be told apart.
    let other = key_now("deploy", 2);
    {
        let before_crash = adapter(&jenkins, json!({}));
        Stage::start(&before_crash, other.clone(), input.clone())
            .await
            .unwrap();
        Stage::start(&before_crash, key.clone(), input.clone())
            .await
            .unwrap();
        // baton dies before storing the reference.
    }
    let after = adapter(&jenkins, json!({}));
    let never = key_now("never", 1);
    assert_eq!(after.find(&never, &input).await.unwrap(), None);

    // Still queued: the queue item is found.
    let found = after.find(&key, &input).await.unwrap().expect("found");
    assert_eq!(found.id, "queue:801");

    // Started meanwhile: the build is found among the job's builds.
    jenkins.start_item(800);
    jenkins.start_item(801);
    let restarted_again = adapter(&jenkins, json!({}));
    let found = restarted_again
        .find(&key, &input)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, "team/deploy#2");
    let mut stage = Stage::adopt(&restarted_again, key.clone(), input.clone(), found);
    assert_eq!(stage.run_to_end().await.state, succeeded());
    assert_eq!(
        stage.outputs().await.unwrap()["parameters"]["BATON_ATTEMPT"],
        key.as_str()
    );
    assert_eq!(jenkins.count("POST", "buildWithParameters"), 2);
}

#[tokio::test]
async fn without_baton_attempt_find_falls_back_to_parameters_and_time() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("legacy")
        .params(&["IMAGE"])
        .queued_for(5)
        .create();
    let input = json!({"job": "legacy", "parameters": {"IMAGE": "a"}});

    // An old build with the same parameters, from before this run.
    let old = adapter(&jenkins, json!({}));
    Stage::start(&old, AttemptKey::new("r0", "x", 1), input.clone())
        .await
        .unwrap();
    jenkins
        .controller()
        .queue
        .get_mut(&800)
        .unwrap()
        .in_queue_since = 1_000;

    let key = key("legacy");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // In one process: the queue id it saw is enough.
    let ci = adapter(&jenkins, json!({}));
    Stage::start(&ci, key.clone(), input.clone()).await.unwrap();
    assert_eq!(
        ci.find(&key, &input).await.unwrap().unwrap().id,
        "queue:801"
    );

    // After a restart: same parameters, queued after the run began (its UUIDv7 id).
    let restarted = adapter(&jenkins, json!({}));
    assert_eq!(
        restarted.find(&key, &input).await.unwrap().unwrap().id,
        "queue:801"
    );
    // Different parameters do not match; a key whose run id has no time finds nothing.
    assert_eq!(
        restarted
            .find(
                &key_now("legacy", 1),
                &json!({"job": "legacy", "parameters": {"IMAGE": "b"}})
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        restarted
            .find(&AttemptKey::new("r9", "legacy", 1), &input)
            .await
            .unwrap(),
        None
    );
    // Two candidates after another restart: baton refuses to guess.
    Stage::start(&old, key_now("other", 1), input.clone())
        .await
        .unwrap();
    let restarted_again = adapter(&jenkins, json!({}));
    let err = restarted_again.find(&key, &input).await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("cannot tell") && m.contains("BATON_ATTEMPT")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_trigger_without_location_is_found_by_correlation() {
    let jenkins = Jenkins::start_with(|c| c.omit_location = true).await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    assert!(stage.external.id.starts_with("searching:"));
    let first = stage.poll().await.unwrap();
    assert_eq!(first.state, ExternalState::Queued);
    assert_eq!(stage.external.id, "queue:800");
    assert_eq!(stage.run_to_end().await.state, succeeded());
}

#[tokio::test]
async fn logs_stream_through_progressive_text() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("deploy")
        .params(&["BATON_ATTEMPT"])
        .queued_for(0)
        .forever()
        .log("line one\nline two\n")
        .create();
    let ci = adapter(&jenkins, json!({}));
    let mut stage = Stage::start(&ci, key("d"), json!({"job": "deploy"}))
        .await
        .unwrap();
    let queued_logs = ci.logs(&stage.key, &stage.external).await.unwrap();
    assert!(queued_logs.text.unwrap().contains("has not started"));
    stage.poll().await.unwrap();

    let logs = ci.logs(&stage.key, &stage.external).await.unwrap();
    assert_eq!(logs.text.as_deref(), Some("line one\nline two\n"));
    assert_eq!(
        jenkins.count("GET", "/1/logText/progressiveText?start=0"),
        1
    );

    // Reading on from an offset, as a live view does.
    let direct = direct_adapter(&jenkins);
    let chunk = direct.read_log(&stage.external, 0).await.unwrap();
    assert_eq!((chunk.next, chunk.more), (18, true));
    let chunk = direct.read_log(&stage.external, 9).await.unwrap();
    assert_eq!(chunk.text, "line two\n");
    stage.cancel().await.unwrap();
    let chunk = direct.read_log(&stage.external, 18).await.unwrap();
    assert_eq!(
        (chunk.text.as_str(), chunk.next, chunk.more),
        ("", 18, false)
    );
}

fn direct_adapter(jenkins: &Jenkins) -> baton_adapter_jenkins::JenkinsAdapter {
    let config =
        baton_adapter_jenkins::config::parse_instance(&json!({"url": jenkins.url()})).unwrap();
    baton_adapter_jenkins::JenkinsAdapter::new(
        "ci",
        &config,
        baton_adapter_jenkins::Credentials::Token {
            user: USER.into(),
            token: baton_core::Secret::new(TOKEN),
        },
        fast_retry(),
    )
    .unwrap()
}

#[tokio::test]
async fn completion_webhooks_name_the_attempt() {
    let jenkins = Jenkins::start().await;
    jenkins.job("deploy").params(&["BATON_ATTEMPT"]).create();
    jenkins.job("plain").create();
    let ci = adapter(&jenkins, json!({}));
    let key = key("d");
    let hook = |body: Value| {
        let body = body.to_string();
        ci.completion_webhook(&WebhookRequest {
            headers: &[("content-type".into(), "application/json".into())],
            body: body.as_bytes(),
        })
    };
    assert_eq!(
        hook(json!({"name": "deploy", "url": "job/deploy/", "build": {
            "full_url": format!("{}job/deploy/1/", jenkins.url()), "number": 1, "queue_id": 800,
            "phase": "COMPLETED", "status": "SUCCESS", "url": "job/deploy/1/",
            "parameters": {"BATON_ATTEMPT": key.as_str()}}}))
        .unwrap(),
        std::slice::from_ref(&key)
    );
    // A job without BATON_ATTEMPT: the queue id or build of an attempt being polled.
    let plain_key = key_now("plain", 1);
    let mut plain = Stage::start(&ci, plain_key.clone(), json!({"job": "plain"}))
        .await
        .unwrap();
    let queue_id = plain.external.data["queue"].as_u64().unwrap();
    assert_eq!(
        hook(json!({"build": {"phase": "STARTED", "queue_id": queue_id}})).unwrap(),
        std::slice::from_ref(&plain_key)
    );
    plain.poll().await.unwrap();
    plain.poll().await.unwrap();
    assert_eq!(
        hook(json!({"build": {"phase": "COMPLETED", "url": "job/plain/1/"}})).unwrap(),
        std::slice::from_ref(&plain_key)
    );
    plain.run_to_end().await;
    assert!(
        hook(json!({"build": {"url": "job/plain/1/"}}))
            .unwrap()
            .is_empty()
    );
    for garbage in ["", "null", "{\"build\": 3}", "<xml/>"] {
        let err = ci
            .completion_webhook(&WebhookRequest {
                headers: &[],
                body: garbage.as_bytes(),
            })
            .unwrap_err();
        assert!(
            matches!(err, AdapterError::Invalid(_)),
            "{garbage}: {err:?}"
        );
    }
}

#[tokio::test]
async fn poll_hints_grow_to_the_cap() {
    let jenkins = Jenkins::start().await;
    jenkins
        .job("slow")
        .params(&["BATON_ATTEMPT"])
        .queued_for(30)
        .create();
    let ci = adapter(&jenkins, json!({"poll_initial": "1s", "poll_max": "10s"}));
    let mut stage = Stage::start(&ci, key("s"), json!({"job": "slow"}))
        .await
        .unwrap();
    let mut hints = Vec::new();
    for _ in 0..12 {
        hints.push(stage.poll().await.unwrap().next_poll.unwrap());
    }
    assert!(hints[0] <= Duration::from_millis(1800), "{hints:?}");
    assert!(hints[0] >= Duration::from_millis(800), "{hints:?}");
    for late in &hints[8..] {
        assert!(
            *late >= Duration::from_secs(8) && *late <= Duration::from_secs(10),
            "{hints:?}"
        );
    }
    assert_eq!(stage.external.data["polls"], 12);
}
