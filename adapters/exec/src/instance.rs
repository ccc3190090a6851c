//! The instance block (`[adapters.<name>]` with `kind = "exec"`), declared as a struct and
//! read through the core's typed reader.

use std::path::PathBuf;
use std::time::Duration;

use baton_core::typed::checked;
use baton_core::{FieldError, HumanDuration, read_table};
use serde::Deserialize;
use serde_json::Value;

use crate::DEFAULT_KILL_GRACE;
use crate::environment::InheritEnv;

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
    /// More of baton's environment variables for the commands, besides the basic set
    /// (`PATH`, `HOME`, the locale, …): a list of names, or `true` for all. A variable the
    /// config reads a secret from is never passed. Default: none.
    #[serde(default)]
    pub inherit_env: Option<InheritEnv>,
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// Where attempts live.
    pub(crate) state_dir: PathBuf,
    /// The time between `SIGTERM` and `SIGKILL`.
    pub(crate) kill_grace: Duration,
    /// The variables of baton's environment commands get besides the basic set.
    pub(crate) inherit_env: InheritEnv,
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
        let inherit_env = keys.inherit_env.unwrap_or_default();
        let bad_names = inherit_env.problems();
        for &(i, message) in &bad_names {
            errors.push(FieldError::new(format!("inherit_env[{i}]"), message));
        }
        let state_dir = checked("state_dir", state_dir, errors)?;
        bad_names.is_empty().then_some(Settings {
            state_dir,
            kill_grace: keys.kill_grace.map_or(DEFAULT_KILL_GRACE, |d| d.0),
            inherit_env,
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
