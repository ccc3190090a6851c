use super::*;

/// A workflow with comments everywhere the editor might disturb them: above and beside
/// keys, inside `with`, between stages, at the end.
const COMMENTED: &str = "\
# Release pipeline for the shop.
# Owned by the platform team.

name: shop-release   # shown in the UI

# Who may start it.
on:
  - source: github      # pushes to main
    event: push
    if: '.ref == \"refs/heads/main\"'
  - source: manual

stages:
  # Unit tests run first.
  unit:
    uses: exec
    with:
      # the whole suite
      run: make test   # slow
    timeout: 45m   # keep in step with CI

  # Packages the build.
  package:
    needs: [unit]   # only after tests
    uses: exec
    with: { run: make package }

  # Asks a person.
  # Two lines of comment.
  release:
    needs: package
    uses: approval
    with:
      message: 'Ship it?'
report: []   # nothing reported
# The end.
";

fn draft() -> WorkflowDraft {
    draft_of(COMMENTED).expect("the file reads as a draft")
}

fn stage<'a>(draft: &'a mut WorkflowDraft, id: &str) -> &'a mut DraftStage {
    draft.stages.iter_mut().find(|s| s.id == id).unwrap()
}

/// The lines of `after` that are not in `before`, and those of `before` gone from `after`,
/// each as often as it was added or removed.
fn changed_lines(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let minus = |a: &str, b: &str| {
        let mut rest: Vec<&str> = b.lines().collect();
        let mut out = Vec::new();
        for line in a.lines() {
            match rest.iter().position(|l| *l == line) {
                Some(i) => {
                    rest.remove(i);
                }
                None => out.push(line.to_owned()),
            }
        }
        out
    };
    (minus(after, before), minus(before, after))
}

fn parsed(text: &str) -> Value {
    read(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

#[test]
fn a_file_reads_as_a_draft_with_its_with_text_as_written() {
    let draft = draft();
    assert_eq!(draft.name, "shop-release");
    assert_eq!(
        draft.on,
        [
            DraftTrigger {
                source: "github".into(),
                event: "push".into(),
                condition: ".ref == \"refs/heads/main\"".into(),
            },
            DraftTrigger {
                source: "manual".into(),
                ..DraftTrigger::default()
            }
        ]
    );
    let ids: Vec<&str> = draft.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["unit", "package", "release"]);
    assert_eq!(
        draft.stages[0].with,
        "# the whole suite\nrun: make test   # slow\n"
    );
    assert_eq!(draft.stages[1].with, "{ run: make package }\n");
    assert_eq!(draft.stages[1].needs, ["unit"]);
    assert_eq!(draft.stages[2].needs, ["package"], "one id reads as a list");
    assert_eq!(draft.stages[2].uses, "approval");
}

#[test]
fn an_unchanged_draft_gives_back_the_file_byte_for_byte() {
    let composed = compose(Some(COMMENTED), &draft());
    assert_eq!(composed.text, COMMENTED);
    assert!(composed.comments_kept);
}

#[test]
fn changing_uses_and_name_keeps_the_comments_beside_them() {
    let mut draft = draft();
    draft.name = "shop-release-2".into();
    stage(&mut draft, "unit").uses = "ci".into();
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept);
    let (added, removed) = changed_lines(COMMENTED, &composed.text);
    assert_eq!(
        added,
        ["name: shop-release-2   # shown in the UI", "    uses: ci"]
    );
    assert_eq!(
        removed,
        ["name: shop-release   # shown in the UI", "    uses: exec"]
    );
}

#[test]
fn changing_with_rewrites_only_that_value() {
    let mut draft = draft();
    stage(&mut draft, "unit").with = "# the whole suite, twice\nrun: make test test\n".into();
    stage(&mut draft, "package").with = "{ run: make pkg }".into();
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept, "{}", composed.text);
    let (added, removed) = changed_lines(COMMENTED, &composed.text);
    assert_eq!(
        added,
        [
            "      # the whole suite, twice",
            "      run: make test test",
            "    with: { run: make pkg }"
        ]
    );
    assert_eq!(
        removed,
        [
            "      # the whole suite",
            "      run: make test   # slow",
            "    with: { run: make package }"
        ]
    );
    let value = parsed(&composed.text);
    assert_eq!(value["stages"]["unit"]["with"]["run"], "make test test");
    assert_eq!(value["stages"]["unit"]["timeout"], "45m", "other keys stay");
}

#[test]
fn needs_are_set_added_and_removed_in_place() {
    let mut draft = draft();
    stage(&mut draft, "package").needs = vec![];
    stage(&mut draft, "release").needs = vec!["unit".into(), "package".into()];
    stage(&mut draft, "unit").needs = vec!["package".into()];
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept, "{}", composed.text);
    let (added, removed) = changed_lines(COMMENTED, &composed.text);
    assert_eq!(
        added,
        ["    needs: [package]", "    needs: [unit, package]"]
    );
    assert_eq!(
        removed,
        [
            "    needs: [unit]   # only after tests",
            "    needs: package"
        ]
    );
    let value = parsed(&composed.text);
    assert!(value["stages"]["package"].get("needs").is_none());
    // The new `needs` goes first in its stage.
    let unit = composed
        .text
        .find("  unit:\n    needs: [package]\n    uses: exec");
    assert!(unit.is_some(), "{}", composed.text);
}

#[test]
fn a_removed_stage_goes_with_its_comments_and_a_new_one_goes_last() {
    let mut draft = draft();
    draft.stages.retain(|s| s.id != "package");
    stage(&mut draft, "release").needs = vec!["unit".into()];
    draft.stages.push(DraftStage {
        id: "deploy".into(),
        uses: "exec".into(),
        with: "run: ./deploy.sh\nenv:\n  TARGET: prod\n".into(),
        needs: vec!["release".into()],
    });
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept, "{}", composed.text);
    let text = &composed.text;
    assert!(!text.contains("Packages the build"), "{text}");
    assert!(!text.contains("package:"), "{text}");
    assert!(
        text.contains("  # Unit tests run first.\n  unit:"),
        "{text}"
    );
    assert!(
        text.contains("  # Asks a person.\n  # Two lines of comment.\n  release:"),
        "{text}"
    );
    // No two blank lines where the stage was.
    assert!(!text.contains("\n\n\n"), "{text}");
    // The new stage after the last one, spaced like the others, before `report`.
    assert!(
        text.contains(
            "      message: 'Ship it?'\n\n  deploy:\n    needs: [release]\n    uses: exec\n    with:\n      run: ./deploy.sh\n      env:\n        TARGET: prod\nreport: []   # nothing reported\n# The end.\n"
        ),
        "{text}"
    );
    assert!(text.starts_with("# Release pipeline for the shop.\n# Owned by the platform team.\n"));
    let value = parsed(text);
    assert_eq!(value["stages"]["deploy"]["with"]["env"]["TARGET"], "prod");
    let ids: Vec<&String> = value["stages"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["unit", "release", "deploy"]);
}

#[test]
fn triggers_are_rewritten_as_a_whole_keeping_the_comment_above() {
    let mut draft = draft();
    draft.on = vec![DraftTrigger {
        source: "deploy".into(),
        event: "release".into(),
        condition: String::new(),
    }];
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept);
    assert!(
        composed.text.contains(
            "# Who may start it.\non:\n  - source: deploy\n    event: release\n\nstages:"
        ),
        "{}",
        composed.text
    );
    draft.on.clear();
    let composed = compose(Some(COMMENTED), &draft);
    assert!(
        composed.text.contains("# Who may start it.\non: []\n"),
        "{}",
        composed.text
    );
    assert_eq!(parsed(&composed.text)["on"], serde_json::json!([]));
}

#[test]
fn values_that_need_quotes_get_them() {
    let mut draft = draft();
    draft.name = "yes".into();
    stage(&mut draft, "unit").uses = "a: b".into();
    draft.on[0].condition = "'quoted' # not a comment".into();
    let composed = compose(Some(COMMENTED), &draft);
    let value = parsed(&composed.text);
    assert_eq!(value["name"], "yes");
    assert_eq!(value["stages"]["unit"]["uses"], "a: b");
    assert_eq!(value["on"][0]["if"], "'quoted' # not a comment");
}

#[test]
fn a_new_workflow_is_written_whole() {
    let draft = WorkflowDraft {
        name: "hello".into(),
        on: vec![DraftTrigger {
            source: "manual".into(),
            ..DraftTrigger::default()
        }],
        stages: vec![
            DraftStage {
                id: "build".into(),
                uses: "exec".into(),
                with: "run: make".into(),
                needs: vec![],
            },
            DraftStage {
                id: "test".into(),
                uses: "exec".into(),
                with: "{ run: make test }".into(),
                needs: vec!["build".into()],
            },
            DraftStage {
                id: "ship".into(),
                uses: "approval".into(),
                with: String::new(),
                needs: vec!["build".into(), "test".into()],
            },
        ],
    };
    let composed = compose(None, &draft);
    assert!(composed.comments_kept);
    assert_eq!(
        composed.text,
        "\
name: hello
on:
  - source: manual
stages:
  build:
    uses: exec
    with:
      run: make
  test:
    needs: [build]
    uses: exec
    with: { run: make test }
  ship:
    needs: [build, test]
    uses: approval
"
    );
    assert_eq!(draft_of(&composed.text).unwrap(), {
        let mut expected = draft;
        expected.stages[0].with = "run: make\n".into();
        expected.stages[1].with = "{ run: make test }\n".into();
        expected
    });
}

#[test]
fn flow_style_stages_are_written_out_in_block_style_when_changed() {
    let text = "\
name: w   # the name
stages:
  a: { uses: exec, with: { run: x }, timeout: 5m }   # first
  # the second
  b: { uses: exec, needs: [a], with: { run: y } }
";
    let mut draft = draft_of(text).unwrap();
    assert_eq!(
        draft.stages[0].with, "run: x\n",
        "flow style is shown as block text"
    );
    draft.stages[0].uses = "ci".into();
    let composed = compose(Some(text), &draft);
    assert!(composed.comments_kept, "{}", composed.text);
    assert_eq!(
        composed.text,
        "\
name: w   # the name
stages:
  a:
    uses: ci
    with:
      run: x
    timeout: 5m
  # the second
  b: { uses: exec, needs: [a], with: { run: y } }
"
    );
}

#[test]
fn a_layout_the_lines_cannot_take_is_written_whole_and_says_so() {
    // `stages` in flow style: no line to edit.
    let text = "name: w\n# gone\nstages: { a: { uses: exec, with: { run: x } } }\nreport: []\n";
    let mut draft = draft_of(text).unwrap();
    draft.stages[0].uses = "ci".into();
    let composed = compose(Some(text), &draft);
    assert!(!composed.comments_kept);
    let value = parsed(&composed.text);
    assert_eq!(value["stages"]["a"]["uses"], "ci");
    assert_eq!(value["report"], serde_json::json!([]), "other keys stay");
    // An anchor that a removed stage defined.
    let text = "\
name: w
stages:
  a: &common
    uses: exec
    with: { run: x }
  b:
    <<: *common
    needs: [a]
";
    let mut draft = draft_of(text).unwrap();
    draft.stages.remove(0);
    draft.stages[0].needs.clear();
    let composed = compose(Some(text), &draft);
    assert!(!composed.comments_kept);
    let value = parsed(&composed.text);
    assert_eq!(value["stages"]["b"]["uses"], "exec");
    assert_eq!(value["stages"]["b"]["with"]["run"], "x");
}

#[test]
fn a_with_that_is_not_yaml_is_placed_as_typed() {
    let mut draft = draft();
    stage(&mut draft, "unit").with = "run: [unclosed\n".into();
    let composed = compose(Some(COMMENTED), &draft);
    assert!(composed.comments_kept);
    assert!(
        composed
            .text
            .contains("    with:\n      run: [unclosed\n    timeout: 45m")
    );
    assert!(read(&composed.text).is_err());
}

#[test]
fn crlf_files_stay_crlf() {
    let text = COMMENTED.replace('\n', "\r\n");
    let mut draft = draft_of(&text).unwrap();
    stage(&mut draft, "unit").uses = "ci".into();
    let composed = compose(Some(&text), &draft);
    assert!(composed.comments_kept);
    assert_eq!(
        composed.text,
        text.replace(
            "    uses: exec\r\n    with:\r\n      # the whole",
            "    uses: ci\r\n    with:\r\n      # the whole"
        )
    );
}

#[test]
fn what_the_editor_cannot_show_is_said() {
    for (text, expected) in [
        ("name: [a]\nstages: {}\n", "`name`"),
        ("name: w\non: manual\nstages: {}\n", "`on`"),
        (
            "name: w\non: [{ source: manual, extra: 1 }]\nstages: {}\n",
            "`on`",
        ),
        (
            "name: w\nstages: { a: { uses: exec, needs: 5 } }\n",
            "`needs` of stage `a`",
        ),
        ("name: w\nstages: [a]\n", "`stages`"),
    ] {
        let error = draft_of(text).unwrap_err();
        assert!(
            matches!(error, DraftError::Unsupported(_)),
            "{text}: {error}"
        );
        assert!(error.to_string().contains(expected), "{text}: {error}");
    }
    assert!(matches!(
        draft_of("name: [unclosed\n"),
        Err(DraftError::Unreadable(_))
    ));
    assert!(matches!(draft_of("- a\n"), Err(DraftError::Unreadable(_))));
}

/// A change a person makes in the editor.
type Change = Box<dyn Fn(&mut WorkflowDraft)>;

/// Changes that apply to any draft.
fn changes() -> Vec<Change> {
    vec![
        Box::new(|d| d.name.push_str("-2")),
        Box::new(|d| {
            d.on.push(DraftTrigger {
                source: "manual".into(),
                ..DraftTrigger::default()
            });
        }),
        Box::new(|d| {
            if let Some(first) = d.stages.first_mut() {
                first.uses = "other".into();
                first.needs = vec!["zz".into()];
                first.with = "run: changed\n".into();
            }
        }),
        Box::new(|d| {
            if !d.stages.is_empty() {
                d.stages.remove(0);
            }
        }),
        Box::new(|d| {
            d.stages.push(DraftStage {
                id: "zz-new".into(),
                uses: "exec".into(),
                with: "{ run: added }".into(),
                needs: vec![],
            });
        }),
    ]
}

/// Asserts that `text` reads back as `draft` (each `with` compared as YAML).
fn assert_reads_as(text: &str, draft: &WorkflowDraft) {
    let mut back = draft_of(text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    for (stage, wanted) in back.stages.iter_mut().zip(&draft.stages) {
        assert_eq!(with_value(&stage.with), with_value(&wanted.with), "{text}");
        stage.with.clone_from(&wanted.with);
    }
    assert_eq!(&back, draft, "{text}");
}

#[test]
fn every_single_stage_change_survives_the_round_trip() {
    // Each change alone, and the draft read back from the result is the changed draft.
    let changes: Vec<Change> = vec![
        Box::new(|d| d.name = "renamed".into()),
        Box::new(|d| d.on.pop().map(drop).unwrap_or_default()),
        Box::new(|d| stage(d, "release").uses = "exec".into()),
        Box::new(|d| stage(d, "release").with = "message: 'Really?'\nrole: approver\n".into()),
        Box::new(|d| stage(d, "release").with = String::new()),
        Box::new(|d| stage(d, "unit").needs = vec!["release".into()]),
        Box::new(|d| d.stages.retain(|s| s.id != "unit")),
        Box::new(|d| d.stages.retain(|s| s.id != "release")),
        Box::new(|d| {
            d.stages.push(DraftStage {
                id: "more".into(),
                uses: "exec".into(),
                with: "run: echo".into(),
                needs: vec![],
            });
        }),
    ];
    for (i, change) in changes.iter().enumerate() {
        let mut draft = draft();
        change(&mut draft);
        let composed = compose(Some(COMMENTED), &draft);
        assert!(composed.comments_kept, "change {i}:\n{}", composed.text);
        assert!(
            composed.text.contains("# Owned by the platform team.")
                && composed.text.contains("# The end."),
            "change {i}:\n{}",
            composed.text
        );
        assert_reads_as(&composed.text, &draft);
    }
}

#[test]
fn other_layouts_are_edited_in_place_too() {
    // A document marker, four-space indentation, comments on key lines, a block scalar.
    let text = "\
---
name: four   # four spaces
stages:
    build:   # the build
        uses: exec
        with:
            run: |
                make
                # part of the script
                make install
    test:
        needs: build   # one id
        uses: exec
        with: { run: make test }
";
    let mut draft = draft_of(text).unwrap();
    assert_eq!(
        draft.stages[0].with,
        "run: |\n    make\n    # part of the script\n    make install\n"
    );
    draft.stages[0].with = "run: |\n    make all\n".into();
    draft.stages[1].uses = "ci".into();
    draft.stages.push(DraftStage {
        id: "ship".into(),
        uses: "approval".into(),
        with: "{ message: go? }".into(),
        needs: vec!["test".into()],
    });
    let composed = compose(Some(text), &draft);
    assert!(composed.comments_kept, "{}", composed.text);
    assert_eq!(
        composed.text,
        "\
---
name: four   # four spaces
stages:
    build:   # the build
        uses: exec
        with:
            run: |
                make all
    test:
        needs: build   # one id
        uses: ci
        with: { run: make test }
    ship:
        needs: [test]
        uses: approval
        with: { message: go? }
"
    );
    assert_eq!(
        parsed(&composed.text)["stages"]["build"]["with"]["run"],
        "make all\n"
    );
}

#[test]
fn any_readable_text_comes_back_unchanged_from_its_own_draft() {
    // Every prefix of a few files, and each with one line dropped: whatever reads as a
    // draft gives itself back, and nothing panics.
    let texts = [
        COMMENTED.to_owned(),
        COMMENTED.replace('\n', "\r\n"),
        "name: w\nstages:\n  a: { uses: exec, with: { run: x } }\n  b:\n    needs: a\n    uses: exec\n    with:\n      run: |\n        y\n".to_owned(),
    ];
    let mut variants = Vec::new();
    for text in &texts {
        for (i, _) in text.char_indices().step_by(3) {
            variants.push(text[..i].to_owned());
        }
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for skip in 0..lines.len() {
            let mut dropped = lines.clone();
            dropped.remove(skip);
            variants.push(dropped.concat());
        }
    }
    let mut drafted = 0;
    for text in &variants {
        let lines = Lines::parse(text);
        for path in [
            "name",
            "on[0].source",
            "stages.unit.with.run",
            "stages.b.needs",
        ] {
            let _ = lines.locate(path);
        }
        if let Ok(draft) = draft_of(text) {
            drafted += 1;
            let composed = compose(Some(text), &draft);
            assert_eq!(&composed.text, text, "{text:?}");
            for change in changes() {
                let mut changed = draft.clone();
                change(&mut changed);
                let composed = compose(Some(text), &changed);
                assert_reads_as(&composed.text, &changed);
            }
        }
    }
    assert!(
        drafted > variants.len() / 4,
        "{drafted} of {}",
        variants.len()
    );
}
