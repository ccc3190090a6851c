//! Source parsing and trigger matching on GitHub, GitLab and Travis CI webhook payloads kept under
//! `tests/fixtures/` (see its README for where each comes from): the event type, the
//! delivery id and the ping flag the intake takes from a delivery, and the `on:` entries
//! whose `if:` reads real fields of the payload.

use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use baton_config::{GithubSource, GitlabSource, SourceConfig};
use baton_core::expr::parse_val;
use baton_core::secret::SecretError;
use baton_core::{Secret, SecretRef, SecretResolver, StageDefaults, Workflow, WorkflowSpec};
use baton_server::sources::{Refusal, Source};
use hmac::Mac;
use serde_json::{Value, json};

/// A payload file under `tests/fixtures/`.
fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resolves every reference to its own name: a test's secrets are the names it gives.
struct Named;
impl SecretResolver for Named {
    fn resolve(&self, r: &SecretRef) -> Result<Secret, SecretError> {
        Ok(Secret::new(match r {
            SecretRef::Env(n) | SecretRef::File(n) => n.clone(),
        }))
    }
}

const SECRET: &str = "a webhook secret";

fn github() -> Source {
    let config = SourceConfig::Github(GithubSource {
        secrets: vec![SecretRef::Env(SECRET.to_owned())],
        ..Default::default()
    });
    Source::new("github", &config, &Named).unwrap()
}

fn gitlab() -> Source {
    let config = SourceConfig::Gitlab(GitlabSource {
        tokens: vec![SecretRef::Env(SECRET.to_owned())],
        ..Default::default()
    });
    Source::new("gitlab", &config, &Named).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

/// `sha256=<hex>`, as GitHub signs a body.
fn github_signature(body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub delivery of `file` as GitHub sends it: authenticated and identified.
fn github_delivery(
    file: &str,
    event: &str,
    delivery: &str,
) -> (baton_server::sources::Identified, Value) {
    let body = fixture(file);
    let headers = headers(&[
        ("x-github-event", event),
        ("x-github-delivery", delivery),
        ("x-hub-signature-256", &github_signature(&body)),
    ]);
    let source = github();
    assert_eq!(source.verify_signature(&headers, body.as_bytes()), Ok(()));
    let json: Value = serde_json::from_str(&body).unwrap();
    let parsed = parse_val(&body).unwrap();
    let identified = source.identify(&headers, body.as_bytes(), parsed).unwrap();
    (identified, json)
}

/// A GitLab delivery of `file` as GitLab sends it: authenticated and identified.
fn gitlab_delivery(
    file: &str,
    event: &str,
    uuid: &str,
) -> (baton_server::sources::Identified, Value) {
    let body = fixture(file);
    let headers = headers(&[
        ("x-gitlab-event", event),
        ("x-gitlab-event-uuid", uuid),
        ("x-gitlab-token", SECRET),
    ]);
    let source = gitlab();
    assert_eq!(source.verify_signature(&headers, body.as_bytes()), Ok(()));
    let json: Value = serde_json::from_str(&body).unwrap();
    let parsed = parse_val(&body).unwrap();
    let identified = source.identify(&headers, body.as_bytes(), parsed).unwrap();
    (identified, json)
}

/// The indexes of the `on:` entries of a workflow that a delivery of `source`/`event` with
/// `body` starts, as the matcher decides: the entry names the source and event, and its
/// `if` holds for the payload.
fn matching(on: Value, source: &str, event: &str, body: &str) -> Vec<usize> {
    let spec: WorkflowSpec = serde_json::from_value(json!({
        "name": "fixture",
        "on": on,
        "stages": { "only": { "uses": "exec", "with": { "run": "true" } } }
    }))
    .unwrap();
    let workflow = Workflow::compile(spec, StageDefaults::default()).unwrap();
    let payload = parse_val(body).unwrap();
    workflow
        .triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.matches(source, event, &payload).unwrap())
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_github_push_is_identified_and_names_its_branch_and_commit() {
    let (delivery, json) = github_delivery(
        "github/push.json",
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    );
    assert_eq!(delivery.event, "push");
    assert_eq!(delivery.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert!(!delivery.ping);
    // What a workflow's `if:` and the status reporter read from a push.
    assert_eq!(json["ref"], "refs/heads/master");
    assert_eq!(json["after"], "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert_eq!(json["head_commit"]["id"], json["after"]);
    assert_eq!(json["repository"]["full_name"], "Codertocat/Hello-World");
    assert_eq!(json["installation"]["id"], 1);
}

#[test]
fn a_github_pull_request_is_identified_and_names_its_head_commit() {
    let (delivery, json) = github_delivery(
        "github/pull_request.json",
        "pull_request",
        "d5b3f8c0-7a6f-11e9-8f9e-2a86e4085a59",
    );
    assert_eq!(delivery.event, "pull_request");
    assert!(!delivery.ping);
    assert_eq!(json["action"], "synchronize");
    assert_eq!(
        json["pull_request"]["head"]["sha"],
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    );
    assert_eq!(json["pull_request"]["head"]["ref"], "changes");
    assert_eq!(json["pull_request"]["base"]["ref"], "master");
}

#[test]
fn a_github_ping_is_answered_not_stored() {
    let (delivery, json) = github_delivery("github/ping.json", "ping", "ping-1");
    assert!(delivery.ping);
    assert_eq!(delivery.event, "ping");
    assert_eq!(json["hook_id"], 109948940);
}

#[test]
fn a_github_delivery_signed_with_another_secret_is_refused() {
    let body = fixture("github/push.json");
    let mut other = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"another secret").unwrap();
    other.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(other.finalize().into_bytes()));
    let headers = headers(&[
        ("x-github-event", "push"),
        ("x-hub-signature-256", &signature),
    ]);
    assert!(matches!(
        github().verify_signature(&headers, body.as_bytes()),
        Err(Refusal::Unauthenticated(_))
    ));
}

#[test]
fn a_github_delivery_without_an_id_is_known_by_its_body() {
    let body = fixture("github/push.json");
    let headers = headers(&[
        ("x-github-event", "push"),
        ("x-hub-signature-256", &github_signature(&body)),
    ]);
    let json = || parse_val(&body).unwrap();
    let first = github()
        .identify(&headers, body.as_bytes(), json())
        .unwrap();
    let again = github()
        .identify(&headers, body.as_bytes(), json())
        .unwrap();
    assert_eq!(first.delivery_id, again.delivery_id);
    assert_eq!(first.delivery_id.len(), 64, "{}", first.delivery_id);
    let other = fixture("github/pull_request.json");
    let other_id = github()
        .identify(&headers, other.as_bytes(), parse_val(&other).unwrap())
        .unwrap()
        .delivery_id;
    assert_ne!(first.delivery_id, other_id);
}

#[test]
fn a_gitlab_push_is_identified_and_names_its_branch_and_commit() {
    let (delivery, json) = gitlab_delivery(
        "gitlab/push.json",
        "Push Hook",
        "0a2ba8b8-0b1a-4b8f-8a8c-44c4a5a5f3f1",
    );
    assert_eq!(delivery.event, "Push Hook");
    assert_eq!(delivery.delivery_id, "0a2ba8b8-0b1a-4b8f-8a8c-44c4a5a5f3f1");
    assert!(!delivery.ping);
    assert_eq!(json["ref"], "refs/heads/master");
    assert_eq!(
        json["checkout_sha"],
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    assert_eq!(json["project"]["id"], 15);
}

#[test]
fn a_gitlab_merge_request_is_identified_and_names_its_source_commit() {
    let (delivery, json) = gitlab_delivery(
        "gitlab/merge_request.json",
        "Merge Request Hook",
        "9a3c3f3e-55f0-4c52-9a42-0d2a3f3b6a11",
    );
    assert_eq!(delivery.event, "Merge Request Hook");
    let mr = &json["object_attributes"];
    assert_eq!(mr["action"], "open");
    assert_eq!(mr["source_branch"], "ms-viewport");
    assert_eq!(mr["source_project_id"], 14);
    assert_eq!(
        mr["last_commit"]["id"],
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
}

#[test]
fn a_gitlab_delivery_with_a_wrong_token_is_refused() {
    let body = fixture("gitlab/push.json");
    let headers = headers(&[
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", "not the token"),
    ]);
    assert!(matches!(
        gitlab().verify_signature(&headers, body.as_bytes()),
        Err(Refusal::Unauthenticated(_))
    ));
}

#[test]
fn github_triggers_match_on_real_push_and_pull_request_fields() {
    let on = json!([
        { "source": "github", "event": "push", "if": ".ref == \"refs/heads/master\"" },
        { "source": "github", "event": "push", "if": ".ref == \"refs/heads/main\"" },
        { "source": "github", "event": "push", "if": ".created and (.deleted | not)" },
        { "source": "github", "event": "pull_request",
          "if": ".action == \"synchronize\" and .pull_request.head.sha == \"ec26c3e57ca3a959ca5aad62de7213c562f8c821\"" },
        { "source": "github", "event": "pull_request", "if": ".action == \"opened\"" },
        { "source": "github", "event": "pull_request", "if": ".pull_request.base.ref == \"master\" and (.pull_request.draft | not)" },
        { "source": "github" }
    ]);
    let push = fixture("github/push.json");
    assert_eq!(matching(on.clone(), "github", "push", &push), [0, 2, 6]);
    let pull = fixture("github/pull_request.json");
    assert_eq!(
        matching(on.clone(), "github", "pull_request", &pull),
        [3, 5, 6]
    );
    // A ping names no entry but the catch-all, and another source none at all.
    let ping = fixture("github/ping.json");
    assert_eq!(matching(on.clone(), "github", "ping", &ping), [6]);
    assert!(matching(on, "gitlab", "push", &push).is_empty());
}

#[test]
fn gitlab_triggers_match_on_real_push_and_merge_request_fields() {
    let on = json!([
        { "source": "gitlab", "event": "Push Hook", "if": ".ref == \"refs/heads/master\" and .total_commits_count > 0" },
        { "source": "gitlab", "event": "Push Hook", "if": ".ref | startswith(\"refs/tags/\")" },
        { "source": "gitlab", "event": "Merge Request Hook",
          "if": ".object_attributes.action == \"open\" and .object_attributes.target_branch == \"master\"" },
        { "source": "gitlab", "event": "Merge Request Hook", "if": ".object_attributes.action == \"merge\"" },
        { "source": "gitlab", "event": "Merge Request Hook", "if": "any(.labels[]; .title == \"API\")" }
    ]);
    let push = fixture("gitlab/push.json");
    assert_eq!(matching(on.clone(), "gitlab", "Push Hook", &push), [0]);
    let mr = fixture("gitlab/merge_request.json");
    assert_eq!(
        matching(on.clone(), "gitlab", "Merge Request Hook", &mr),
        [2, 4]
    );
    // The event type must be GitLab's header value, not the payload's `object_kind`.
    assert!(matching(on, "gitlab", "merge_request", &mr).is_empty());
}

#[test]
fn a_travis_notification_is_identified_by_its_state_and_matches_on_its_fields() {
    let config = SourceConfig::Travis(baton_config::TravisSource {
        repos: vec!["pingcap/tidb".to_owned()],
        api_url: baton_config::TRAVIS_API_URL.to_owned(),
    });
    let source = Source::new("travis", &config, &Named).unwrap();
    let body = fixture("travis/build.json");
    let delivery = source
        .identify(
            &headers(&[("travis-repo-slug", "pingcap/tidb")]),
            body.as_bytes(),
            parse_val(&body).unwrap(),
        )
        .unwrap();
    assert_eq!(delivery.event, "passed");
    assert!(!delivery.ping);
    assert_eq!(delivery.delivery_id.len(), 64, "the payload's SHA-256");
    // Its key comes from Travis's API, so the request alone never passes.
    assert!(matches!(
        source.verify_signature(&headers(&[("signature", "AAAA")]), body.as_bytes()),
        Err(Refusal::Unauthenticated(_))
    ));
    let on = json!([
        { "source": "travis", "event": "passed", "if": ".branch == \"master\" and .type == \"push\"" },
        { "source": "travis", "event": "passed", "if": ".pull_request" },
        { "source": "travis", "event": "failed" },
        { "source": "travis", "if": ".matrix | all(.state == \"passed\")" }
    ]);
    assert_eq!(matching(on, "travis", "passed", &body), [0, 3]);
}

fn registry(auth: baton_config::RegistryAuth) -> Source {
    let config = SourceConfig::Registry(baton_config::RegistrySource { auth });
    Source::new("registry", &config, &Named).unwrap()
}

/// The checks a registry's envelope passes before it is split (`authenticate`'s, which
/// need nothing but the request).
fn registry_check(source: &Source, pairs: &[(&str, &str)]) -> Result<(), Refusal> {
    source.verify_signature(&headers(pairs), b"")?;
    baton_server::registry::check_content_type(&headers(pairs))
}

const EVENTS_V1: (&str, &str) = (
    "content-type",
    "application/vnd.docker.distribution.events.v1+json",
);

#[test]
fn a_registry_source_checks_the_bearer_token_its_endpoint_sends() {
    let source = registry(baton_config::RegistryAuth::Bearer(SecretRef::Env(
        SECRET.to_owned(),
    )));
    assert!(source.takes_envelopes());
    // Every other kind's request is one event.
    assert!(!github().takes_envelopes() && !gitlab().takes_envelopes());
    let bearer = format!("Bearer {SECRET}");
    assert_eq!(
        registry_check(&source, &[("authorization", &bearer), EVENTS_V1]),
        Ok(())
    );
    // HTTP's scheme names are case-insensitive.
    let lower = format!("bearer {SECRET}");
    assert_eq!(
        registry_check(&source, &[("authorization", &lower), EVENTS_V1]),
        Ok(())
    );
    let refused = |pairs: &[(&str, &str)]| match registry_check(&source, pairs) {
        Err(Refusal::Unauthenticated(why)) => why,
        other => panic!("{pairs:?}: {other:?}"),
    };
    assert_eq!(
        refused(&[("authorization", "Bearer not it"), EVENTS_V1]),
        "the bearer token does not match"
    );
    assert_eq!(
        refused(&[EVENTS_V1]),
        "missing `Authorization: Bearer <token>`"
    );
    let basic = format!("Basic {}", base64_of(SECRET));
    assert_eq!(
        refused(&[("authorization", &basic), EVENTS_V1]),
        "missing `Authorization: Bearer <token>`"
    );
    // Genuine, but not an envelope's type.
    assert!(matches!(
        registry_check(
            &source,
            &[("authorization", &bearer), ("content-type", "text/plain")]
        ),
        Err(Refusal::UnsupportedType(_))
    ));
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_registry_source_checks_basic_credentials() {
    let source = registry(baton_config::RegistryAuth::Basic {
        username: "notifier".to_owned(),
        password: SecretRef::Env(SECRET.to_owned()),
    });
    let basic = |pair: &str| format!("Basic {}", base64_of(pair));
    assert_eq!(
        registry_check(
            &source,
            &[
                ("authorization", &basic(&format!("notifier:{SECRET}"))),
                EVENTS_V1
            ]
        ),
        Ok(())
    );
    let refused =
        |value: &str| match registry_check(&source, &[("authorization", value), EVENTS_V1]) {
            Err(Refusal::Unauthenticated(why)) => why,
            other => panic!("{value}: {other:?}"),
        };
    assert_eq!(
        refused(&basic(&format!("someone:{SECRET}"))),
        "the Basic user name or password does not match"
    );
    assert_eq!(
        refused(&basic("notifier:wrong")),
        "the Basic user name or password does not match"
    );
    assert_eq!(
        refused(&basic(&format!("notifier:{SECRET}x"))),
        "the Basic user name or password does not match"
    );
    assert_eq!(refused("Basic %%%"), "the Basic credentials are not base64");
    assert_eq!(
        refused(&format!("Bearer {SECRET}")),
        "missing `Authorization: Basic <base64 of user:password>`"
    );
}

#[test]
fn a_registry_envelope_is_one_delivery_per_event_known_by_its_id() {
    let push = fixture("registry/push.json");
    let events = baton_server::registry::split_envelope(&push).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "push");
    assert_eq!(
        events[0].delivery_id,
        "f09fdd37-b27f-41ed-bf3f-7c5e504129eb"
    );
    // The stored body is the event itself, so conditions read its fields from the top.
    let event: Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(event["target"]["tag"], "v1");
    assert_eq!(
        event["target"]["digest"],
        "sha256:a2f075f786845c871c481716b6952abdf1243caa786eb3e6ce35682a33aa7560"
    );
    assert!(push.contains(&events[0].body), "kept byte for byte");

    // Two envelopes' events in one (the registry batches what queued up).
    let pull = fixture("registry/pull.json");
    let both = |a: &str, b: &str| {
        let a: Value = serde_json::from_str(a).unwrap();
        let b: Value = serde_json::from_str(b).unwrap();
        json!({"events": [a["events"][0], b["events"][0]]}).to_string()
    };
    let events = baton_server::registry::split_envelope(&both(&push, &pull)).unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["push", "pull"]
    );
    assert_eq!(
        events[1].delivery_id,
        "3ed398c7-b059-4eb4-bb0d-20ee47d18fcb"
    );
}

#[test]
fn registry_triggers_select_manifest_pushes_of_a_repository_and_leave_pulls() {
    let on = json!([
        {
            "source": "registry",
            "event": "push",
            "if": ".target.repository == \"demo/hello\" and (.target.mediaType | test(\"manifest\")) and .target.tag != null"
        },
        { "source": "registry", "event": "push", "if": ".target.repository == \"other/app\"" },
        { "source": "registry", "event": "delete" },
        { "source": "registry", "if": ".action == \"pull\"" }
    ]);
    let event = |file: &str| {
        let envelope = fixture(file);
        baton_server::registry::split_envelope(&envelope)
            .unwrap()
            .remove(0)
    };
    let push = event("registry/push.json");
    assert_eq!(
        matching(on.clone(), "registry", &push.event, &push.body),
        [0]
    );
    let pull = event("registry/pull.json");
    assert_eq!(
        matching(on.clone(), "registry", &pull.event, &pull.body),
        [3]
    );
    // A workflow for pushes alone starts nothing on a pull.
    assert!(matching(json!([on[0]]), "registry", &pull.event, &pull.body).is_empty());
}
