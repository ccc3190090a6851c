//! `baton adapters`: the kinds built in, as each declares itself, and agreeing with what the
//! rest of baton does with them.

use baton_tests::{Sandbox, repo_root};
use serde_json::Value;

/// The `--json` listing.
fn listing(sb: &Sandbox) -> Vec<Value> {
    let out = sb.run(&["adapters", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    out.json().as_array().expect("a JSON array").clone()
}

fn text<'a>(kind: &'a Value, key: &str) -> &'a str {
    kind[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {kind}"))
}

fn flag(kind: &Value, key: &str) -> bool {
    kind[key]
        .as_bool()
        .unwrap_or_else(|| panic!("{key} in {kind}"))
}

/// The anchor a Markdown heading gets: lowercase, backticks and punctuation dropped, spaces
/// as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| {
            if c == ' ' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

#[test]
fn every_built_in_kind_is_listed_with_a_summary_and_docs_that_exist() {
    let sb = Sandbox::new();
    let kinds = listing(&sb);
    let names: Vec<&str> = kinds.iter().map(|k| text(k, "kind")).collect();
    assert_eq!(
        names,
        [
            "approval",
            "buildbot",
            "concourse",
            "docker",
            "exec",
            "github-actions",
            "gitlab-ci",
            "jenkins",
            "kubernetes",
            "registry",
            "travis"
        ]
    );
    for kind in &kinds {
        assert!(!text(kind, "summary").is_empty(), "{kind}");
        let docs = text(kind, "docs");
        let (page, fragment) = docs.split_once('#').unwrap_or((docs, ""));
        let page = repo_root().join(page);
        let markdown = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("{}: {e} ({kind})", page.display()));
        if !fragment.is_empty() {
            let anchors: Vec<String> = markdown
                .lines()
                .filter_map(|l| l.strip_prefix('#'))
                .map(|l| anchor(l.trim_start_matches('#')))
                .collect();
            assert!(
                anchors.iter().any(|a| a == fragment),
                "{docs}: no heading with anchor `{fragment}` in {anchors:?}"
            );
        }
    }
    let deciding: Vec<&str> = kinds
        .iter()
        .filter(|k| flag(k, "takes_decisions"))
        .map(|k| text(k, "kind"))
        .collect();
    assert_eq!(deciding, ["approval"]);
}

#[test]
fn the_kinds_without_a_block_are_exactly_those_a_lone_workflow_may_use() {
    let sb = Sandbox::new();
    for kind in listing(&sb) {
        let name = text(&kind, "kind");
        let file = sb.write(
            &format!("{name}.yaml"),
            &format!("name: w\nstages:\n  a: {{ uses: {name}, with: {{ run: 'true' }} }}\n"),
        );
        let out = sb.run(&["validate", file.to_str().unwrap()]);
        let unknown = out.stdout.contains(&format!("unknown adapter `{name}`"));
        assert_eq!(
            unknown,
            !flag(&kind, "builtin_instance"),
            "{name}: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn only_a_kind_that_takes_decisions_can_be_approved() {
    let sb = Sandbox::new();
    for kind in listing(&sb) {
        let name = text(&kind, "kind");
        if !flag(&kind, "builtin_instance") {
            continue;
        }
        let with = if name == "exec" {
            "{ run: 'true' }"
        } else {
            "{}"
        };
        let file = sb.write(
            &format!("{name}.yaml"),
            &format!("name: w\nstages:\n  a: {{ uses: {name}, with: {with}, timeout: 30s }}\n"),
        );
        let store = format!(
            "sqlite://{}",
            sb.path().join(format!("{name}.db")).display()
        );
        let out = sb.run(&[
            "run",
            file.to_str().unwrap(),
            "--approve",
            "a",
            "--store",
            &store,
        ]);
        let refused = out.code == Some(2) && out.stderr.contains("not an approval stage");
        assert_eq!(
            refused,
            !flag(&kind, "takes_decisions"),
            "{name}: {:?}\n{}{}",
            out.code,
            out.stdout,
            out.stderr
        );
        if !refused {
            assert_eq!(out.code, Some(0), "{name}: {}{}", out.stdout, out.stderr);
        }
    }
}

#[test]
fn the_table_has_a_line_per_kind() {
    let sb = Sandbox::new();
    let kinds = listing(&sb);
    let out = sb.run(&["adapters"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), kinds.len() + 1, "{}", out.stdout);
    assert!(lines[0].starts_with("KIND"), "{}", out.stdout);
    for (line, kind) in lines[1..].iter().zip(&kinds) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        assert_eq!(
            words[..4],
            [
                text(kind, "kind"),
                yes_no(!flag(kind, "builtin_instance")),
                yes_no(flag(kind, "takes_decisions")),
                text(kind, "docs"),
            ],
            "{line}"
        );
        assert!(line.ends_with(text(kind, "summary")), "{line}");
    }
}
