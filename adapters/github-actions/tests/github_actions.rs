//! The github-actions adapter against the stateful fake GitHub: one story per awkward case.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::{AdapterError, ExternalState, SourceDelivery};
use serde_json::{Value, json};
use support::*;

const TITLE: &str = "${{ github.workflow }} ${{ inputs.baton_attempt }}";

fn with(workflow: &str) -> Value {
    json!({"workflow": workflow, "ref": "main"})
}

/// Waits past the moment right after a dispatch in which a poll sends nothing.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

const FAST: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_dispatched_run_succeeds_with_its_outputs_and_costs_few_requests() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .inputs(&["sha"])
            .jobs(&[("build", None, "compiling\n"), ("test", None, "testing\n")])
            .artifact("report", b"<html/>".to_vec())
            .outputs(&json!({"version": "1.2.3", "image": "reg/app@sha256:ab"})),
    );
    // Polls scaled down a hundredfold from the defaults (10 s growing to 30 s), on a run
    // lasting 1.2 s instead of 120 s.
    let adapter = gh.adapter(json!({"poll_initial": "100ms", "poll_max": "300ms"}));
    let key = key("build");
    let input = json!({"workflow": "ci.yml", "ref": "main", "inputs": {"sha": "abc123"}});
    let external = start(adapter.as_ref(), &key, input).await.unwrap();
    let run = gh.github.runs().pop().unwrap();
    assert_eq!(external.id, run.id.to_string());
    assert_eq!(run.inputs, *json!({"sha": "abc123"}).as_object().unwrap());
    assert_eq!(run.branch, "main");
    let (outcomes, external) = poll_to_end(
        adapter.as_ref(),
        &key,
        external,
        Duration::from_secs(1),
        LIMIT,
    )
    .await;
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    assert!(outcomes.iter().any(|o| o.state == ExternalState::Queued));
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(outputs["id"], json!(run.id.to_string()));
    assert_eq!(
        outputs["url"],
        json!(format!(
            "https://github.com/octo-org/app/actions/runs/{}",
            run.id
        ))
    );
    assert_eq!(outputs["run_number"], json!(1));
    assert_eq!(outputs["conclusion"], json!("success"));
    assert_eq!(
        outputs["jobs"],
        json!({"build": "success", "test": "success"})
    );
    assert_eq!(outputs["artifacts"], json!(["report", "baton-outputs"]));
    assert_eq!(outputs["version"], json!("1.2.3"));
    assert_eq!(outputs["image"], json!("reg/app@sha256:ab"));
    assert!(outputs["logs"]["test"].as_str().unwrap().contains("/job/"));
    // The artifact came from the other host, without the token.
    assert!(gh.github.refused_downloads().is_empty());
    assert_eq!(gh.github.downloads_served(), 1);
    let total = gh.github.meter().total();
    eprintln!("a 1.2 s run with hints of 100 ms growing to 300 ms: {total} requests");
    assert!(total <= 15, "a 1.2 s run cost {total} requests");
}

#[tokio::test]
async fn a_204_without_correlation_input_fails_saying_how_to_set_it_up() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    gh.github.dispatch_mode(DispatchMode::NoContent);
    let adapter = gh.adapter(json!({}));
    let error = start(adapter.as_ref(), &key("build"), with("ci.yml"))
        .await
        .unwrap_err();
    let AdapterError::Invalid(text) = error else {
        panic!("{error:?}")
    };
    for words in [
        "correlation_input",
        "workflow_dispatch:",
        "inputs:",
        "run-name:",
        "${{ inputs.baton_attempt }}",
    ] {
        assert!(text.contains(words), "{words} missing from: {text}");
    }
    assert!(!text.contains(TOKEN));
}

#[tokio::test]
async fn a_204_with_correlation_input_finds_the_run_by_its_title() {
    for mode in [DispatchMode::NoContent, DispatchMode::RejectDetails] {
        let gh = Gh::start().await;
        gh.add(
            Workflow::new("ci.yml")
                .inputs(&["baton_attempt"])
                .run_name(TITLE),
        );
        gh.add(
            Workflow::new("other.yml")
                .inputs(&["baton_attempt"])
                .run_name(TITLE),
        );
        gh.github.dispatch_mode(mode);
        let adapter = gh.adapter(json!({"correlation_input": "baton_attempt"}));
        // Another attempt's run of the same workflow is there too: titles tell them apart.
        let other = key("build");
        start(adapter.as_ref(), &other, with("ci.yml"))
            .await
            .unwrap();
        let key = key("build");
        let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
        assert_eq!(external.id, "searching");
        let (outcomes, external) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
        assert!(outcomes.last().unwrap().state.is_terminal());
        let mine = gh
            .github
            .runs()
            .into_iter()
            .find(|r| r.display_title.ends_with(key.as_str()))
            .unwrap();
        assert_eq!(external.id, mine.id.to_string(), "{mode:?}");
        assert_eq!(mine.inputs["baton_attempt"], json!(key.as_str()));
        assert_eq!(gh.github.runs_created("ci.yml"), 2);
    }
}

#[tokio::test]
async fn an_undeclared_input_fails_with_githubs_message() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml").inputs(&["sha"]));
    let adapter = gh.adapter(json!({}));
    let input = json!({"workflow": "ci.yml", "ref": "main", "inputs": {"colour": "red"}});
    let error = start(adapter.as_ref(), &key("build"), input)
        .await
        .unwrap_err();
    let AdapterError::Invalid(text) = error else {
        panic!("{error:?}")
    };
    assert!(
        text.contains("Unexpected inputs provided") && text.contains("colour"),
        "{text}"
    );
    assert_eq!(gh.github.runs_created("ci.yml"), 0);
    let missing = start(adapter.as_ref(), &key("build"), with("nope.yml"))
        .await
        .unwrap_err();
    assert!(matches!(missing, AdapterError::NotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn startup_failure_errors_saying_the_workflow_file_is_invalid() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .conclusion(Some("startup_failure"))
            .runs_for(Duration::ZERO),
    );
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    let last = outcomes.last().unwrap();
    assert_eq!(last.state, ExternalState::Errored);
    assert_eq!(last.raw.as_deref(), Some("completed/startup_failure"));
    assert!(
        last.message
            .as_deref()
            .unwrap()
            .contains("workflow file is invalid")
    );
}

#[tokio::test]
async fn waiting_for_an_approval_is_blocked_then_the_run_succeeds() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("deploy.yml").waiting_for(Duration::from_millis(800)));
    let adapter = gh.adapter(json!({}));
    let key = key("deploy");
    let external = start(adapter.as_ref(), &key, with("deploy.yml"))
        .await
        .unwrap();
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    let blocked = outcomes
        .iter()
        .find(|o| o.state == ExternalState::Blocked)
        .expect("a blocked poll");
    assert!(
        blocked
            .message
            .as_deref()
            .unwrap()
            .contains("waiting for an environment approval")
    );
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_poll_succeeds() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    settle().await;
    gh.github.fault_on("/runs/", 1, Fault::TooManyRequests(1));
    let before = Instant::now();
    let outcome = poll(adapter.as_ref(), &key, &external).await.unwrap();
    assert!(
        before.elapsed() >= Duration::from_secs(1),
        "retry-after was not honoured"
    );
    assert!(!outcome.state.is_terminal());
    // The dispatch, the 429 and the retry.
    assert_eq!(gh.github.meter().total(), 3);
}

#[tokio::test]
async fn a_secondary_limit_on_the_dispatch_waits_as_told_and_dispatches_once() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    let adapter = gh.adapter(json!({}));
    gh.github
        .fault_on("dispatches", 1, Fault::SecondaryLimit(1));
    let before = Instant::now();
    start(adapter.as_ref(), &key("build"), with("ci.yml"))
        .await
        .unwrap();
    assert!(before.elapsed() >= Duration::from_secs(1));
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    // A wait longer than baton waits within one call is a transient error saying so.
    gh.github
        .fault_on("dispatches", 1, Fault::SecondaryLimit(60));
    let error = start(adapter.as_ref(), &key("again"), with("ci.yml"))
        .await
        .unwrap_err();
    let AdapterError::Transient(text) = error else {
        panic!("{error:?}")
    };
    assert!(
        text.contains("secondary rate limit") && text.contains("1m"),
        "{text}"
    );
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
}

#[tokio::test]
async fn a_spent_rate_limit_is_waited_out_until_the_reset() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    gh.github.rate_limit(10, Duration::from_secs(3));
    let token = format!("{TOKEN}-spent-{}", gh.serving.url);
    gh.github.token(TOKEN_NAME, &token);
    // Someone else spends the window with the same token.
    let http = reqwest::Client::new();
    for _ in 0..10 {
        http.get(format!(
            "{}/repos/octo-org/app/actions/runs/1",
            gh.serving.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    }
    let adapter = gh.adapter_with_token(&token, json!({}));
    let before = Instant::now();
    start(adapter.as_ref(), &key("build"), with("ci.yml"))
        .await
        .unwrap();
    assert!(
        before.elapsed() >= Duration::from_millis(500),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    assert_eq!(gh.github.lowest_remaining(TOKEN_NAME), Some(0));
}

#[tokio::test]
async fn artifacts_and_logs_are_fetched_from_the_redirect_without_the_token() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .conclusion(Some("failure"))
            .jobs(&[
                ("build", Some("success"), "ok\n"),
                (
                    "test",
                    Some("failure"),
                    "running 3 tests\nassert failed: 2 != 3\n",
                ),
            ])
            .outputs(&json!({"coverage": 81})),
    );
    let adapter = gh.adapter(json!({}));
    let key = key("test");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let (outcomes, external) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    let last = outcomes.last().unwrap();
    assert_eq!(last.state, ExternalState::Failed);
    let message = last.message.as_deref().unwrap();
    assert!(
        message.contains("job `test` failed") && message.contains("assert failed: 2 != 3"),
        "{message}"
    );
    assert!(!message.contains("job `build` failed"));
    let logs = adapter.logs(&key, &external).await.unwrap();
    let names: Vec<_> = logs.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["run", "build", "test"]);
    assert!(logs.text.unwrap().contains("assert failed"));
    // A failed run's outputs name its jobs and carry what it uploaded.
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(
        outputs["jobs"],
        json!({"build": "success", "test": "failure"})
    );
    assert_eq!(outputs["coverage"], json!(81));
    assert!(gh.github.refused_downloads().is_empty());
    assert!(gh.github.downloads_served() >= 2);
}

#[tokio::test]
async fn an_unknown_status_or_conclusion_is_never_an_end() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("paused.yml")
            .status_while_running("paused")
            .runs_for(Duration::from_millis(600)),
    );
    gh.add(
        Workflow::new("odd.yml")
            .conclusion(Some("exploded"))
            .runs_for(Duration::ZERO),
    );
    let adapter = gh.adapter(json!({}));
    let key1 = key("paused");
    let external = start(adapter.as_ref(), &key1, with("paused.yml"))
        .await
        .unwrap();
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key1, external, FAST, LIMIT).await;
    assert!(
        outcomes
            .iter()
            .any(|o| o.state == ExternalState::Unknown("paused".into()))
    );
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    let key2 = key("odd");
    let external = start(adapter.as_ref(), &key2, with("odd.yml"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..5 {
        let outcome = poll(adapter.as_ref(), &key2, &external).await.unwrap();
        assert_eq!(
            outcome.state,
            ExternalState::Unknown("completed/exploded".into())
        );
        assert!(outcome.next_poll.is_some());
    }
}

#[tokio::test]
async fn a_stubborn_run_is_force_cancelled_after_stop_grace() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("long.yml")
            .runs_for(Duration::from_secs(300))
            .stubborn(),
    );
    let adapter = gh.adapter(json!({"stop_grace": "700ms"}));
    let key = key("long");
    let external = start(adapter.as_ref(), &key, with("long.yml"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    adapter.cancel(&key, &external).await.unwrap();
    let run = gh.github.runs().pop().unwrap();
    assert_eq!(
        (run.cancels, run.force_cancels, run.status.as_str()),
        (1, 0, "in_progress")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        gh.github.runs().pop().unwrap().force_cancels,
        0,
        "force-cancel before stop_grace"
    );
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    assert_eq!(outcomes.last().unwrap().state, ExternalState::Cancelled);
    assert_eq!(gh.github.runs().pop().unwrap().force_cancels, 1);
}

#[tokio::test]
async fn a_run_that_honours_the_cancel_is_not_force_cancelled() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("long.yml").runs_for(Duration::from_secs(300)));
    let adapter = gh.adapter(json!({"stop_grace": "500ms"}));
    let key = key("long");
    let external = start(adapter.as_ref(), &key, with("long.yml"))
        .await
        .unwrap();
    adapter.cancel(&key, &external).await.unwrap();
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    assert_eq!(outcomes.last().unwrap().state, ExternalState::Cancelled);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let run = gh.github.runs().pop().unwrap();
    assert_eq!((run.cancels, run.force_cancels), (1, 0));
}

#[tokio::test]
async fn cancelling_a_finished_run_is_not_an_error() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml").runs_for(Duration::ZERO));
    let adapter = gh.adapter(json!({"stop_grace": "200ms"}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let (outcomes, external) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    adapter.cancel(&key, &external).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let run = gh.github.runs().pop().unwrap();
    // GitHub answered 409; nothing was escalated, nothing changed.
    assert_eq!(
        (run.cancels, run.force_cancels, run.conclusion.as_deref()),
        (1, 0, Some("success"))
    );
}

#[tokio::test]
async fn a_lost_dispatch_answer_is_found_not_dispatched_again() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .inputs(&["baton_attempt"])
            .run_name(TITLE),
    );
    let config = json!({"correlation_input": "baton_attempt", "request_timeout": "500ms"});
    let adapter = gh.adapter(config.clone());
    // The dispatch lands but its answer comes too late.
    gh.github
        .fault_on("dispatches", 1, Fault::Delay(Duration::from_secs(2)));
    let key = key("build");
    let error = start(adapter.as_ref(), &key, with("ci.yml"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    // The engine retries the start: the run is found, not dispatched again.
    let again = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let run = gh.github.runs().pop().unwrap();
    assert_eq!(again.id, run.id.to_string());
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    // After a restart (a new adapter that saw nothing), `find` adopts it too.
    let restarted = gh.adapter(config);
    let found = restarted
        .find(&key, &with("ci.yml"))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, run.id.to_string());
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
}

#[tokio::test]
async fn a_start_dropped_after_its_dispatch_landed_is_adopted_by_find() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .inputs(&["baton_attempt"])
            .run_name(TITLE),
    );
    let adapter = gh.adapter(json!({"correlation_input": "baton_attempt"}));
    gh.github
        .fault_on("dispatches", 1, Fault::Delay(Duration::from_secs(2)));
    let key = key("build");
    let task = {
        let (adapter, key) = (adapter.clone(), key.clone());
        tokio::spawn(async move { start(adapter.as_ref(), &key, with("ci.yml")).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    let found = adapter
        .find(&key, &with("ci.yml"))
        .await
        .unwrap()
        .expect("found");
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, found, FAST, LIMIT).await;
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    assert_eq!(gh.github.runs_created("ci.yml"), 1);
    // Without correlation_input, a process that did not dispatch finds nothing.
    let blind = gh.adapter(json!({}));
    assert_eq!(blind.find(&key, &with("ci.yml")).await.unwrap(), None);
}

#[tokio::test]
async fn a_github_app_renews_its_installation_token() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml").runs_for(Duration::from_secs(3)));
    gh.github
        .app(42, TEST_APP_PUBLIC_KEY, Duration::from_secs(2));
    let adapter = gh.adapter(json!({
        "token": null,
        "app": {"id": 42, "installation": 7, "key": {"file": "app.pem"}},
    }));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    assert_eq!(gh.github.meter().by_credential("jwt"), 1);
    let (outcomes, external) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    assert_eq!(
        outcomes.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    // A 2 s token over a 3 s run: renewed ahead of its expiry, never refused.
    let fetched = gh.github.meter().by_credential("jwt");
    assert!(fetched >= 2, "{fetched}");
    // A token revoked early: one 401, one renewal, and the call goes through.
    gh.github.revoke_installation_tokens();
    adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(gh.github.meter().by_credential("jwt"), fetched + 1);
    assert!(gh.github.meter().by_credential("app:7") > 3);
}

#[tokio::test]
async fn an_app_key_that_is_not_the_apps_fails_as_auth() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    gh.github
        .app(43, TEST_APP_PUBLIC_KEY, Duration::from_secs(60));
    let adapter = gh.adapter(json!({
        "token": null,
        "app": {"id": 42, "installation": 7, "key": {"file": "app.pem"}},
    }));
    let error = start(adapter.as_ref(), &key("build"), with("ci.yml"))
        .await
        .unwrap_err();
    assert!(matches!(error, AdapterError::Auth(_)), "{error:?}");
}

#[tokio::test]
async fn garbage_json_fails_the_poll_visibly() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    settle().await;
    gh.github.fault_on("/runs/", 1, Fault::Garbage);
    let error = poll(adapter.as_ref(), &key, &external).await.unwrap_err();
    let AdapterError::Protocol(text) = error else {
        panic!("{error:?}")
    };
    assert!(
        text.contains("not the JSON") && text.contains("unicorn"),
        "{text}"
    );
    poll(adapter.as_ref(), &key, &external).await.unwrap();
}

#[tokio::test]
async fn a_slow_answer_is_a_transient_timeout() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    let adapter = gh.adapter(json!({"request_timeout": "300ms"}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    settle().await;
    gh.github
        .fault_on("/runs/", 1, Fault::Delay(Duration::from_secs(2)));
    let error = poll(adapter.as_ref(), &key, &external).await.unwrap_err();
    let AdapterError::Transient(text) = error else {
        panic!("{error:?}")
    };
    assert!(text.contains("did not answer within 300ms"), "{text}");
}

#[tokio::test]
async fn server_errors_are_retried_then_transient() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml"));
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    settle().await;
    gh.github.fault_on("/runs/", 2, Fault::ServerError);
    poll(adapter.as_ref(), &key, &external).await.unwrap();
    gh.github.fault_on("/runs/", 4, Fault::ServerError);
    let error = poll(adapter.as_ref(), &key, &external).await.unwrap_err();
    assert!(
        matches!(&error, AdapterError::Transient(t) if t.contains("502")),
        "{error:?}"
    );
    // A 5xx on a dispatch is not retried: GitHub may have acted on it.
    gh.github.fault_on("dispatches", 1, Fault::ServerError);
    let error = start(adapter.as_ref(), &support::key("again"), with("ci.yml"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(gh.github.meter().total(), 1 + 3 + 4 + 1);
}

#[tokio::test]
async fn workflow_run_deliveries_name_the_attempt() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .inputs(&["baton_attempt"])
            .run_name(TITLE),
    );
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    // Without correlation_input: the run id is what ties the delivery to the attempt.
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let run: u64 = external.id.parse().unwrap();
    let body = gh.github.workflow_run_delivery(run, "completed");
    let delivery = |kind, event, body| SourceDelivery {
        source: "gh",
        kind,
        event,
        body,
    };
    assert_eq!(
        adapter.source_delivery(&delivery("github", "workflow_run", &body)),
        std::slice::from_ref(&key)
    );
    assert!(
        adapter
            .source_delivery(&delivery("github", "push", &body))
            .is_empty()
    );
    assert!(
        adapter
            .source_delivery(&delivery("gitlab", "workflow_run", &body))
            .is_empty()
    );
    assert!(
        adapter
            .source_delivery(&delivery("github", "workflow_run", "not json"))
            .is_empty()
    );
    // A run this process never saw, whose title holds an attempt key.
    let mut foreign: Value = serde_json::from_str(&body).unwrap();
    foreign["workflow_run"]["id"] = json!(1);
    foreign["workflow_run"]["display_title"] = json!("ci r9/deploy/2");
    let foreign = foreign.to_string();
    assert_eq!(
        adapter.source_delivery(&delivery("github", "workflow_run", &foreign)),
        [baton_core::AttemptKey::new("r9", "deploy", 2)]
    );
}

/// 100 stages on one token whose window is 300 requests every 3 s (a hundredth of
/// GitHub's 5,000 an hour, at a similar ratio of stages to budget as 500 stages on a real
/// token): polls stretch, the reserve holds, and the token is never spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_stages_never_spend_a_shared_token() {
    let gh = Gh::start().await;
    gh.add(
        Workflow::new("ci.yml")
            .queued_for(Duration::from_millis(500))
            .runs_for(Duration::from_secs(3)),
    );
    gh.github
        .rate_limit(300, Duration::from_secs(3))
        .etags(false);
    let token = format!("{TOKEN}-shared-{}", gh.serving.url);
    gh.github.token("shared", &token);
    // Two adapter instances on the same token share one budget.
    let adapters = [
        gh.adapter_with_token(&token, json!({"poll_initial": "100ms", "poll_max": "1s"})),
        gh.adapter_with_token(&token, json!({"poll_initial": "100ms", "poll_max": "1s"})),
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let adapter = adapters[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let key = key(&format!("s{i}"));
            let external = loop {
                match start(adapter.as_ref(), &key, with("ci.yml")).await {
                    Ok(e) => break e,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            };
            // The engine follows the hints (up to an hour); no cap here.
            let (outcomes, external) = poll_to_end(
                adapter.as_ref(),
                &key,
                external,
                Duration::from_secs(3600),
                Duration::from_secs(90),
            )
            .await;
            assert_eq!(
                outcomes.last().unwrap().state,
                ExternalState::Succeeded { warnings: false }
            );
            loop {
                match adapter.outputs(&key, &external).await {
                    Ok(o) => break o,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let lowest = gh.github.lowest_remaining("shared").unwrap();
    let used = gh.github.meter().by_credential("shared");
    eprintln!(
        "100 stages: {used} requests in {:?}, lowest remaining {lowest}",
        started.elapsed()
    );
    assert!(lowest > 0, "the shared token was spent");
    assert_eq!(gh.github.runs_created("ci.yml"), 100);
    let _ = Arc::strong_count(&adapters[0]);
}

#[tokio::test]
async fn the_poll_right_after_a_dispatch_sends_nothing_and_hints_then_grow() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("long.yml").queued_for(Duration::from_secs(60)));
    let adapter = gh.adapter(json!({"poll_initial": "100ms", "poll_max": "10s"}));
    let key = key("long");
    let external = start(adapter.as_ref(), &key, with("long.yml"))
        .await
        .unwrap();
    let first = poll(adapter.as_ref(), &key, &external).await.unwrap();
    assert_eq!(first.raw.as_deref(), Some("dispatched"));
    assert_eq!(
        gh.github.meter().total(),
        1,
        "the first poll sent a request"
    );
    settle().await;
    let mut hints = Vec::new();
    for _ in 0..4 {
        let outcome = poll(adapter.as_ref(), &key, &external).await.unwrap();
        assert_eq!(outcome.state, ExternalState::Queued);
        hints.push(outcome.next_poll.unwrap());
    }
    assert_eq!(gh.github.meter().total(), 5);
    // 100 ms × 1.5^n from the second poll on (the first counted), each ×0.8 to ×1.2.
    let ms = |h: &Duration| h.as_millis();
    assert!((120..=180).contains(&ms(&hints[0])), "{hints:?}");
    assert!(ms(&hints[3]) > 2 * ms(&hints[0]), "{hints:?}");
}

#[tokio::test]
async fn at_the_reserve_a_poll_keeps_the_last_state_and_waits_for_the_reset() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("long.yml").runs_for(Duration::from_secs(60)));
    gh.github.rate_limit(20, Duration::from_secs(30));
    let adapter = gh.adapter(json!({}));
    let key = key("long");
    let external = start(adapter.as_ref(), &key, with("long.yml"))
        .await
        .unwrap();
    settle().await;
    let seen = poll(adapter.as_ref(), &key, &external).await.unwrap();
    // Someone else spends the window down to the reserve (5 requests).
    let token = format!("{TOKEN}-{}", gh.serving.url);
    let http = reqwest::Client::new();
    for _ in 0..14 {
        http.get(format!(
            "{}/repos/octo-org/app/actions/runs/1",
            gh.serving.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    }
    // One more answer tells the adapter where the window stands (a free 304).
    let _ = poll(adapter.as_ref(), &key, &external).await.unwrap();
    let before = gh.github.meter().total();
    let held = poll(adapter.as_ref(), &key, &external).await.unwrap();
    assert_eq!(
        gh.github.meter().total(),
        before,
        "a request went out at the reserve"
    );
    assert_eq!(held.state, seen.state);
    assert!(
        held.next_poll.unwrap() > Duration::from_secs(20),
        "{held:?}"
    );
}

#[tokio::test]
async fn a_run_a_204_never_named_fails_after_the_correlation_window() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml").inputs(&["baton_attempt"]));
    let adapter = gh.adapter(json!({"correlation_input": "baton_attempt"}));
    let key = key("build");
    let searching = |dispatched_ms: u128| baton_core::ExternalRef {
        id: "searching".into(),
        url: None,
        data: json!({"workflow": "ci.yml", "ref": "main", "dispatched_ms": dispatched_ms as u64}),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let fresh = poll(adapter.as_ref(), &key, &searching(now)).await.unwrap();
    assert_eq!(fresh.state, ExternalState::Queued);
    let late = poll(adapter.as_ref(), &key, &searching(now - 121_000))
        .await
        .unwrap_err();
    let AdapterError::Protocol(text) = late else {
        panic!("{late:?}")
    };
    assert!(
        text.contains("run-name") && text.contains("inputs.baton_attempt"),
        "{text}"
    );
}

#[tokio::test]
async fn a_failed_run_without_failed_jobs_says_only_that() {
    let gh = Gh::start().await;
    gh.add(Workflow::new("ci.yml").conclusion(Some("failure")).jobs(&[(
        "build",
        Some("success"),
        "ok\n",
    )]));
    let adapter = gh.adapter(json!({}));
    let key = key("build");
    let external = start(adapter.as_ref(), &key, with("ci.yml")).await.unwrap();
    let (outcomes, _) = poll_to_end(adapter.as_ref(), &key, external, FAST, LIMIT).await;
    let message = outcomes.last().unwrap().message.clone().unwrap();
    assert!(
        message.starts_with("run #1 the run failed: https://"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message:?}");
}
