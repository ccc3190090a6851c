//! The HTTP surface: discovery, authentication by bearer token, RBAC, the resource paths,
//! and answers in the API server's wire format.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::api::{self, Failure, Target};
use super::controllers::Propagation;
use super::rbac::Rules;
use super::{Cluster, Write, resources, watch};

/// Every path goes through one handler, which reads it as the API server does.
pub(super) fn router(cluster: Cluster) -> Router {
    Router::new().fallback(handle).with_state(cluster)
}

/// A JSON answer.
pub(super) fn json(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn refuse(failure: &Failure) -> Response {
    json(failure.code, &failure.body())
}

async fn handle(
    State(cluster): State<Cluster>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match token {
        None => Some(("system:anonymous".to_owned(), Rules::none())),
        Some(t) => cluster.state().tokens.get(t).cloned(),
    };
    let Some((user, rules)) = caller else {
        cluster.meter().record("anonymous");
        return refuse(&Failure {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".to_owned(),
            details: Value::Null,
        });
    };
    cluster
        .meter()
        .record(if token.is_none() { "anonymous" } else { &user });
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if method == Method::GET
        && let Some(document) = discovery(&segments)
    {
        return json(200, &document);
    }
    let Some(target) = target(&segments) else {
        return not_served(uri.path());
    };
    let verb = verb(&method, &target, &query);
    if verb == "create" {
        let ns = target.namespace.clone().unwrap_or_default();
        let mut state = cluster.state();
        *state
            .creates
            .entry((target.resource.plural.to_owned(), ns))
            .or_default() += 1;
    }
    let rbac_resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.resource.plural),
        None => target.resource.plural.to_owned(),
    };
    if !rules.allows(verb, target.resource.group, &rbac_resource) {
        let refusal = forbidden(&user, verb, &target, &rbac_resource);
        if let Some(name) = &target.name
            && matches!(verb, "create" | "update" | "patch" | "delete")
        {
            let key = target_key(&target, name);
            let write = Write {
                verb: verb.to_owned(),
                content_type: content_type(&headers),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                field_manager: query.get("fieldManager").cloned(),
                status: refusal.code,
            };
            api::record(&mut cluster.state(), key, write);
        }
        return refuse(&refusal);
    }
    if let Some(refusal) = missing_namespace(&cluster, &target) {
        return refuse(&refusal);
    }
    let content_type = content_type(&headers);
    match verb {
        "watch" => watch::respond(&cluster, &target, &query),
        "get" | "list" => read(&cluster, &target, &query),
        _ => write(&cluster, verb, &target, &query, content_type, &body),
    }
}

/// The request's media type, without parameters.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
}

/// Where object `name` of `target` is stored.
fn target_key(target: &Target, name: &str) -> (String, String, String) {
    let ns = target.namespace.clone().unwrap_or_default();
    (target.resource.plural.to_owned(), ns, name.to_owned())
}

/// The discovery documents and `/version`.
fn discovery(segments: &[&str]) -> Option<Value> {
    match segments {
        ["version"] => Some(resources::version()),
        ["api"] => Some(resources::core_versions()),
        ["apis"] => Some(resources::group_list()),
        ["api", "v1"] => resources::resource_list(""),
        ["apis", group, "v1"] => resources::resource_list(group),
        _ => None,
    }
}

/// Reads `/api/v1/...` and `/apis/{group}/v1/...` into what they address.
fn target(segments: &[&str]) -> Option<Target> {
    let (group, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => (Some((*ns).to_owned()), {
            let mut all = vec![*plural];
            all.extend_from_slice(rest);
            all
        }),
        rest => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let resource = resources::find(group, plural)?;
    if subresource.is_some_and(|s| !resources::has_subresource(plural, s)) {
        return None;
    }
    // `/api/v1/namespaces/{ns}` is the namespace `ns` itself.
    let (namespace, name) = match (resource.namespaced, namespace, name) {
        (false, None, name) => (Some(String::new()), name.map(str::to_owned)),
        (true, ns, name) => (ns, name.map(str::to_owned)),
        (false, Some(_), _) => return None,
    };
    Some(Target {
        resource,
        namespace,
        name,
        subresource: subresource.map(str::to_owned),
    })
}

fn verb(method: &Method, target: &Target, query: &BTreeMap<String, String>) -> &'static str {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// The 403 of RBAC, worded as the API server words it.
fn forbidden(user: &str, verb: &str, target: &Target, rbac_resource: &str) -> Failure {
    let resource = target.resource;
    let what = match &target.name {
        Some(name) => format!("{} \"{name}\"", resource.qualified()),
        None => resource.qualified(),
    };
    let scope = match target.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!(" in the namespace \"{ns}\""),
        _ => " at the cluster scope".to_owned(),
    };
    let message = format!(
        "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{rbac_resource}\" in API \
         group \"{}\"{scope}",
        resource.group
    );
    let name = target.name.clone().unwrap_or_default();
    api::failure(403, "Forbidden", message, &resource, &name)
}

/// The 404 for an object in a namespace that does not exist.
fn missing_namespace(cluster: &Cluster, target: &Target) -> Option<Failure> {
    let ns = target.namespace.as_deref().filter(|ns| !ns.is_empty())?;
    let key = ("namespaces".to_owned(), String::new(), ns.to_owned());
    if cluster.state().store.get(&key).is_some() {
        return None;
    }
    let namespaces = resources::find("", "namespaces")?;
    Some(api::failure(
        404,
        "NotFound",
        format!("namespaces \"{ns}\" not found"),
        &namespaces,
        ns,
    ))
}

fn not_served(path: &str) -> Response {
    refuse(&Failure {
        code: 404,
        reason: "NotFound",
        message: format!("the server could not find the requested resource ({path})"),
        details: Value::Null,
    })
}

fn read(cluster: &Cluster, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let state = cluster.state();
    let answer = match (&target.name, target.subresource.as_deref()) {
        (Some(name), Some("log")) => {
            return match api::log(&state, target, name, query) {
                Ok(text) => {
                    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
                }
                Err(f) => refuse(&f),
            };
        }
        (Some(name), _) => api::get(&state, target, name),
        (None, _) => api::list(&state, target, query),
    };
    answer_with(answer, None)
}

fn answer_with(answer: api::Answer, warning: Option<&str>) -> Response {
    let mut response = match answer {
        Ok((code, body)) => json(code, &body),
        Err(f) => refuse(&f),
    };
    if let Some(value) = warning.and_then(|w| w.parse().ok()) {
        response.headers_mut().insert("warning", value);
    }
    response
}

fn write(
    cluster: &Cluster,
    verb: &'static str,
    target: &Target,
    query: &BTreeMap<String, String>,
    content_type: Option<String>,
    raw: &Bytes,
) -> Response {
    let body: Value = if raw.is_empty() {
        Value::Null
    } else if content_type.as_deref() == Some("application/apply-patch+yaml") {
        match serde_yaml_ng::from_slice(raw) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("error decoding YAML: {e}")),
        }
    } else {
        match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("error decoding JSON: {e}")),
        }
    };
    let manager = query.get("fieldManager").map(String::as_str);
    let force = query.get("force").is_some_and(|f| f == "true");
    let mut state = cluster.state();
    let name = target
        .name
        .clone()
        .or_else(|| body["metadata"]["name"].as_str().map(str::to_owned));
    let mut warning = None;
    let answer = match (verb, &target.name) {
        ("create", None) => api::create(&mut state, target, body.clone(), manager, "Update"),
        ("update", Some(name)) => api::update(&mut state, target, name, body.clone(), manager),
        ("patch", Some(name)) => {
            let ct = content_type.as_deref().unwrap_or("");
            api::patch(&mut state, target, name, ct, body.clone(), manager, force)
        }
        ("delete", Some(name)) => {
            let policy = query
                .get("propagationPolicy")
                .map(String::as_str)
                .or_else(|| body["propagationPolicy"].as_str())
                .and_then(Propagation::parse);
            let (answer, w) = api::delete(&mut state, target, name, policy);
            warning = w;
            answer
        }
        _ => Err(Failure {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".to_owned(),
            details: Value::Null,
        }),
    };
    let status = match &answer {
        Ok((code, _)) => *code,
        Err(f) => f.code,
    };
    let recorded_name = match &answer {
        Ok((_, object)) if verb == "create" => {
            object["metadata"]["name"].as_str().map(str::to_owned)
        }
        _ => name,
    };
    if let Some(name) = recorded_name {
        let key = target_key(target, &name);
        api::record(
            &mut state,
            key,
            Write {
                verb: verb.to_owned(),
                content_type,
                body,
                field_manager: manager.map(str::to_owned),
                status,
            },
        );
    }
    drop(state);
    answer_with(answer, warning)
}

fn bad_request(message: &str) -> Response {
    refuse(&Failure {
        code: 400,
        reason: "BadRequest",
        message: message.to_owned(),
        details: Value::Null,
    })
}
