//! `POST /api/v1/workflows/validate` and its web twin `POST /ui/editor/validate`, through
//! the real router with a real SQLite store behind it: what each body gets, and that the
//! twin takes a session and its form token instead of a bearer token.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use baton_config::{ApiToken, GatewayConfig, Loaded, Role};
use baton_core::adapter::FieldError;
use baton_core::secret::SecretError;
use baton_core::{Adapter, AdapterError, AdapterKind, Kinds, Secret, SecretRef, SecretResolver};
use baton_engine::{Engine, EngineConfig};
use serde_json::Value;
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

/// `exec`, as far as checking goes: a stage needs `run`.
struct Exec;
impl AdapterKind for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }
    fn builtin_instance(&self) -> bool {
        true
    }
    fn validate_instance(&self, _: &Value) -> Vec<FieldError> {
        Vec::new()
    }
    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        if with.get("run").is_some() {
            Vec::new()
        } else {
            vec![FieldError::new("run", "missing the script")]
        }
    }
    fn build(
        &self,
        _: &str,
        _: &Value,
        _: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        Err(AdapterError::Invalid("checking only".into()))
    }
}

/// A folder of its own for one test's store, removed when dropped.
struct Scratch(PathBuf);
impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "baton-workflow-validate-{}-{test}",
            std::process::id()
        ));
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

/// A gateway with one viewer token, `view-secret`, and the `exec` kind.
async fn gateway(scratch: &Scratch) -> axum::Router {
    let mut config = GatewayConfig::default();
    config.api.tokens.push(ApiToken {
        name: "vera".into(),
        token: SecretRef::Env("view-secret".into()),
        role: Role::Viewer,
    });
    let loaded = Loaded {
        config_file: None,
        gateway: config,
        workflows: Vec::new(),
        secrets: Vec::new(),
    };
    let mut kinds = Kinds::new();
    kinds.register(Arc::new(Exec));
    let url = format!("sqlite://{}", scratch.0.join("baton.db").display());
    let store = baton_store::open(&url).await.unwrap();
    let engine = Engine::new(store, Default::default(), EngineConfig::default());
    let state = baton_server::AppState::new(&loaded, &kinds, engine, &Named, None).unwrap();
    baton_server::router(Arc::new(state))
}

async fn send(
    app: &mut axum::Router,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Vec<(String, String)>, String) {
    let mut request = Request::post(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = app
        .call(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let answer = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        headers,
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

const BEARER: (&str, &str) = ("authorization", "Bearer view-secret");

const BROKEN: &str = "\
name: w
on: [{ source: nowhere }]
stages:
  a:
    uses: exec
    with: { script: x }
  b:
    uses: ci
    needs: [a, zz]
";

#[tokio::test]
async fn every_problem_comes_back_at_once_with_its_path_and_line() {
    let scratch = Scratch::new("problems");
    let mut app = gateway(&scratch).await;
    let (status, _, body) = send(
        &mut app,
        "/api/v1/workflows/validate",
        &[BEARER, ("content-type", "application/yaml")],
        BROKEN,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["valid"], false);
    let problems = answer["problems"].as_array().unwrap();
    let at = |path: &str| {
        problems
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {body}"))
    };
    assert!(
        at("on[0].source")["message"]
            .as_str()
            .unwrap()
            .contains("nowhere")
    );
    assert_eq!(at("stages.a.with.run")["line"], 6);
    assert!(
        at("stages.b.uses")["message"]
            .as_str()
            .unwrap()
            .contains("unknown adapter `ci`")
    );
    assert_eq!(at("stages.b.uses")["line"], 8);
    assert!(
        at("stages.b.needs[1]")["message"]
            .as_str()
            .unwrap()
            .contains("zz")
    );
    assert_eq!(problems.len(), 4, "{body}");

    // The same workflow as JSON: the same problems, without lines.
    let json: Value = serde_json::json!({
        "name": "w",
        "on": [{"source": "nowhere"}],
        "stages": {"a": {"uses": "exec", "with": {"script": "x"}}, "b": {"uses": "ci", "needs": ["a", "zz"]}},
    });
    let (status, _, body) = send(
        &mut app,
        "/api/v1/workflows/validate",
        &[BEARER, ("content-type", "application/json")],
        &json.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let from_json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(from_json["problems"].as_array().unwrap().len(), 4);
    assert!(from_json["problems"][0].get("line").is_none());

    let good = "name: w\nstages:\n  a: { uses: exec, with: { run: make } }\n";
    let (status, _, body) = send(
        &mut app,
        "/api/v1/workflows/validate",
        &[BEARER, ("content-type", "text/yaml; charset=utf-8")],
        good,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"valid": true, "problems": []})
    );
}

#[tokio::test]
async fn bodies_the_call_cannot_read_are_refused_as_the_api_refuses() {
    let scratch = Scratch::new("refusals");
    let mut app = gateway(&scratch).await;
    let path = "/api/v1/workflows/validate";
    for (headers, body, status, code) in [
        (
            vec![("content-type", "application/yaml")],
            "name: w",
            401,
            "unauthorized",
        ),
        (vec![BEARER], "name: w", 415, "unsupported_media_type"),
        (
            vec![BEARER, ("content-type", "text/plain")],
            "name: w",
            415,
            "unsupported_media_type",
        ),
        (
            vec![BEARER, ("content-type", "application/json")],
            "[1]",
            400,
            "bad_request",
        ),
        (
            vec![BEARER, ("content-type", "application/json")],
            "{",
            400,
            "bad_request",
        ),
        (
            vec![BEARER, ("content-type", "application/json")],
            "",
            400,
            "bad_request",
        ),
    ] {
        let (got, _, answer) = send(&mut app, path, &headers, body).await;
        assert_eq!(got.as_u16(), status, "{headers:?} {body}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"]["code"], code);
    }
    // Not UTF-8.
    let response = app
        .call(
            Request::post(path)
                .header("authorization", "Bearer view-secret")
                .header("content-type", "application/yaml")
                .body(Body::from(vec![b'n', 0xff, b'\n']))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // An empty YAML body is a workflow with a problem, not a refusal.
    let (status, _, body) = send(
        &mut app,
        path,
        &[BEARER, ("content-type", "application/yaml")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("empty"), "{body}");
}

#[tokio::test]
async fn the_web_twin_takes_a_session_and_its_form_token() {
    let scratch = Scratch::new("twin");
    let mut app = gateway(&scratch).await;
    let (status, headers, _) = send(
        &mut app,
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=view-secret&next=%2Fworkflows%2Fnew",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    let response = app
        .call(
            Request::get("/workflows/new")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let page = String::from_utf8_lossy(&page);
    let csrf = page
        .split("name=\"baton-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its form token")
        .to_owned();

    let twin = "/ui/editor/validate";
    let yaml = ("content-type", "application/yaml");
    let (status, _, body) = send(
        &mut app,
        twin,
        &[("cookie", &cookie), ("x-csrf-token", &csrf), yaml],
        BROKEN,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["problems"].as_array().unwrap().len(), 4, "{body}");

    // Without the form token, with another, from another site, or without a session.
    for headers in [
        vec![("cookie", cookie.as_str()), yaml],
        vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", "forged"),
            yaml,
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
            yaml,
        ],
    ] {
        let (status, _, _) = send(&mut app, twin, &headers, BROKEN).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    let (status, _, _) = send(&mut app, twin, &[("x-csrf-token", &csrf), yaml], BROKEN).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "to the sign-in page");
    // A bearer token is no session.
    let (status, _, _) = send(&mut app, twin, &[BEARER, yaml], BROKEN).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}
