//! The `github` source's `workflow_run` deliveries: a run this adapter follows, or one
//! whose title holds an attempt key, names the attempt the engine should poll at once.

use baton_core::{AttemptKey, SourceDelivery};
use serde::Deserialize;

use crate::{GithubActionsAdapter, lock};

#[derive(Deserialize)]
struct Delivery {
    workflow_run: DeliveredRun,
}

#[derive(Deserialize)]
struct DeliveredRun {
    id: u64,
    #[serde(default)]
    display_title: String,
}

/// The attempt keys written as words of `title`.
fn keys_in(title: &str) -> impl Iterator<Item = AttemptKey> + '_ {
    title
        .split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '(' | ')' | ',' | '"' | '\''))
        .filter_map(AttemptKey::parse)
}

impl GithubActionsAdapter {
    pub(crate) fn delivery_attempts(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        if delivery.kind != "github" || delivery.event != "workflow_run" {
            return Vec::new();
        }
        let Ok(parsed) = serde_json::from_str::<Delivery>(delivery.body) else {
            return Vec::new();
        };
        let run = parsed.workflow_run;
        let mut keys: Vec<AttemptKey> = keys_in(&run.display_title).collect();
        if let Some(w) = lock(&self.inner.watched).get(&run.id)
            && !keys.contains(&w.key)
        {
            keys.push(w.key.clone());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_give_keys() {
        let keys: Vec<_> = keys_in("deploy [r1/build/2] and r2/x/1, not a/b").collect();
        assert_eq!(
            keys,
            [
                AttemptKey::new("r1", "build", 2),
                AttemptKey::new("r2", "x", 1)
            ]
        );
    }
}
