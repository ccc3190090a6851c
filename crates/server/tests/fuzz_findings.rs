//! Inputs that break a check of the intake fuzz targets (`fuzz/`, see its README), kept as
//! tests: each is sent through the real router, signed as its sender signs it, with a real
//! SQLite store behind it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use baton_config::{GatewayConfig, GithubSource, GitlabSource, Loaded, SourceConfig};
use baton_core::expr::parse_val;
use baton_core::secret::SecretError;
use baton_core::{Kinds, Secret, SecretRef, SecretResolver};
use baton_engine::{Engine, EngineConfig};
use hmac::Mac;
use tower::Service;

/// Resolves every reference to its own name.
struct Named;
impl SecretResolver for Named {
    fn resolve(&self, r: &SecretRef) -> Result<Secret, SecretError> {
        Ok(Secret::new(match r {
            SecretRef::Env(n) | SecretRef::File(n) => n.clone(),
        }))
    }
}

const SECRET: &str = "webhook-secret";

/// A folder of its own for one test's store, removed when dropped.
struct Scratch(PathBuf);
impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("baton-fuzz-finding-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The router of a gateway with a `github` and a `gitlab` source, both with [`SECRET`].
async fn gateway(scratch: &Scratch) -> axum::Router {
    let mut config = GatewayConfig::default();
    config.sources.insert(
        "github".into(),
        SourceConfig::Github(GithubSource {
            secrets: vec![SecretRef::Env(SECRET.into())],
            ..Default::default()
        }),
    );
    config.sources.insert(
        "gitlab".into(),
        SourceConfig::Gitlab(GitlabSource {
            tokens: vec![SecretRef::Env(SECRET.into())],
            ..Default::default()
        }),
    );
    let loaded = Loaded {
        config_file: None,
        gateway: config,
        workflows: Vec::new(),
        secrets: Vec::new(),
    };
    let url = format!("sqlite://{}", scratch.0.join("baton.db").display());
    let store = baton_store::open(&url).await.unwrap();
    let engine = Engine::new(store, Default::default(), EngineConfig::default());
    let state = baton_server::AppState::new(&loaded, &Kinds::new(), engine, &Named, None).unwrap();
    baton_server::router(Arc::new(state))
}

/// Sends `body` to `/hooks/<source>` as GitHub or GitLab sends a push; the status and answer.
async fn deliver(app: &mut axum::Router, source: &str, body: &str) -> (StatusCode, String) {
    let request =
        Request::post(format!("/hooks/{source}")).header("content-type", "application/json");
    let request = if source == "github" {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        request
            .header("x-github-event", "push")
            .header("x-hub-signature-256", signature)
    } else {
        request
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", SECRET)
    };
    let response = app
        .call(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let answer = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&answer).into_owned())
}

/// Bodies that are JSON to a parser without limits but that the matcher, which reads the
/// stored body again, refuses: deeper than its nesting limit, or a number past f64.
fn unreadable_bodies() -> Vec<String> {
    vec![
        format!("{}{}", "[".repeat(200), "]".repeat(200)),
        r#"{"n": 1e400}"#.to_owned(),
    ]
}

#[tokio::test]
async fn a_body_the_matcher_cannot_read_is_refused_at_intake() {
    let scratch = Scratch::new("unreadable");
    let mut app = gateway(&scratch).await;
    for body in unreadable_bodies() {
        assert!(
            parse_val(&body).is_err(),
            "the matcher reads this body: {body}"
        );
        for source in ["github", "gitlab"] {
            let (status, answer) = deliver(&mut app, source, &body).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "/hooks/{source} answered {answer} to {body:.60}"
            );
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
    }
}
