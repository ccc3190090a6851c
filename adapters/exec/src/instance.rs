//! The instance block (`[adapters.<name>]` with `kind = "exec"`), declared as a struct and
//! read through the core's typed reader.

use std::path::PathBuf;
use std::time::Duration;

use baton_core::typed::checked;
use baton_core::{FieldError, HumanDuration, read_table};
use serde::Deserialize;
use serde_json::Value;

use crate::DEFAULT_KILL_GRACE;

/// The instance block as written, before the checks serde cannot make.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The directory holding the attempts' folders, a non-empty path. Default: the
    /// program's (`engine.exec_state_dir`, else `<store file>.exec`).
    #[serde(default)]
    pub state_dir: Option<String>,
    /// How long a cancelled command has between `SIGTERM` and `SIGKILL`. Default: `5s`.
    #[serde(default)]
    pub kill_grace: Option<HumanDuration>,
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// Where attempts live.
    pub(crate) state_dir: PathBuf,
    /// The time between `SIGTERM` and `SIGKILL`.
    pub(crate) kill_grace: Duration,
}

/// Checks an instance block, returning the settings (attempts under `default_state_dir`
/// unless the block names another directory) or every problem.
pub(crate) fn parse_instance(
    config: &Value,
    default_state_dir: &std::path::Path,
) -> Result<Settings, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, |keys, errors| {
        let state_dir = match keys.state_dir {
            None => Ok(default_state_dir.to_owned()),
            Some(dir) if dir.is_empty() => {
                Err("expected a directory path as a non-empty string".to_owned())
            }
            Some(dir) => Ok(PathBuf::from(dir)),
        };
        Some(Settings {
            state_dir: checked("state_dir", state_dir, errors)?,
            kill_grace: keys.kill_grace.map_or(DEFAULT_KILL_GRACE, |d| d.0),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_table_lists_every_instance_key() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters.md");
        baton_adapter_kit::docs::check_doc_keys::<InstanceKeys>(&doc, "`exec` instance config");
    }
}
