//! Label and field selectors, as list and watch requests give them.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `k=v` or `k==v`.
    Equals(String, String),
    /// `k!=v` (true when `k` is missing too).
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    Missing(String),
}

/// A selector: every requirement must hold. Labels are matched against
/// `metadata.labels`, fields against the object's dotted paths (`metadata.name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    /// From the `labelSelector` and `fieldSelector` query values.
    pub(super) fn parse(labels: Option<&str>, fields: Option<&str>) -> Self {
        Self {
            labels: labels.map(requirements).unwrap_or_default(),
            fields: fields.map(requirements).unwrap_or_default(),
        }
    }

    /// Whether `object` matches.
    pub(super) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|r| {
            holds(r, |k| {
                labels.get(k).and_then(Value::as_str).map(str::to_owned)
            })
        }) && self.fields.iter().all(|r| holds(r, |k| field(object, k)))
    }
}

fn field(object: &Value, path: &str) -> Option<String> {
    let value = path.split('.').try_fold(object, |v, part| v.get(part))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn holds(requirement: &Requirement, value_of: impl Fn(&str) -> Option<String>) -> bool {
    match requirement {
        Requirement::Equals(k, v) => value_of(k).as_deref() == Some(v),
        Requirement::NotEquals(k, v) => value_of(k).as_deref() != Some(v),
        Requirement::In(k, vs) => value_of(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => value_of(k).is_none_or(|x| !vs.contains(&x)),
        Requirement::Exists(k) => value_of(k).is_some(),
        Requirement::Missing(k) => value_of(k).is_none(),
    }
}

/// Splits at the commas outside parentheses and reads each requirement.
fn requirements(text: &str) -> Vec<Requirement> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(requirement)
        .collect()
}

fn requirement(part: &str) -> Requirement {
    let set = |rest: &str| -> Vec<String> {
        rest.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect()
    };
    if let Some((k, v)) = part.split_once("!=") {
        return Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned());
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Requirement::Equals(k.trim().to_owned(), v.trim().to_owned());
    }
    if let Some((k, rest)) = part.split_once(" notin ") {
        return Requirement::NotIn(k.trim().to_owned(), set(rest));
    }
    if let Some((k, rest)) = part.split_once(" in ") {
        return Requirement::In(k.trim().to_owned(), set(rest));
    }
    match part.strip_prefix('!') {
        Some(k) => Requirement::Missing(k.trim().to_owned()),
        None => Requirement::Exists(part.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_inequality_existence_and_sets_combine_with_and() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web", "tier": "fe"}}});
        let matches = |l: &str| Selector::parse(Some(l), None).matches(&pod);
        assert!(matches("app=web,tier"));
        assert!(!matches("app=web,tier!=fe"));
        assert!(matches("app in (db,web),!canary"));
        assert!(!matches("app notin (web)"));
        assert!(!matches("missing"));
        let by_name = |f: &str| Selector::parse(None, Some(f)).matches(&pod);
        assert!(by_name("metadata.name=p"));
        assert!(!by_name("metadata.name=q"));
    }
}
