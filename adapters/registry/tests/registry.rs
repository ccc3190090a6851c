//! The registry adapter against the real registry (distribution 2.8): images built with
//! umoci, pushed with skopeo, and every digest checked with `skopeo inspect --raw`.

mod support;

use std::time::Duration;

use baton_adapter_kit::harness::{expect_error, poll_once, poll_to_end, poll_until, start_request};
use baton_core::ExternalState;
use baton_core::{AttemptKey, Waker};
use serde_json::{Value, json};
use support::*;

/// Promotes `<repo>:v1` of the registry at `host` to `to` (`host:port/repo:tag`, this
/// registry or another that `to_creds` log in to), checks that every manifest at `to` (the
/// index and each child) has the bytes it has at the source, and returns the outputs.
async fn promote_index(
    adapter: &dyn baton_core::Adapter,
    (host, repo): (&str, &str),
    to: &str,
    (index, children): (&[u8], &[Child]),
    to_creds: Option<&str>,
) -> serde_json::Map<String, Value> {
    let outputs = succeeded(adapter, promote(&format!("{repo}:v1"), to)).await;
    assert_same_image(&format!("{host}/{repo}:v1"), to, children, to_creds);
    assert_eq!(outputs["digest"], json!(sha256(index)));
    outputs
}

/// Every manifest at `to` (the index and each child) has the bytes it has at `from`.
fn assert_same_image(from: &str, to: &str, children: &[Child], to_creds: Option<&str>) {
    assert_eq!(raw(from, None), raw(to, to_creds), "index bytes of {to}");
    let (to_repo, _) = to.rsplit_once(':').unwrap();
    let (from_repo, _) = from.rsplit_once(':').unwrap();
    for child in children {
        let at_source = raw(&format!("{from_repo}@{}", child.digest), None);
        let at_dest = raw(&format!("{to_repo}@{}", child.digest), to_creds);
        assert_eq!(at_source, at_dest, "child {}", child.platform);
        assert_eq!(sha256(&at_dest), child.digest);
    }
}

fn count(outputs: &serde_json::Map<String, Value>, key: &str) -> u64 {
    outputs[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {outputs:?}"))
}

#[tokio::test]
async fn promote_of_an_index_keeps_every_digest_within_and_across_repositories() {
    let url = open_url();
    let host = authority(&url);
    let dir = tempfile::tempdir().unwrap();
    let repo = unique("index");
    let (index, children) = push_index(dir.path(), &url, &repo, "v1");
    let adapter = adapter(json!({ "url": url }), &[]);

    // Within the repository: a new tag, nothing to copy but the index itself.
    let outputs = promote_index(
        adapter.as_ref(),
        (&host, &repo),
        &format!("{host}/{repo}:stable"),
        (&index, &children),
        None,
    )
    .await;
    assert_eq!(outputs["id"], outputs["digest"]);
    assert_eq!(outputs["media_type"], json!(OCI_INDEX));
    assert_eq!(
        outputs["platforms"],
        json!(["linux/amd64", "linux/arm64", "linux/arm/v7"])
    );
    assert_eq!(count(&outputs, "bytes_uploaded"), 0);
    assert_eq!(
        count(&outputs, "manifests_pushed"),
        1,
        "only the index: {outputs:?}"
    );
    assert_eq!(
        outputs["url"],
        json!(format!("{url}/v2/{repo}/manifests/{}", sha256(&index)))
    );

    // Across repositories: every blob mounted, every child pushed by digest, no upload.
    let other = unique("index-prod");
    let outputs = promote_index(
        adapter.as_ref(),
        (&host, &repo),
        &format!("{host}/{other}:stable"),
        (&index, &children),
        None,
    )
    .await;
    assert_eq!(count(&outputs, "bytes_uploaded"), 0, "{outputs:?}");
    assert_eq!(count(&outputs, "blobs_uploaded"), 0, "{outputs:?}");
    // Three configs and three layers.
    assert_eq!(count(&outputs, "blobs_mounted"), 6, "{outputs:?}");
    assert_eq!(count(&outputs, "manifests_pushed"), 4, "{outputs:?}");
    // `size`: the index, each child manifest, and each child's config and layer.
    let mut expected = index.len() as u64;
    for child in &children {
        let manifest: Value =
            serde_json::from_slice(&raw(&format!("{host}/{repo}@{}", child.digest), None)).unwrap();
        expected += child.size as u64 + manifest["config"]["size"].as_u64().unwrap();
        expected += manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(count(&outputs, "size"), expected);

    // Again: everything is there already, so nothing is mounted and only the tag is PUT.
    let again = succeeded(
        adapter.as_ref(),
        promote(&format!("{repo}:v1"), &format!("{other}:stable")),
    )
    .await;
    assert_eq!(again["digest"], outputs["digest"]);
    assert_eq!(
        (
            count(&again, "blobs_mounted"),
            count(&again, "manifests_pushed")
        ),
        (0, 1)
    );
}

#[tokio::test]
async fn promote_of_a_single_image_by_digest_and_inspect_of_its_platform() {
    let url = open_url();
    let host = authority(&url);
    let repo = pushed_image(&host, "single", "arm64", 4096);
    let manifest = raw(&format!("{host}/{repo}:v1"), None);
    let digest = sha256(&manifest);
    let adapter = adapter(json!({ "url": url }), &[]);

    let outputs = succeeded(adapter.as_ref(), inspect(&format!("{repo}:v1"))).await;
    assert_eq!(outputs["digest"], json!(digest));
    assert_eq!(outputs["media_type"], json!(OCI_MANIFEST));
    assert_eq!(outputs["platforms"], json!(["linux/arm64"]));
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let blobs =
        parsed["config"]["size"].as_u64().unwrap() + parsed["layers"][0]["size"].as_u64().unwrap();
    assert_eq!(count(&outputs, "size"), manifest.len() as u64 + blobs);

    let other = unique("single-prod");
    let outputs = succeeded(
        adapter.as_ref(),
        promote(&format!("{repo}@{digest}"), &format!("{other}:stable")),
    )
    .await;
    assert_eq!(raw(&format!("{host}/{other}:stable"), None), manifest);
    assert_eq!(
        (
            count(&outputs, "blobs_mounted"),
            count(&outputs, "bytes_uploaded")
        ),
        (2, 0)
    );
    // Again under another tag: both blobs are there already, so neither is touched.
    let again = succeeded(
        adapter.as_ref(),
        promote(&format!("{repo}:v1"), &format!("{other}:v1")),
    )
    .await;
    assert_eq!(
        (
            count(&again, "blobs_present"),
            count(&again, "blobs_mounted")
        ),
        (2, 0)
    );

    // A `to` digest that is not the source's is refused before anything is written.
    let wrong = format!("{other}@sha256:{}", "0".repeat(64));
    let message = failed(adapter.as_ref(), promote(&format!("{repo}:v1"), &wrong)).await;
    assert!(message.contains("never changes a digest"), "{message}");
}

#[tokio::test]
async fn promote_to_another_registry_streams_every_blob_and_keeps_every_digest() {
    let url = open_url();
    let host = authority(&url);
    let (adapter, auth_host, password) = adapter_with_destination(&url);
    let creds = format!("baton:{password}");
    let dir = tempfile::tempdir().unwrap();
    let repo = unique("cross");
    let (index, children) = push_index(dir.path(), &url, &repo, "v1");
    let outputs = promote_index(
        adapter.as_ref(),
        (&host, &repo),
        &format!("{auth_host}/{repo}:stable"),
        (&index, &children),
        Some(&creds),
    )
    .await;
    assert_eq!(
        outputs["image"],
        json!(format!("{auth_host}/{repo}:stable"))
    );
    assert_eq!(count(&outputs, "blobs_mounted"), 0);
    assert_eq!(count(&outputs, "blobs_uploaded"), 6);
    // Every blob's bytes went through once: the outputs' size less the manifests.
    let manifests: u64 = index.len() as u64 + children.iter().map(|c| c.size as u64).sum::<u64>();
    assert_eq!(
        count(&outputs, "bytes_uploaded"),
        count(&outputs, "size") - manifests
    );

    // A `to` in a registry that is not listed is refused at start.
    let key = key("unlisted");
    let error = adapter
        .start(&start_request(
            &key,
            promote(&format!("{repo}:v1"), "elsewhere.example.com/x:1"),
        ))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("destinations"), "{error}");
}

#[tokio::test]
async fn wrong_credentials_fail_the_stage_in_words() {
    let (auth_url, _) = auth_url_and_password();
    let adapter = adapter(
        json!({"url": auth_url, "username": "baton", "password": {"env": "PW"}}),
        &[("PW", "not-the-password")],
    );
    let message = failed(adapter.as_ref(), inspect("baton-test/any:v1")).await;
    // A wait fails too: wrong credentials never become right by waiting.
    let waited = failed(
        adapter.as_ref(),
        json!({"action": "wait", "image": "baton-test/any:v1"}),
    )
    .await;
    assert_eq!(waited, message);
    for needle in [auth_url.as_str(), "user `baton`", "refused", "401"] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    assert!(!message.contains("not-the-password"), "{message}");

    let anonymous = adapter_without_login(&auth_url);
    let message = failed(anonymous.as_ref(), inspect("baton-test/any:v1")).await;
    assert!(
        message.contains("set `username` and `password`"),
        "{message}"
    );
}

fn adapter_without_login(url: &str) -> std::sync::Arc<dyn baton_core::Adapter> {
    adapter(json!({ "url": url }), &[])
}

#[tokio::test]
async fn wait_backs_off_while_the_tag_is_missing_and_ends_when_it_is_pushed() {
    let url = open_url();
    let host = authority(&url);
    let repo = unique("wait");
    let adapter = adapter(
        json!({"url": url, "poll_initial": "1s", "poll_max": "4s"}),
        &[],
    );
    let key = key("wait");
    let mut external = adapter
        .start(&start_request(
            &key,
            json!({"action": "wait", "image": format!("{repo}:v1")}),
        ))
        .await
        .unwrap();
    let mut hints = Vec::new();
    for _ in 0..6 {
        let outcome = poll_once(adapter.as_ref(), &key, &mut external)
            .await
            .unwrap();
        assert_eq!(outcome.state, ExternalState::Running, "{outcome:?}");
        assert!(
            outcome
                .message
                .as_deref()
                .unwrap()
                .contains(&format!("{repo}:v1"))
        );
        hints.push(outcome.next_poll.unwrap());
    }
    assert!(hints[0] <= Duration::from_secs(1), "{hints:?}");
    assert!(
        hints[5] > hints[0] && hints[5] <= Duration::from_secs(4),
        "{hints:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let source = build_image(dir.path(), "v1", "linux", "amd64", 512);
    push(&source, &format!("{host}/{repo}:v1"), None, None);
    let seen = poll_until(
        adapter.as_ref(),
        &key,
        &mut external,
        (Duration::from_millis(50), Duration::from_secs(10)),
        |_| false,
    )
    .await;
    let last = seen.last().unwrap();
    assert!(
        matches!(last.state, ExternalState::Succeeded { .. }),
        "{last:?}"
    );
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(
        outputs["digest"],
        json!(sha256(&raw(&format!("{host}/{repo}:v1"), None)))
    );
}

#[tokio::test]
async fn accept_headers_keep_a_v2s2_digest_and_resolve_an_index() {
    let url = open_url();
    let host = authority(&url);
    let dir = tempfile::tempdir().unwrap();
    let repo = unique("v2s2");
    let source = build_image(dir.path(), "v1", "linux", "amd64", 512);
    push(&source, &format!("{host}/{repo}:v1"), Some("v2s2"), None);
    let manifest = raw(&format!("{host}/{repo}:v1"), None);
    let adapter = adapter(json!({ "url": url }), &[]);
    let outputs = succeeded(adapter.as_ref(), inspect(&format!("{repo}:v1"))).await;
    // Without the v2s2 type in Accept, distribution converts to schema 1: another digest.
    assert_eq!(outputs["digest"], json!(sha256(&manifest)));
    assert_eq!(outputs["media_type"], json!(DOCKER_MANIFEST));
    let schema1 = run("curl", &["-s", &format!("{url}/v2/{repo}/manifests/v1")]);
    assert_ne!(
        sha256(&schema1),
        sha256(&manifest),
        "the registry did not convert"
    );

    let index_repo = unique("accept-index");
    let (index, _) = push_index(dir.path(), &url, &index_repo, "v1");
    let outputs = succeeded(adapter.as_ref(), inspect(&format!("{index_repo}:v1"))).await;
    assert_eq!(outputs["digest"], json!(sha256(&index)));
    let bare = http_code(&[&format!("{url}/v2/{index_repo}/manifests/v1")]);
    assert_eq!(bare, "404", "without Accept an OCI index is 404");
}

#[tokio::test]
async fn a_missing_image_fails_inspect_and_promote_naming_it() {
    let url = open_url();
    let adapter = adapter(json!({ "url": url }), &[]);
    let repo = unique("missing");
    let message = failed(adapter.as_ref(), inspect(&format!("{repo}:v1"))).await;
    assert!(message.contains(&format!("{repo}:v1")), "{message}");
    let message = failed(
        adapter.as_ref(),
        promote(&format!("{repo}:v1"), &format!("{repo}:v2")),
    )
    .await;
    assert!(message.contains("nothing to promote"), "{message}");
}

#[tokio::test]
async fn a_cancelled_promote_stops_and_never_writes_the_tag() {
    let url = open_url();
    let host = authority(&url);
    let (adapter, auth_host, password) = adapter_with_destination(&url);
    // 20 MiB to stream to the other registry: the cancel comes while it is in flight.
    let repo = pushed_image(&host, "cancel", "amd64", 20 << 20);
    let key = key("cancel");
    let mut external = adapter
        .start(&start_request(
            &key,
            promote(&format!("{repo}:v1"), &format!("{auth_host}/{repo}:stable")),
        ))
        .await
        .unwrap();
    adapter.cancel(&key, &external).await.unwrap();
    let outcome = poll_once(adapter.as_ref(), &key, &mut external)
        .await
        .unwrap();
    assert_eq!(outcome.state, ExternalState::Cancelled, "{outcome:?}");
    // Had the copy gone on, the tag would be there by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tag = http_code(&[
        "-u",
        &format!("baton:{password}"),
        "-H",
        &format!("Accept: {OCI_MANIFEST}"),
        &format!("http://{auth_host}/v2/{repo}/manifests/stable"),
    ]);
    assert_eq!(tag, "404", "the cancelled promote wrote its tag");
    // Cancelling again, or polling, changes nothing.
    adapter.cancel(&key, &external).await.unwrap();
    let outcome = poll_once(adapter.as_ref(), &key, &mut external)
        .await
        .unwrap();
    assert_eq!(outcome.state, ExternalState::Cancelled);
}

#[tokio::test]
async fn after_a_restart_a_poll_takes_the_promote_up_from_the_stored_reference() {
    let url = open_url();
    let host = authority(&url);
    let repo = pushed_image(&host, "restart", "amd64", 1024);
    let before = adapter(json!({ "url": url }), &[]);
    let key = key("restart");
    let with = promote(&format!("{repo}:v1"), &format!("{repo}-prod:stable"));
    let stored = before
        .start(&start_request(&key, with.clone()))
        .await
        .unwrap();
    // The process dies: its copy stops wherever it was.
    before.cancel(&key, &stored).await.unwrap();
    drop(before);
    // The next process knows nothing: `find` says so, and a poll of the stored reference
    // makes the (idempotent) copy itself.
    let after = adapter(json!({ "url": url }), &[]);
    assert_eq!(after.find(&key, &with).await.unwrap(), None);
    let mut external = stored.clone();
    let last = poll_to_end(after.as_ref(), &key, &mut external).await;
    assert!(
        matches!(last.state, ExternalState::Succeeded { .. }),
        "{last:?}"
    );
    let outputs = after.outputs(&key, &external).await.unwrap();
    let digest = sha256(&raw(&format!("{host}/{repo}:v1"), None));
    assert_eq!(outputs["digest"], json!(digest));
    assert_eq!(
        raw(&format!("{host}/{repo}-prod:stable"), None),
        raw(&format!("{host}/{repo}:v1"), None)
    );
    // A third process reading outputs only describes the destination again.
    let third = adapter(json!({ "url": url }), &[]);
    let outputs = third.outputs(&key, &stored).await.unwrap();
    assert_eq!(outputs["digest"], json!(digest));
    assert_eq!(outputs["image"], json!(format!("{repo}-prod:stable")));
    assert!(outputs.get("bytes_uploaded").is_none(), "{outputs:?}");
}

#[tokio::test]
async fn a_finished_copy_wakes_the_engine_and_its_logs_link_the_manifest() {
    let url = open_url();
    let host = authority(&url);
    let repo = pushed_image(&host, "wake", "amd64", 1024);
    let adapter = adapter(json!({ "url": url }), &[]);
    let (woken, wakes) = std::sync::mpsc::channel();
    adapter.attach(Waker::new(move |key: &AttemptKey| {
        let _ = woken.send(key.clone());
    }));
    // `to` may name this instance's own host: the same registry, so blobs are mounted.
    let to = format!("{host}/{repo}-prod:stable");
    let key = key("wake");
    let mut external = adapter
        .start(&start_request(&key, promote(&format!("{repo}:v1"), &to)))
        .await
        .unwrap();
    let woken = tokio::task::spawn_blocking(move || wakes.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the end of the copy wakes the engine");
    assert_eq!(woken, key);
    let outcome = poll_once(adapter.as_ref(), &key, &mut external)
        .await
        .unwrap();
    assert!(
        matches!(outcome.state, ExternalState::Succeeded { .. }),
        "{outcome:?}"
    );
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(outputs["blobs_mounted"], json!(2), "{outputs:?}");
    let digest = outputs["digest"].as_str().unwrap().to_owned();
    let logs = adapter.logs(&key, &external).await.unwrap();
    assert_eq!(
        logs.links[0].url,
        format!("{url}/v2/{repo}-prod/manifests/stable")
    );
    assert!(logs.text.unwrap().contains(&digest));

    // An inspect of an image that is there ends at its first poll; `image` is always in
    // the instance's own registry, so a host there is refused.
    let key = support::key("inspect");
    let mut external = adapter
        .start(&start_request(
            &key,
            inspect(&format!("{repo}-prod:stable")),
        ))
        .await
        .unwrap();
    let outcome = poll_once(adapter.as_ref(), &key, &mut external)
        .await
        .unwrap();
    assert!(
        matches!(outcome.state, ExternalState::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.message.as_deref(), Some(digest.as_str()));
    let refused = adapter
        .start(&start_request(&support::key("host"), inspect(&to)))
        .await;
    expect_error(refused, "Invalid", "registry host");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_passing_problem_and_a_copy_starts_over() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let adapter = adapter(json!({ "url": format!("http://127.0.0.1:{port}") }), &[]);
    for with in [
        json!({"action": "wait", "image": "app:v1"}),
        inspect("app:v1"),
    ] {
        let key = key("down");
        let mut external = adapter.start(&start_request(&key, with)).await.unwrap();
        expect_error(
            poll_once(adapter.as_ref(), &key, &mut external).await,
            "Transient",
            "did not answer",
        );
    }
    let key = key("down-promote");
    let mut external = adapter
        .start(&start_request(&key, promote("app:v1", "app:v2")))
        .await
        .unwrap();
    let seen = poll_until(
        adapter.as_ref(),
        &key,
        &mut external,
        (Duration::from_millis(50), Duration::from_secs(10)),
        |o| {
            o.message
                .as_deref()
                .is_some_and(|m| m.contains("again after"))
        },
    )
    .await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, ExternalState::Running, "{last:?}");
    assert!(
        last.message.as_deref().unwrap().contains("did not answer"),
        "{last:?}"
    );
    adapter.cancel(&key, &external).await.unwrap();
}
