//! What a token may do: RBAC rules as (verbs, API group, resource) triples, as a Role's
//! `rules` grant them.

/// The requests a token may make. A rule names verbs (`get`, `list`, `watch`, `create`,
/// `update`, `patch`, `delete`, or `*`), an API group (`""` for the core group, `apps`,
/// `batch`, or `*`) and a resource (`deployments`, `pods/log`, or `*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    verbs: Vec<String>,
    group: String,
    resource: String,
}

impl Rules {
    /// Everything allowed (a cluster admin).
    pub fn all() -> Self {
        Self::none().allow(&["*"], "*", "*")
    }

    /// Nothing allowed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Also allows `verbs` on `resource` (`deployments`, `pods/log`) in API `group`.
    pub fn allow(mut self, verbs: &[&str], group: &str, resource: &str) -> Self {
        self.rules.push(Rule {
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            group: group.to_owned(),
            resource: resource.to_owned(),
        });
        self
    }

    /// Whether `verb` on `resource` (with its `/subresource`, if any) in `group` is allowed.
    pub fn allows(&self, verb: &str, group: &str, resource: &str) -> bool {
        self.rules.iter().any(|r| {
            r.verbs.iter().any(|v| v == "*" || v == verb)
                && (r.group == "*" || r.group == group)
                && (r.resource == "*" || r.resource == resource)
        })
    }
}
