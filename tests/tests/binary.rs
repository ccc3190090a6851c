//! The binary under test is the one cargo built from the current source for this test run, so
//! no end-to-end test passes on a build that predates the code it claims to test.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use baton_tests::{baton_bin, repo_root};

#[test]
fn the_binary_under_test_is_the_one_cargo_built() {
    let under_test = baton_bin();
    if let Some(chosen) = std::env::var_os("BATON_BIN") {
        assert_eq!(under_test, Path::new(&chosen), "BATON_BIN names the binary");
        return;
    }
    let built = Path::new(env!("CARGO_BIN_EXE_baton"));
    assert_eq!(
        under_test.canonicalize().unwrap(),
        built.canonicalize().unwrap(),
        "the tests run {} but cargo built {}",
        under_test.display(),
        built.display()
    );
}

#[test]
fn the_binary_under_test_is_newer_than_every_source_file_it_is_built_from() {
    if std::env::var_os("BATON_BIN").is_some() {
        return; // another build, chosen on purpose
    }
    let built = modified(&baton_bin());
    let mut sources = Vec::new();
    for group in ["crates", "adapters"] {
        for package in std::fs::read_dir(repo_root().join(group)).unwrap() {
            rust_files(&package.unwrap().path().join("src"), &mut sources);
        }
    }
    assert!(sources.len() > 20, "found only {sources:?}");
    let newer: Vec<_> = sources.iter().filter(|f| modified(f) > built).collect();
    assert!(
        newer.is_empty(),
        "{} is older than {newer:?}: it was not built from the current source",
        baton_bin().display()
    );
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir` (none when it does not exist).
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}
