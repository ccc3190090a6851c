//! `baton init`: a commented starter config and workflow that `baton validate` accepts and
//! `baton run` runs with nothing else set up, and that never overwrites a file unasked.

use baton_tests::Sandbox;

const CONFIG: &str = "project/baton.toml";
const WORKFLOW: &str = "project/workflows/hello.yaml";

#[test]
fn init_writes_a_config_and_workflow_that_validate_with_no_environment() {
    let sb = Sandbox::new();
    let out = sb.run(&["init", "project"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("wrote project/baton.toml"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("wrote project/workflows/hello.yaml"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("baton validate -c project/baton.toml"),
        "the next command is named: {}",
        out.stdout
    );

    let validated = sb
        .baton(&["validate", "-c", CONFIG])
        .env_clear()
        .output()
        .expect("run baton validate");
    let stdout = String::from_utf8_lossy(&validated.stdout);
    assert_eq!(
        validated.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(stdout.starts_with("ok: 1 workflow (3 stages)"), "{stdout}");
}

#[test]
fn the_starter_workflow_runs_to_its_end() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["init", "project"]).code, Some(0));
    let out = sb.run(&[
        "run",
        "hello",
        "-c",
        CONFIG,
        "--approve",
        "release",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["status"], "succeeded");
    assert_eq!(out.stage("build")["outputs"]["version"], "0.1.0");
    assert_eq!(out.stage("deploy")["status"], "succeeded");
    assert!(
        sb.path().join("project/baton.db").is_file(),
        "the store sits beside the config"
    );
}

#[test]
fn init_refuses_to_overwrite_and_names_what_exists() {
    let sb = Sandbox::new();
    sb.write(CONFIG, "# mine\n");
    let out = sb.run(&["init", "project"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("project/baton.toml"), "{}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(sb.read(CONFIG), "# mine\n", "the file is left as it was");
    assert!(
        !sb.path().join(WORKFLOW).exists(),
        "nothing is written when one file exists"
    );

    let forced = sb.run(&["init", "project", "--force"]);
    assert_eq!(forced.code, Some(0), "{}{}", forced.stdout, forced.stderr);
    assert_ne!(sb.read(CONFIG), "# mine\n");
    assert!(sb.path().join(WORKFLOW).is_file());
}

#[test]
fn init_refuses_when_only_the_workflow_exists() {
    let sb = Sandbox::new();
    sb.write(WORKFLOW, "name: mine\n");
    let out = sb.run(&["init", "project"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("hello.yaml"), "{}", out.stderr);
    assert!(!out.stderr.contains("baton.toml"), "{}", out.stderr);
    assert!(!sb.path().join(CONFIG).exists());
}

#[test]
fn init_without_a_folder_writes_into_the_current_one() {
    let sb = Sandbox::new();
    let out = sb.run(&["init"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(sb.path().join("baton.toml").is_file());
    assert!(sb.path().join("workflows/hello.yaml").is_file());
    assert_eq!(sb.run(&["validate"]).code, Some(0));
}

#[test]
fn every_key_of_the_starter_config_says_what_it_does() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["init", "project"]).code, Some(0));
    let config = sb.read(CONFIG);
    let lines: Vec<&str> = config.lines().collect();
    let mut keys = 0;
    for (i, line) in lines.iter().enumerate() {
        let is_key = !line.starts_with('#') && line.contains(" = ");
        if !is_key {
            continue;
        }
        keys += 1;
        let commented_above = i > 0 && lines[i - 1].starts_with('#');
        assert!(
            commented_above || line.contains(" # "),
            "`{line}` has no comment saying what it does"
        );
    }
    assert!(keys >= 4, "{config}");
}

#[test]
fn the_commented_out_examples_are_valid_once_enabled() {
    let sb = Sandbox::new();
    assert_eq!(sb.run(&["init", "project"]).code, Some(0));
    // Enable every commented-out table and key (`# [sources.github]`, `# kind = …`) and the
    // commented-out `on:` entry.
    let config = enable(&sb.read(CONFIG), |rest| {
        rest.starts_with('[') || rest.split_once(" = ").is_some_and(|(k, _)| is_key(k))
    });
    let workflow = enable(&sb.read(WORKFLOW), |rest| {
        rest.starts_with("- source:") || rest.starts_with("  event:") || rest.starts_with("  if:")
    });
    assert!(config.contains("\n[sources.github]\n"), "{config}");
    assert!(config.contains("\n[adapters.jenkins]\n"), "{config}");
    assert!(
        !config.contains("token = \"") && !config.contains("secret = \""),
        "secrets are references only:\n{config}"
    );
    sb.write(CONFIG, &config);
    sb.write(WORKFLOW, &workflow);
    // The secrets they reference are set where baton runs, not here.
    let out = sb.run(&["validate", "-c", CONFIG, "--secrets-elsewhere"]);
    assert_eq!(
        out.code,
        Some(0),
        "{}{}\n{config}\n{workflow}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .find(|l| !(l.starts_with("warning: ") && l.contains("is not set")))
            .is_some_and(
                |l| l.starts_with("ok: 1 workflow (3 stages), 1 adapter instance, 1 source")
            ),
        "{}",
        out.stdout
    );
}

/// `text` with the comment mark taken off every line whose rest `enabled` accepts.
fn enable(text: &str, enabled: impl Fn(&str) -> bool) -> String {
    text.lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            match line.trim_start().strip_prefix("# ") {
                Some(rest) if enabled(rest) => format!("{}{rest}\n", &line[..indent]),
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

fn is_key(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}
