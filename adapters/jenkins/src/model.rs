//! What Jenkins answers, read leniently (every field optional, unknown ones ignored), and how
//! its words map to baton's states.

use baton_core::ExternalState;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ATTEMPT_PARAMETER, Unstable};

/// `tree` of a job read before a trigger: its URL, class and parameter definitions.
pub(crate) const JOB_TREE: &str = "_class,url,buildable,property[parameterDefinitions[name,type]]";
/// `tree` of a queue item.
pub(crate) const QUEUE_ITEM_TREE: &str = "_class,id,why,blocked,buildable,stuck,cancelled,inQueueSince,executable[number,url],task[url,name]";
/// `tree` of the whole queue, for `find`.
pub(crate) const QUEUE_TREE: &str =
    "items[_class,id,why,cancelled,inQueueSince,task[url],actions[parameters[name,value]]]";
/// `tree` of a build's state.
pub(crate) const BUILD_STATE_TREE: &str =
    "number,url,building,inProgress,result,duration,timestamp,queueId";
/// `tree` of a build's outputs.
pub(crate) const BUILD_OUTPUT_TREE: &str = "number,url,building,result,duration,timestamp,queueId,artifacts[fileName,relativePath,displayPath],actions[_class,parameters[name,value]]";
/// How many recent builds `find` and the lost-queue-item search look through.
pub(crate) const RECENT_BUILDS: u32 = 100;

/// `tree` of the recent builds, for matching by queue id or parameters.
pub(crate) fn builds_tree() -> String {
    format!(
        "builds[number,url,queueId,timestamp,building,result,actions[parameters[name,value]]]{{0,{RECENT_BUILDS}}}"
    )
}

/// A job (or a folder, when it has no parameters and is not buildable).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Job {
    /// The Java class: tells jobs from folders.
    #[serde(rename = "_class", default)]
    pub class: Option<String>,
    /// Jenkins' URL of the job.
    #[serde(default)]
    pub url: Option<String>,
    /// False for a disabled job; absent for folders.
    #[serde(default)]
    pub buildable: Option<bool>,
    /// Job properties; the parameters live in one of them.
    #[serde(default)]
    pub property: Vec<Property>,
    /// Recent builds, when asked for.
    #[serde(default)]
    pub builds: Vec<Build>,
}

/// A job property.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Property {
    /// Present on `ParametersDefinitionProperty`.
    #[serde(rename = "parameterDefinitions", default)]
    pub parameter_definitions: Option<Vec<ParameterDefinition>>,
}

/// A parameter the job defines.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ParameterDefinition {
    /// Its name.
    #[serde(default)]
    pub name: String,
}

impl Job {
    /// The names of the parameters the job defines.
    pub(crate) fn parameter_names(&self) -> Vec<String> {
        self.property
            .iter()
            .filter_map(|p| p.parameter_definitions.as_ref())
            .flatten()
            .map(|d| d.name.clone())
            .collect()
    }

    /// True for folders and multibranch projects, which hold jobs rather than run builds.
    pub(crate) fn is_folder(&self) -> bool {
        let class = self.class.as_deref().unwrap_or_default();
        self.buildable.is_none()
            && (class.contains("Folder")
                || class.contains("MultiBranch")
                || class.contains("OrganizationFolder"))
    }
}

/// A queue item (`/queue/item/<N>/api/json`, or an element of `/queue/api/json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct QueueItem {
    /// `hudson.model.Queue$WaitingItem`, `$BlockedItem`, `$BuildableItem`, `$LeftItem`.
    #[serde(rename = "_class", default)]
    pub class: Option<String>,
    /// The queue id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Why it waits.
    #[serde(default)]
    pub why: Option<String>,
    /// Stuck: no executor can ever take it.
    #[serde(default)]
    pub stuck: Option<bool>,
    /// On a left item: true when cancelled before it started.
    #[serde(default)]
    pub cancelled: Option<bool>,
    /// On a left item: the build it became.
    #[serde(default)]
    pub executable: Option<Executable>,
    /// When it entered the queue (ms since the epoch, Jenkins' clock).
    #[serde(rename = "inQueueSince", default)]
    pub in_queue_since: Option<u64>,
    /// The job it belongs to.
    #[serde(default)]
    pub task: Option<Task>,
    /// Actions; the parameters live in one of them.
    #[serde(default)]
    pub actions: Vec<Action>,
}

impl QueueItem {
    /// The class's last part: `WaitingItem`, `LeftItem`, …
    pub(crate) fn short_class(&self) -> &str {
        let class = self.class.as_deref().unwrap_or("queued");
        class.rsplit(['$', '.']).next().unwrap_or(class)
    }
}

/// The build a queue item became.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Executable {
    /// Its number.
    #[serde(default)]
    pub number: Option<u64>,
    /// Its URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// A queue item's job.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Task {
    /// The job's URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// An action of a build or queue item.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Action {
    /// Present on the parameters action.
    #[serde(default)]
    pub parameters: Option<Vec<Parameter>>,
}

/// A parameter as run.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Parameter {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its value: text for string and choice parameters, a boolean for boolean ones.
    #[serde(default)]
    pub value: Value,
}

/// The parameters in a list of actions, by name.
pub(crate) fn parameters(actions: &[Action]) -> Map<String, Value> {
    actions
        .iter()
        .filter_map(|a| a.parameters.as_ref())
        .flatten()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect()
}

/// The value of `BATON_ATTEMPT` among `actions`' parameters.
pub(crate) fn attempt_of(actions: &[Action]) -> Option<String> {
    parameters(actions)
        .get(ATTEMPT_PARAMETER)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// True when every one of `wanted` is among `actions`' parameters with the same text.
pub(crate) fn has_parameters(actions: &[Action], wanted: &[(String, String)]) -> bool {
    let have = parameters(actions);
    wanted.iter().all(|(name, value)| {
        have.get(name).is_some_and(|v| match v {
            Value::String(s) => s == value,
            Value::Bool(b) => value == if *b { "true" } else { "false" },
            Value::Number(n) => value.parse::<f64>().ok() == n.as_f64(),
            _ => false,
        })
    })
}

/// A build.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Build {
    /// Its number.
    #[serde(default)]
    pub number: Option<u64>,
    /// Its URL.
    #[serde(default)]
    pub url: Option<String>,
    /// True while it runs.
    #[serde(default)]
    pub building: Option<bool>,
    /// Pipeline runs: true while it runs.
    #[serde(rename = "inProgress", default)]
    pub in_progress: Option<bool>,
    /// `SUCCESS`, `UNSTABLE`, `FAILURE`, `ABORTED`, `NOT_BUILT`; null while running.
    #[serde(default)]
    pub result: Option<String>,
    /// Milliseconds it took (0 while running).
    #[serde(default)]
    pub duration: Option<u64>,
    /// When it started (ms since the epoch, Jenkins' clock).
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// The queue item it came from.
    #[serde(rename = "queueId", default)]
    pub queue_id: Option<u64>,
    /// Archived files.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Actions; the parameters live in one of them.
    #[serde(default)]
    pub actions: Vec<Action>,
}

impl Build {
    /// True while the build runs.
    pub(crate) fn running(&self) -> bool {
        self.building == Some(true) || self.in_progress == Some(true)
    }
}

/// An archived file of a build.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Artifact {
    /// The file's name.
    #[serde(rename = "fileName", default)]
    pub file_name: String,
    /// Its path among the build's artifacts.
    #[serde(rename = "relativePath", default)]
    pub relative_path: String,
}

/// Maps a finished build's `result` to a state; `None` (`null`) and unknown words are
/// [`ExternalState::Unknown`], never terminal.
pub(crate) fn map_result(result: Option<&str>, unstable: Unstable) -> ExternalState {
    match result {
        Some("SUCCESS") => ExternalState::Succeeded { warnings: false },
        Some("UNSTABLE") => match unstable {
            Unstable::Success => ExternalState::Succeeded { warnings: true },
            Unstable::Failure => ExternalState::Failed,
        },
        Some("FAILURE") => ExternalState::Failed,
        Some("ABORTED") => ExternalState::Cancelled,
        Some("NOT_BUILT") => ExternalState::Skipped,
        Some(other) => ExternalState::Unknown(other.to_owned()),
        None => ExternalState::Unknown("null".to_owned()),
    }
}

/// The part of a Jenkins URL below the controller's root: `https://ci/jenkins/job/a/14/` →
/// `job/a/14/`. Jenkins builds its URLs from its own configured root URL, which may differ
/// from the one baton reaches it at (a proxy, an internal name), so baton keeps only this
/// part and joins it to its own `url`. This also keeps a stored reference from ever sending
/// the credentials to another host.
pub(crate) fn below_root(url: &str) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    let path = parsed.path();
    let at = path.find("/job/")?;
    let mut rel = path[at + 1..].to_owned();
    if !rel.ends_with('/') {
        rel.push('/');
    }
    Some(rel)
}

/// The queue id at the end of a trigger's `Location` (`…/queue/item/812/`).
pub(crate) fn queue_id_of_location(location: &str) -> Option<u64> {
    let trimmed = location.trim().trim_end_matches('/');
    let (head, id) = trimmed.rsplit_once('/')?;
    if !head.ends_with("/queue/item") && head != "queue/item" {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_and_unknown_is_never_terminal() {
        let f = Unstable::Failure;
        assert_eq!(
            map_result(Some("SUCCESS"), f),
            ExternalState::Succeeded { warnings: false }
        );
        assert_eq!(map_result(Some("UNSTABLE"), f), ExternalState::Failed);
        assert_eq!(
            map_result(Some("UNSTABLE"), Unstable::Success),
            ExternalState::Succeeded { warnings: true }
        );
        assert_eq!(map_result(Some("FAILURE"), f), ExternalState::Failed);
        assert_eq!(map_result(Some("ABORTED"), f), ExternalState::Cancelled);
        assert_eq!(map_result(Some("NOT_BUILT"), f), ExternalState::Skipped);
        for odd in [map_result(Some("SUPERSEDED"), f), map_result(None, f)] {
            assert!(!odd.is_terminal(), "{odd:?}");
        }
    }

    #[test]
    fn urls_below_the_root() {
        assert_eq!(
            below_root("https://ci.example/jenkins/job/team/job/deploy/14/").as_deref(),
            Some("job/team/job/deploy/14/")
        );
        assert_eq!(
            below_root("http://x/job/repo/job/feature%252Ffoo/3").as_deref(),
            Some("job/repo/job/feature%252Ffoo/3/")
        );
        assert_eq!(below_root("http://x/view/all/"), None);
        assert_eq!(below_root("not a url"), None);
    }

    #[test]
    fn queue_locations() {
        assert_eq!(
            queue_id_of_location("https://ci.example/queue/item/812/"),
            Some(812)
        );
        assert_eq!(
            queue_id_of_location("http://ci/jenkins/queue/item/9"),
            Some(9)
        );
        assert_eq!(queue_id_of_location("https://ci.example/job/x/"), None);
        assert_eq!(queue_id_of_location("https://ci/queue/item/x/"), None);
    }

    #[test]
    fn lenient_reads() {
        let b: Build = serde_json::from_str(
            r#"{"_class":"x","number":3,"result":null,"building":false,"extra":{"a":1},
               "actions":[{},{"_class":"hudson.model.ParametersAction","parameters":[{"name":"BATON_ATTEMPT","value":"r/s/1"},{"name":"B","value":true}]}]}"#,
        )
        .unwrap();
        assert_eq!(attempt_of(&b.actions).as_deref(), Some("r/s/1"));
        assert!(has_parameters(&b.actions, &[("B".into(), "true".into())]));
        assert!(!has_parameters(&b.actions, &[("C".into(), "x".into())]));
        let q: QueueItem =
            serde_json::from_str(r#"{"_class":"hudson.model.Queue$LeftItem","id":7}"#).unwrap();
        assert_eq!(q.short_class(), "LeftItem");
    }
}
