//! One workflow checked as text against a loaded config, as the editor and the validation
//! API check it, and the `[ui]` settings that let the editor save.

use super::*;

const GATEWAY: &str = r#"
workflows = ["flows/*.yaml"]

[sources.gh]
kind = "github"
secret = { env = "S" }

[adapters.ci]
kind = "jenkins"
url = "http://ci"
"#;

const GOOD: &str =
    "name: good\non: [{ source: manual }]\nstages:\n  a: { uses: exec, with: { run: x } }\n";

/// Every kind of problem a workflow file can have, several at once.
const BROKEN: &str = r#"
name: good
on:
  - source: gh
  - source: gitlub
stages:
  a:
    uses: ci
    with: { parameters: { SHA: 5 } }
    timout: 5m
  b: { uses: cii, with: { job: x } }
  c:
    uses: exec
    needs: [a, zz]
    with: { run: '${{ .stages.b.outputs.x }}' }
  d: { uses: exec, needs: [e], with: { run: x } }
  e: { uses: exec, needs: [d], with: { run: x } }
"#;

fn loaded(dir: &Path) -> Loaded {
    load_in(dir, Some("baton.toml"), &[], no_env()).expect("the gateway loads")
}

#[test]
fn a_workflow_given_as_text_gets_the_problems_its_file_would() {
    let dir = fixture(&[
        ("baton.toml", GATEWAY),
        ("flows/good.yaml", GOOD),
        ("broken.yaml", BROKEN),
    ]);
    let loaded = loaded(dir.path());
    let check = WorkflowCheck::new(&loaded, &kinds());
    let as_file: BTreeSet<(String, String)> =
        load_in(dir.path(), Some("baton.toml"), &["broken.yaml"], no_env())
            .unwrap_err()
            .iter()
            .map(|d| (d.path.clone(), d.message.clone()))
            .collect();
    let given = check.yaml(BROKEN, None);
    let as_text: BTreeSet<(String, String)> = given
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    assert_eq!(as_text, as_file);
    let paths: BTreeSet<&str> = given.iter().map(|p| p.path.as_str()).collect();
    for path in [
        "name",
        "on[1].source",
        "stages.a.timout",
        "stages.a.with.job",
        "stages.a.with.parameters.SHA",
        "stages.b.uses",
        "stages.c.needs[1]",
    ] {
        assert!(paths.contains(path), "{path} in {paths:?}");
    }
    assert!(given.len() >= 9, "{given:#?}");
    // Lines point at the keys: block style exactly, flow style at the nearest key above.
    let line = |path: &str| given.iter().find(|p| p.path == path).unwrap().line;
    assert_eq!(line("name"), Some(2));
    assert_eq!(line("on[1].source"), Some(5));
    assert_eq!(line("stages.a.timout"), Some(10));
    assert_eq!(line("stages.a.with.parameters.SHA"), Some(9));
    assert_eq!(line("stages.b.uses"), Some(11));
    // The same workflow as JSON: the same problems, without lines.
    let json: Value = serde_yaml_ng::from_str(BROKEN).unwrap();
    let from_json = check.json(&json, None);
    assert_eq!(from_json.len(), given.len());
    assert!(from_json.iter().all(|p| p.line.is_none()));
}

#[test]
fn the_name_may_stay_only_for_the_workflow_being_edited() {
    let dir = fixture(&[("baton.toml", GATEWAY), ("flows/good.yaml", GOOD)]);
    let check = WorkflowCheck::new(&loaded(dir.path()), &kinds());
    assert_eq!(check.yaml(GOOD, Some("good")), []);
    let clash = check.yaml(GOOD, None);
    assert_eq!(clash.len(), 1, "{clash:?}");
    assert_eq!(clash[0].path, "name");
    assert!(clash[0].message.contains("also defined in") && clash[0].message.contains("good.yaml"));
    assert_eq!(check.yaml(&GOOD.replace("good", "other"), Some("good")), []);
}

#[test]
fn text_that_is_not_a_workflow_says_where() {
    let dir = fixture(&[("baton.toml", GATEWAY), ("flows/good.yaml", GOOD)]);
    let check = WorkflowCheck::new(&loaded(dir.path()), &kinds());
    let problems = check.yaml("name: a\nstages:\n  a: { uses: exec\n  b: x\n", None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "");
    assert!(
        problems[0].message.starts_with("invalid YAML"),
        "{problems:?}"
    );
    assert!(
        problems[0].line.is_some_and(|l| (3..=5).contains(&l)),
        "{problems:?}"
    );
    let empty = check.yaml("", None);
    assert!(empty[0].message.contains("empty"), "{empty:?}");
    let list = check.yaml("- a\n", None);
    assert!(list[0].message.contains("at the top"), "{list:?}");
}

#[test]
fn saving_is_off_unless_the_ui_section_says_so() {
    let dir = fixture(&[("baton.toml", GATEWAY), ("flows/good.yaml", GOOD)]);
    assert!(!loaded(dir.path()).gateway.ui.save_workflows);
    let on = format!("{GATEWAY}\n[ui]\nsave_workflows = true\n");
    let dir = fixture(&[("baton.toml", &on), ("flows/good.yaml", GOOD)]);
    assert!(loaded(dir.path()).gateway.ui.save_workflows);
    let by_env = load_in(
        dir.path(),
        Some("baton.toml"),
        &[],
        env(&[("BATON_UI__SAVE_WORKFLOWS", "false")]),
    )
    .unwrap();
    assert!(!by_env.gateway.ui.save_workflows);
    let typo = format!("{GATEWAY}\n[ui]\nsave_workflow = true\n");
    let dir = fixture(&[("baton.toml", &typo), ("flows/good.yaml", GOOD)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert!(
        message_at(&err, "ui.save_workflow").contains("save_workflows"),
        "{err}"
    );
}

#[test]
fn a_new_workflow_file_goes_where_the_first_glob_finds_it() {
    let dir = fixture(&[("baton.toml", GATEWAY), ("flows/good.yaml", GOOD)]);
    let globs = loaded(dir.path()).gateway.workflow_globs();
    assert_eq!(
        globs.new_file("fresh"),
        Some(dir.path().join("flows/fresh.yaml"))
    );
    assert!(globs.finds(&dir.path().join("flows/good.yaml")));
    assert!(!globs.finds(&dir.path().join("good.yaml")));
    let mut other = globs;
    other.patterns = vec!["deep/**/*.yml".into()];
    assert_eq!(
        other.new_file("fresh"),
        Some(dir.path().join("deep/fresh.yml"))
    );
    other.patterns = vec!["only-this.yaml".into()];
    assert_eq!(other.new_file("fresh"), None);
    other.patterns.clear();
    assert_eq!(other.new_file("fresh"), None);
}
