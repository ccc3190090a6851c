//! `baton init`: a commented starter config and workflow in a folder, ready for
//! `baton validate` and `baton run` with nothing else set up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

/// The starter gateway config.
const CONFIG: &str = include_str!("starter/baton.toml");

/// The starter workflow, which the config's `workflows` glob finds.
const WORKFLOW: &str = include_str!("starter/workflow.yaml");

/// The workflow's name, for the next command printed.
const WORKFLOW_NAME: &str = "hello";

/// `baton init`.
#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// The folder to write into (created if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    force: bool,
}

/// The files `baton init` writes, relative to its folder, with their text.
fn starter_files() -> [(&'static str, &'static str); 2] {
    [("baton.toml", CONFIG), ("workflows/hello.yaml", WORKFLOW)]
}

/// Writes the starter files into `args.dir`; refuses (exit 2, nothing written) when any of
/// them exists, unless `--force`.
pub(crate) fn init(args: InitArgs) -> ExitCode {
    let files: Vec<(PathBuf, &str)> = starter_files()
        .into_iter()
        .map(|(name, text)| (args.dir.join(name), text))
        .collect();
    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .filter(|(path, _)| path.symlink_metadata().is_ok())
            .map(|(path, _)| path.display().to_string())
            .collect();
        if !existing.is_empty() {
            eprintln!(
                "baton init: {} already exist{}; nothing written (--force overwrites)",
                existing.join(", "),
                if existing.len() == 1 { "s" } else { "" }
            );
            return ExitCode::from(2);
        }
    }
    for (path, text) in &files {
        if let Err(e) = write(path, text) {
            eprintln!("baton init: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    let config = files[0].0.display();
    println!("next: baton validate -c {config}");
    println!("then: baton run {WORKFLOW_NAME} -c {config}");
    ExitCode::SUCCESS
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}
