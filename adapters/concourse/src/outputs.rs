//! What a finished build leaves: its outputs (the versions of its inputs and outputs) and
//! its logs (its page, and its log's tail from the event stream).

use baton_core::adapter::LogLink;
use baton_core::{AdapterError, ExternalRef, Logs};
use serde_json::{Map, Value, json};

use crate::ConcourseAdapter;
use crate::model::{Resources, Versioned};
use crate::tracked::Tracked;

/// `name → version` for each of `items` (the last one wins where a name repeats).
fn by_name(items: &[Versioned]) -> Map<String, Value> {
    items
        .iter()
        .map(|v| (v.name.clone(), v.version.clone()))
        .collect()
}

impl ConcourseAdapter {
    /// `id`, `url`, `name`, `status`, `resources` (`inputs` and `outputs`, name →
    /// version) and, when the stage checked a resource first, `check`.
    pub(crate) async fn read_outputs(
        &self,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let (id, tracked) = Tracked::read(external)?;
        let status = match &tracked.status {
            Some(status) => status.clone(),
            None => self.build(id).await?.status,
        };
        let client = &self.inner.client;
        let resources: Resources = client
            .get_json(
                client.api(&["builds", &id.to_string(), "resources"]),
                "read a build's resources",
            )
            .await?;
        let inputs = by_name(&resources.inputs);
        let mut outputs = Map::new();
        outputs.insert("id".into(), json!(id.to_string()));
        outputs.insert("url".into(), json!(external.url));
        outputs.insert("name".into(), json!(tracked.name));
        outputs.insert("status".into(), json!(status));
        if let Some(check) = &tracked.check {
            // Whether the build took the version the stage pushed: Concourse gives a job
            // the newest version its constraints allow, which may be another.
            let used = check
                .version
                .as_ref()
                .map(|v| inputs.get(&check.resource) == Some(&Value::Object(v.clone())));
            outputs.insert(
                "check".into(),
                json!({"resource": check.resource, "version": check.version, "used": used}),
            );
        }
        outputs.insert(
            "resources".into(),
            json!({"inputs": inputs, "outputs": by_name(&resources.outputs)}),
        );
        Ok(outputs)
    }

    /// A link to the build's page and, as text, the tail of its log.
    pub(crate) async fn read_logs(&self, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let (id, _) = Tracked::read(external)?;
        let mut logs = Logs::default();
        if let Some(url) = &external.url {
            logs.links.push(LogLink {
                name: "build".into(),
                url: url.clone(),
            });
        }
        let log = self.event_log(id).await?;
        let text = log.tail.text();
        logs.text = (!text.is_empty()).then(|| text.to_owned());
        Ok(logs)
    }
}
