//! The API server's refusals as [`AdapterError`]s that say what to fix: a 403 names the verb,
//! resource and namespace and the Role rule that grants it, a 401 says the credentials were
//! refused; 404, 409 and 422 are explained; 410, 429, 5xx and lost connections are transient.

use baton_core::AdapterError;

/// One request, as RBAC sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `patch`, `delete`).
    pub(crate) verb: &'static str,
    /// The API group (`""` for the core group).
    pub(crate) group: &'a str,
    /// The resource, plural (`deployments`, `pods/log`).
    pub(crate) resource: &'a str,
    /// The namespace.
    pub(crate) namespace: &'a str,
    /// The object's name, when the request names one.
    pub(crate) name: Option<&'a str>,
}

impl Call<'_> {
    fn object(&self) -> String {
        match self.name {
            Some(name) => format!("{} {}/{name}", self.resource, self.namespace),
            None => format!("{} in namespace {}", self.resource, self.namespace),
        }
    }

    /// What RBAC must allow for this call, and the Role rule that does.
    pub(crate) fn missing_permission(&self) -> String {
        format!(
            "the service account needs verb {:?} on {:?} (apiGroup {:?}) in namespace {:?}; a Role rule that grants it: {{apiGroups: [{:?}], resources: [{:?}], verbs: [{:?}]}}",
            self.verb,
            self.resource,
            self.group,
            self.namespace,
            self.group,
            self.resource,
            self.verb
        )
    }
}

/// `error` of `call`, classified, the message starting with `context` (`kubernetes
/// <attempt>`).
pub(crate) fn classify(context: &str, call: &Call<'_>, error: kube::Error) -> AdapterError {
    let kube::Error::Api(status) = error else {
        return match error {
            kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::ReadEvents(_)
            | kube::Error::HttpError(_) => AdapterError::Transient(format!(
                "{context}: {} {}: the API server could not be reached: {error}",
                call.verb,
                call.object()
            )),
            kube::Error::Auth(e) => AdapterError::Auth(format!(
                "{context}: the kubeconfig's credentials could not be used: {e}"
            )),
            other => AdapterError::Protocol(format!(
                "{context}: {} {}: {other}",
                call.verb,
                call.object()
            )),
        };
    };
    let message = &status.message;
    let what = format!("{} {}", call.verb, call.object());
    match status.code {
        401 => AdapterError::Auth(format!(
            "{context}: the API server refused the credentials (401 Unauthorized): the kubeconfig's token or certificate is wrong or expired"
        )),
        403 => AdapterError::Auth(format!(
            "{context}: {what} is forbidden: {} (the API server said: {message})",
            call.missing_permission()
        )),
        404 => AdapterError::NotFound(format!(
            "{context}: {} not found ({message})",
            call.object()
        )),
        409 => AdapterError::Invalid(format!("{context}: {what}: conflict: {message}")),
        422 => AdapterError::Invalid(format!(
            "{context}: {what}: the API server refused the object as invalid: {message}"
        )),
        410 | 429 | 500..=599 => {
            AdapterError::Transient(format!("{context}: {what}: {} {message}", status.code))
        }
        code => AdapterError::Protocol(format!("{context}: {what}: {code} {message}")),
    }
}

/// True when `error` is the API server's 404.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// True when `error` is a create's 409 AlreadyExists.
pub(crate) fn is_already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// True when `error` is a server-side apply's 409 conflict with another field manager.
pub(crate) fn is_apply_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason != "AlreadyExists")
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    const CALL: Call<'static> = Call {
        verb: "patch",
        group: "apps",
        resource: "deployments",
        namespace: "app",
        name: Some("web"),
    };

    #[test]
    fn a_403_names_the_missing_rule() {
        let e = classify(
            "kubernetes r/s/1",
            &CALL,
            api(403, "Forbidden", "deployments.apps \"web\" is forbidden"),
        );
        assert!(matches!(e, AdapterError::Auth(_)));
        let text = e.to_string();
        assert!(
            text.contains(r#"the service account needs verb "patch" on "deployments" (apiGroup "apps") in namespace "app""#),
            "{text}"
        );
        assert!(
            text.contains(r#"{apiGroups: ["apps"], resources: ["deployments"], verbs: ["patch"]}"#),
            "{text}"
        );
    }

    #[test]
    fn each_code_has_its_kind() {
        let kind = |code, reason| classify("k", &CALL, api(code, reason, "m"));
        assert!(
            matches!(kind(401, "Unauthorized"), AdapterError::Auth(m) if m.contains("refused the credentials"))
        );
        assert!(
            matches!(kind(404, "NotFound"), AdapterError::NotFound(m) if m.contains("deployments app/web not found"))
        );
        assert!(matches!(kind(409, "Conflict"), AdapterError::Invalid(_)));
        assert!(matches!(kind(422, "Invalid"), AdapterError::Invalid(m) if m.contains("invalid")));
        for code in [410, 429, 500, 503, 504] {
            assert!(kind(code, "x").is_transient(), "{code}");
        }
        assert!(is_already_exists(&api(409, "AlreadyExists", "")));
        assert!(!is_already_exists(&api(409, "Conflict", "")));
        assert!(is_apply_conflict(&api(409, "Conflict", "")));
        assert!(is_not_found(&api(404, "NotFound", "")));
    }
}
