//! The binary under test is the one cargo built from the current source for this test run, so
//! no end-to-end test passes on a build that predates the code it claims to test; and every
//! file of `tests/tests/` runs as a test of baton-cli, so none is silently left out.

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
fn the_binary_under_test_is_newer_than_every_source_file_it_was_built_from() {
    if std::env::var_os("BATON_BIN").is_some() {
        return; // another build, chosen on purpose
    }
    let binary = baton_bin();
    let built = modified(&binary);
    // Cargo lists every file a binary was built from in `<binary>.d` beside it.
    let dep_info = PathBuf::from(format!("{}.d", binary.display()));
    let text = std::fs::read_to_string(&dep_info)
        .unwrap_or_else(|e| panic!("{}: {e}", dep_info.display()));
    let sources = sources_in(&text);
    assert!(
        sources
            .iter()
            .filter(|s| s.starts_with(repo_root()))
            .count()
            > 20,
        "{text}"
    );
    let newer: Vec<&PathBuf> = sources
        .iter()
        .filter(|f| f.symlink_metadata().is_err() || modified(f) > built)
        .collect();
    assert!(
        newer.is_empty(),
        "{} was not built from the current source: changed or gone since: {newer:?}",
        binary.display()
    );
}

#[test]
fn every_end_to_end_file_is_a_test_target_of_baton_cli() {
    let manifest = std::fs::read_to_string(repo_root().join("crates/cli/Cargo.toml")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("tests/tests")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        let line = format!("{{ name = \"{stem}\", path = \"../../tests/tests/{name}\" }},");
        if !manifest.contains(&line) {
            missing.push(line);
        }
    }
    assert!(
        missing.is_empty(),
        "add to the `test` list of crates/cli/Cargo.toml:\n    {}",
        missing.join("\n    ")
    );
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The prerequisites of the first rule of a Makefile-style dependency file: the paths after
/// `target:`, separated by spaces (a space inside a path is written `\ `).
fn sources_in(dep_info: &str) -> Vec<PathBuf> {
    let line = dep_info.lines().next().unwrap_or_default();
    let Some((_, prerequisites)) = line.split_once(": ") else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = prerequisites.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => current.push(chars.next().unwrap()),
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}
