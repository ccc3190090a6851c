//! `baton validate` on the shipped config and examples, and on broken files.

use std::process::Stdio;

use baton_tests::{Sandbox, repo_root};

#[test]
fn the_shipped_config_validates() {
    let sb = Sandbox::new();
    let config = repo_root().join("config/baton.toml");
    let out = sb.run(&["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("ok:"), "{}", out.stdout);
}

#[test]
fn the_summary_counts_in_words_that_agree_with_the_numbers() {
    let sb = Sandbox::new();
    let one = sb.write(
        "one.yaml",
        "name: one\nstages:\n  only: { uses: exec, with: { run: 'true' } }\n",
    );
    let two = sb.write(
        "two.yaml",
        "name: two\nstages:\n  a: { uses: exec, with: { run: 'true' } }\n  b: { uses: exec, needs: [a], with: { run: 'true' } }\n",
    );
    let out = sb.run(&["validate", one.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("ok: 1 workflow (1 stage), 0 adapter instances, 0 sources")
    );
    assert!(
        lines.next().unwrap().ends_with("one.yaml): 1 stage"),
        "{}",
        out.stdout
    );

    let out = sb.run(&["validate", one.to_str().unwrap(), two.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("ok: 2 workflows (3 stages), 0 adapter instances, 0 sources\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("two.yaml): 2 stages\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn every_example_workflow_validates() {
    let sb = Sandbox::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        let config = ["baton.toml", "baton.yaml"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file());
        let out = match config {
            Some(config) => sb.run(&["validate", "-c", config.to_str().unwrap()]),
            None => {
                let workflow = dir.join("workflow.yaml");
                assert!(
                    workflow.is_file(),
                    "{} has neither a baton.toml nor a workflow.yaml",
                    dir.display()
                );
                sb.run(&["validate", workflow.to_str().unwrap()])
            }
        };
        assert_eq!(
            out.code,
            Some(0),
            "{}: {}{}",
            dir.display(),
            out.stdout,
            out.stderr
        );
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn every_problem_is_reported_at_once_with_file_and_key_path() {
    let sb = Sandbox::new();
    sb.write(
        "baton.toml",
        r#"
workflows = ["wf/*.yaml"]
[sources.github]
kind = "github"
secret = "plain-text-secret"
[engine]
default_timeout = "soon"
"#,
    );
    sb.write(
        "wf/a.yaml",
        r#"
name: dup
on: [{ source: gitlab }]
stages:
  a: { uses: exec, with: { run: 'true' }, needs: [ghost] }
  b: { uses: jenkins, with: { x: '${{ .stages.c.outputs }}' } }
  c: { uses: exec, with: { run: 'true' }, needs: [d], colour: red }
  d: { uses: exec, with: { run: '${{ ][ }}' }, needs: [c] }
"#,
    );
    sb.write(
        "wf/b.yaml",
        "name: dup\nstages:\n  x: { uses: exec, with: { run: 'true' }, timeout: 5 minutes }\n",
    );
    let out = sb.run(&["validate"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let text = out.stdout;
    for expected in [
        "baton.toml: sources.github.secret",
        "baton.toml: engine.default_timeout",
        "a.yaml: on[0].source",
        "a.yaml: stages.a.needs[0]",
        "a.yaml: stages.b.uses",
        "a.yaml: stages.c.colour",
        "a.yaml: stages.d.with.run",
        "b.yaml: stages.x.timeout",
        "cycle",
        "dup",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        text.contains("env ="),
        "the secret problem says how to write a reference:\n{text}"
    );
}

#[test]
fn empty_binary_and_huge_files_give_errors_not_crashes() {
    let sb = Sandbox::new();
    sb.write("empty.yaml", "");
    std::fs::write(
        sb.path().join("binary.yaml"),
        [0u8, 159, 146, 150, 255, 0, 1],
    )
    .unwrap();
    std::fs::write(
        sb.path().join("huge.yaml"),
        "a: ".to_string() + &"x".repeat(9 << 20),
    )
    .unwrap();
    for file in ["empty.yaml", "binary.yaml", "huge.yaml"] {
        let out = sb.run(&["validate", file]);
        assert_eq!(out.code, Some(1), "{file}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(file), "{file}: {}", out.stdout);
    }
}

#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    let sb = Sandbox::new();
    sb.write(
        "one.yaml",
        "name: one\nstages:\n  only: { uses: exec, with: { run: 'true' } }\n",
    );
    for args in [
        &["validate", "one.yaml"][..],
        &["adapters"],
        &["validate", "no-such.yaml"],
    ] {
        // As `baton validate one.yaml | head -0`: the reader is gone before baton writes.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = sb
            .baton(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
