//! `baton validate` on the shipped config and examples, and on broken files.

use std::process::Stdio;

use baton_tests::{Sandbox, repo_root};

/// The shipped config reads its secrets from variables this machine does not set: valid for
/// the machine it is meant for, where each unset one is named as a warning.
#[test]
fn the_shipped_config_validates() {
    let sb = Sandbox::new();
    let config = repo_root().join("config/baton.toml");
    let config = config.to_str().unwrap();
    let out = sb.run(&["validate", "-c", config, "--secrets-elsewhere"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let warnings: Vec<&str> = out
        .stdout
        .lines()
        .take_while(|l| l.starts_with("warning: "))
        .collect();
    assert!(
        warnings.iter().any(|w| w.ends_with(
            "sources.github.secret: secret environment variable `GITHUB_WEBHOOK_SECRET` is not set"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout[warnings.iter().map(|w| w.len() + 1).sum::<usize>()..].starts_with("ok:"),
        "{}",
        out.stdout
    );
    // Here, where serve would refuse to start, they are problems.
    let out = sb.run(&["validate", "-c", config]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("GITHUB_WEBHOOK_SECRET` is not set"),
        "{}",
        out.stdout
    );
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
            Some(config) => sb.run(&[
                "validate",
                "-c",
                config.to_str().unwrap(),
                "--secrets-elsewhere",
            ]),
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
fn secrets_serve_would_refuse_are_problems_and_only_absent_ones_may_be_warnings() {
    let sb = Sandbox::new();
    sb.write("secrets/gitlab/token", "gl-token\n");
    sb.write(
        "baton.toml",
        r#"
[api]
tokens = [{ name = "ops", token = { env = "UNSET_OPS_TOKEN" }, role = "operator" }]

[sources.github]
kind = "github"
secret = { file = "secrets/missing" }

[sources.gitlab]
kind = "gitlab"
token = { file = "secrets/gitlab" }

[sources.deploy]
kind = "generic"
bearer = { token = { file = "/dev/zero" } }
"#,
    );
    let problems = [
        ("api.tokens[0].token", "`UNSET_OPS_TOKEN` is not set"),
        ("sources.github.secret", "`secrets/missing` does not exist"),
        ("sources.gitlab.token", "directory"),
        ("sources.deploy.bearer.token", "not a regular file"),
    ];
    let has = |text: &str, (path, what): (&str, &str)| {
        text.lines()
            .any(|l| l.contains(&format!("baton.toml: {path}: ")) && l.contains(what))
    };

    // /dev/zero is refused at once, not read until memory runs out.
    let out = sb.run(&["validate", "-c", "baton.toml"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    for problem in problems {
        assert!(has(&out.stdout, problem), "{problem:?} in:\n{}", out.stdout);
    }
    assert!(out.stdout.ends_with("4 problems\n"), "{}", out.stdout);

    // For another machine: what is only absent here is a warning, the rest stays wrong.
    let out = sb.run(&["validate", "-c", "baton.toml", "--secrets-elsewhere"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    for problem in &problems[..2] {
        assert!(
            has(&out.stdout, *problem),
            "{problem:?} in:\n{}",
            out.stdout
        );
    }
    let warnings = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .count();
    assert_eq!(warnings, 2, "{}", out.stdout);
    assert!(out.stdout.ends_with("2 problems\n"), "{}", out.stdout);

    // The same config as serve would take it: all secrets readable.
    sb.write(
        "baton.toml",
        "[sources.gitlab]\nkind = \"gitlab\"\ntoken = { file = \"secrets/gitlab/token\" }\n",
    );
    let out = sb.run(&["validate", "-c", "baton.toml"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
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
