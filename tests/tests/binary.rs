//! The binary under test is the one cargo built from the current source for this test run
//! (cargo builds a package's binaries before its integration tests and names them in
//! `CARGO_BIN_EXE_<name>`), so no end-to-end test passes on a build that predates the code
//! it claims to test; and every
//! file of `tests/tests/` runs as a test of baton-cli, so none is silently left out.

use std::path::Path;

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
