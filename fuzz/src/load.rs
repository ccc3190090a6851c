//! Config and workflow loading: `baton_config::load` on files with fuzzed content.
//!
//! # Input
//!
//! One byte, then the file's text: `t` makes it a `.toml` file, anything else a `.yaml`
//! file (both formats are read for configs and workflows alike).
//!
//! # Checks
//!
//! - no panic, whatever the text;
//! - a refused load names at least one problem, each in a file the load was given;
//! - a config that loads builds: every source and every adapter instance can be set up
//!   from it (secrets always resolve here), as `baton serve` does after the same load;
//! - a workflow file that loads gives exactly one workflow.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use baton_config::{Diagnostics, ENVIRONMENT, Loaded};
use baton_core::Kinds;

use crate::{GATEWAY, Named, kinds, scratch};

/// The file name for the input's format byte.
fn file_name(stem: &str, format: u8) -> String {
    if format == b't' {
        format!("{stem}.toml")
    } else {
        format!("{stem}.yaml")
    }
}

fn check_problems(problems: &Diagnostics, files: &[&Path]) {
    assert!(!problems.is_empty(), "a refused load with no problem");
    for problem in problems.iter() {
        assert!(
            files.contains(&problem.file.as_path()) || problem.file == Path::new(ENVIRONMENT),
            "a problem in a file the load was not given: {problem}"
        );
        assert!(
            !problem.message.is_empty(),
            "a problem with no message: {problem}"
        );
    }
    // Printing every problem is what `baton validate` does with them.
    let _ = problems.to_string();
}

struct Folder {
    dir: PathBuf,
    kinds: Kinds,
}

fn folder(what: &'static str, cell: &'static OnceLock<Folder>) -> &'static Folder {
    cell.get_or_init(|| {
        let dir = scratch(what);
        let kinds = kinds(&dir.join("exec"));
        Folder { dir, kinds }
    })
}

/// Loads `data` as a gateway config file and checks the outcome.
pub fn config(data: &[u8]) {
    static FOLDER: OnceLock<Folder> = OnceLock::new();
    let Some((&format, text)) = data.split_first() else {
        return;
    };
    let folder = folder("config", &FOLDER);
    let file = folder.dir.join(file_name("baton", format));
    std::fs::write(&file, text).expect("writing the config");
    // `workflows` globs may name any folder, `/` included: walking the whole disk for each
    // input finds nothing about the loader, so the environment override empties the list.
    let env = [("BATON_WORKFLOWS".to_owned(), "[]".to_owned())];
    let loaded = baton_config::load(Some(&file), &[], &folder.kinds, env);
    let _ = std::fs::remove_file(&file);
    match loaded {
        Err(problems) => check_problems(&problems, &[&file]),
        Ok(loaded) => build_everything(&loaded, &folder.kinds),
    }
}

/// What `baton serve` sets up from a loaded config before it listens.
fn build_everything(loaded: &Loaded, kinds: &Kinds) {
    let gateway = &loaded.gateway;
    for (name, source) in &gateway.sources {
        if let Err(e) = baton_server::sources::Source::new(name, source, &Named) {
            panic!("source `{name}` loaded but cannot be set up: {e}");
        }
    }
    for (name, instance) in gateway.instances(kinds) {
        let Some(kind) = kinds.get(&instance.kind) else {
            panic!(
                "adapter `{name}` loaded with an unknown kind `{}`",
                instance.kind
            );
        };
        if let Err(e) = kind.build(&name, &instance.config, &Named) {
            panic!("adapter `{name}` loaded but cannot be built: {e}");
        }
    }
    let _ = gateway.stage_defaults(kinds);
    let _ = gateway.store_url();
}

/// Loads `data` as a workflow file beside a config with every kind of source and adapter
/// (so that its references to them and each stage's `with:` are checked), and checks the
/// outcome.
pub fn workflow(data: &[u8]) {
    static FOLDER: OnceLock<Folder> = OnceLock::new();
    let Some((&format, text)) = data.split_first() else {
        return;
    };
    let folder = folder("workflow", &FOLDER);
    let config = folder.dir.join("baton.toml");
    if !config.exists() {
        std::fs::write(&config, format!("workflows = []\n{GATEWAY}")).expect("writing the config");
    }
    let file = folder.dir.join(file_name("workflow", format));
    std::fs::write(&file, text).expect("writing the workflow");
    let loaded = baton_config::load(
        Some(&config),
        std::slice::from_ref(&file),
        &folder.kinds,
        [],
    );
    let _ = std::fs::remove_file(&file);
    match loaded {
        Err(problems) => check_problems(&problems, &[&config, &file]),
        Ok(loaded) => assert_eq!(
            loaded.workflows.len(),
            1,
            "one workflow file loaded as {} workflows",
            loaded.workflows.len()
        ),
    }
}
