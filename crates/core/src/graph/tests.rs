//! The pictures' tests: well-formed output, layout, escaping.

use serde_json::{Value, json};

use super::dot::dot_quote;
use super::label::Mark;
use super::layers::{Layers, edges};
use super::svg::{CHAR_WIDTH, Drawing, ID_SIZE, Medium, STATUS_SIZE, text_width};
use super::text::{num, xml_escape};
use super::{layout, status_icon, to_dot, to_page_svg, to_svg};
use crate::state::StageStatus;
use crate::workflow::{Stage, StageDefaults, Workflow, WorkflowSpec};

fn workflow(value: Value) -> Workflow {
    let spec: WorkflowSpec = serde_json::from_value(value).unwrap();
    Workflow::compile(spec, StageDefaults::default()).unwrap()
}

/// Quotes, a backslash and XML's special characters, in valid jq.
const CONDITION: &str =
    r#".event.ref == "refs/heads/main" and ("a\\" | length) < 3 and "&" != "<""#;

/// The caller's answer in these tests: `approval` stages wait for a person.
fn approval(stage: &Stage) -> bool {
    stage.uses == "approval"
}

fn sample() -> Workflow {
    workflow(json!({"name": "sample", "stages": {
        "checkout": {"uses": "exec", "with": {"run": "true"}},
        "lint": {"uses": "exec", "needs": "checkout", "timeout": "5m"},
        "unit": {"uses": "my\"ci\\", "needs": "checkout",
                 "retry": {"attempts": 3}, "on_failure": "continue"},
        "release": {"uses": "approval", "needs": ["lint", "unit"]},
        "deploy": {"uses": "exec", "needs": ["release", "checkout"], "if": CONDITION}
    }}))
}

/// Checks that `text` is well-formed enough: tags balance, attributes are quoted, and
/// every `&` starts an entity. Returns the element names in document order.
fn check_xml(text: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut rest = text;
    let mut roots = 0;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after.find("?>").expect("unclosed <?");
            rest = &after[end + 2..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").expect("unclosed comment");
            rest = &after[end + 3..];
            continue;
        }
        let gt = tag_end(rest);
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().expect("closing tag without an open one");
            assert_eq!(open, name.trim(), "mismatched closing tag");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = &tag[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "bad element name {name:?}"
        );
        check_attributes(&tag[name_end..]);
        if stack.is_empty() {
            roots += 1;
        }
        elements.push(name.to_owned());
        if !self_closing {
            stack.push(name.to_owned());
        }
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert_eq!(roots, 1, "one root element");
    elements
}

/// The index of the `>` ending the tag that starts `text`, skipping quoted values.
fn tag_end(text: &str) -> usize {
    let mut quote = None;
    for (i, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i,
            (None, '<') => panic!("`<` inside a tag: {}", &text[..i]),
            _ => {}
        }
    }
    panic!("unclosed tag: {text}");
}

fn check_attributes(mut attrs: &str) {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return;
        }
        let eq = attrs.find('=').expect("attribute without a value");
        let name = attrs[..eq].trim();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':'),
            "bad attribute name {name:?}"
        );
        let value = &attrs[eq + 1..];
        let quote = value.chars().next().expect("missing value");
        assert!(quote == '"' || quote == '\'', "unquoted attribute {name}");
        let end = value[1..].find(quote).expect("unterminated value") + 1;
        check_text(&value[1..end]);
        assert!(!value[1..end].contains('<'), "`<` in attribute {name}");
        attrs = &value[end + 1..];
    }
}

fn check_text(text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        rest = &rest[amp..];
        let semi = rest.find(';').expect("`&` without `;`");
        let entity = &rest[1..semi];
        assert!(
            matches!(entity, "amp" | "lt" | "gt" | "quot" | "apos")
                || entity
                    .strip_prefix('#')
                    .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit())),
            "unknown entity &{entity};"
        );
        rest = &rest[semi + 1..];
    }
}

#[test]
fn the_xml_checker_catches_mistakes() {
    for bad in [
        "<svg><g></svg>",
        "<svg>a & b</svg>",
        "<svg><g x=1/></svg>",
        "<svg></svg><svg></svg>",
        "<svg><text>x</tex></svg>",
        "<svg><rect x=\"1\"></svg>",
    ] {
        assert!(
            std::panic::catch_unwind(|| check_xml(bad)).is_err(),
            "accepted {bad}"
        );
    }
    assert_eq!(
        check_xml("<?xml version=\"1.0\"?>\n<svg a=\"&amp;\"><g/><t>x &lt; y</t></svg>"),
        ["svg", "g", "t"]
    );
}

#[test]
fn dot_has_every_node_and_edge_and_escapes() {
    let wf = sample();
    let dot = to_dot(&wf, approval);
    assert!(dot.starts_with("digraph \"sample\" {\n"), "{dot}");
    assert!(dot.contains("rankdir=LR"));
    for stage in &wf.stages {
        assert!(
            dot.contains(&format!("  \"{}\" [", stage.id)),
            "{}",
            stage.id
        );
    }
    for edge in [
        "\"checkout\" -> \"lint\";",
        "\"checkout\" -> \"unit\";",
        "\"checkout\" -> \"deploy\";",
        "\"lint\" -> \"release\";",
        "\"unit\" -> \"release\";",
        "\"release\" -> \"deploy\";",
    ] {
        assert!(dot.contains(edge), "missing {edge}:\n{dot}");
    }
    assert_eq!(dot.matches(" -> ").count(), 6);
    // The condition, with its quotes and trailing backslash, in a DOT string.
    assert!(
        dot.contains(
            r#"tooltip="deploy (uses: exec)\nif: .event.ref == \"refs/heads/main\" and (\"a\\\\\" | length) < 3 and \"&\" != \"<\"""#
        ),
        "{dot}"
    );
    // The adapter name, in an HTML-like label and in a tooltip.
    assert!(dot.contains("my&quot;ci\\"), "{dot}");
    assert!(dot.contains(r#"tooltip="unit (uses: my\"ci\\)"#), "{dot}");
    let release = dot.lines().find(|l| l.contains("\"release\" [")).unwrap();
    assert!(release.contains("shape=hexagon"), "{release}");
    let deploy = dot.lines().find(|l| l.contains("\"deploy\" [")).unwrap();
    assert!(deploy.contains("dashed"), "{deploy}");
    let unit = dot.lines().find(|l| l.contains("\"unit\" [")).unwrap();
    assert!(unit.contains("3 attempts · on failure: continue"), "{unit}");
    let lint = dot.lines().find(|l| l.contains("\"lint\" [")).unwrap();
    assert!(lint.contains("timeout 5m"), "{lint}");
    // The default timeout is not the stage's own.
    let checkout = dot.lines().find(|l| l.contains("\"checkout\" [")).unwrap();
    assert!(!checkout.contains("timeout"), "{checkout}");
}

#[test]
fn dot_quoting_never_ends_a_string_early() {
    assert_eq!(dot_quote(r#"a"b\"#), r#""a\"b\\""#);
    assert_eq!(dot_quote("x\ny\r"), r#""x\ny""#);
    assert_eq!(
        xml_escape("<a & 'b' \"c\">"),
        "&lt;a &amp; &apos;b&apos; &quot;c&quot;&gt;"
    );
    assert_eq!(xml_escape("a\u{1}b"), "a b");
}

#[test]
fn svg_is_well_formed_complete_and_deterministic() {
    let wf = sample();
    let svg = to_svg(&wf, approval);
    let elements = check_xml(&svg);
    assert_eq!(elements[0], "svg");
    for stage in &wf.stages {
        assert!(
            svg.contains(&format!(">{}</text>", stage.id)),
            "{}",
            stage.id
        );
    }
    let edge_count = edges(&wf).len();
    assert_eq!(edge_count, 6);
    assert_eq!(svg.matches("<path ").count(), edge_count);
    assert_eq!(svg.matches("<path class=\"edge\"").count(), edge_count);
    assert_eq!(
        svg.matches("marker-end=\"url(#arrow)\"").count(),
        edge_count + 1,
        "one per edge and one in the legend"
    );
    assert!(svg.contains("uses: my&quot;ci\\"));
    assert!(svg.contains("class=\"stage approval\""));
    assert!(svg.contains("class=\"stage conditional\""));
    assert!(svg.contains(
        r#"if: .event.ref == &quot;refs/heads/main&quot; and (&quot;a\\&quot; | length) &lt; 3 and &quot;&amp;&quot; != &quot;&lt;&quot;"#
    ));
    assert_eq!(svg, to_svg(&sample(), approval));
}

#[test]
fn a_long_edge_passes_through_the_columns_between() {
    let wf = sample();
    let at = layout(&wf);
    let col = |id: &str| at[wf.stage_index(id).unwrap()].0;
    assert_eq!(
        [
            col("checkout"),
            col("lint"),
            col("unit"),
            col("release"),
            col("deploy")
        ],
        [0, 1, 1, 2, 3]
    );
    let layers = Layers::new(&wf);
    let long = layers
        .chains
        .iter()
        .find(|c| c[0] == wf.stage_index("checkout").unwrap() && c.len() > 2)
        .unwrap();
    assert_eq!(long.len(), 4, "two placeholders, in columns 1 and 2");
    let svg = to_svg(&wf, approval);
    let path = svg
        .lines()
        .find(|l| l.contains("<title>checkout → deploy</title>"))
        .unwrap();
    assert_eq!(path.matches(" L").count(), 2, "{path}");
}

#[test]
fn a_single_stage() {
    let wf = workflow(json!({"name": "one", "stages": {"only": {"uses": "exec"}}}));
    assert_eq!(layout(&wf), [(0, 0)]);
    let svg = to_svg(&wf, approval);
    check_xml(&svg);
    assert!(svg.contains(">only</text>"));
    assert_eq!(svg.matches("<path").count(), 0);
    assert!(svg.contains("one — 1 stage<"));
    let dot = to_dot(&wf, approval);
    assert!(!dot.contains("->"));
}

#[test]
fn a_wide_fan_out_and_in() {
    let mut stages = serde_json::Map::new();
    stages.insert("root".into(), json!({"uses": "exec"}));
    for i in 0..20 {
        stages.insert(
            format!("leaf-{i:02}"),
            json!({"uses": "exec", "needs": "root"}),
        );
    }
    let leaves: Vec<String> = (0..20).map(|i| format!("leaf-{i:02}")).collect();
    stages.insert("join".into(), json!({"uses": "exec", "needs": leaves}));
    let wf = workflow(json!({"name": "fan", "stages": stages}));
    let at = layout(&wf);
    assert_eq!(at[wf.stage_index("root").unwrap()], (0, 0));
    assert_eq!(at[wf.stage_index("join").unwrap()], (2, 0));
    let mut rows: Vec<usize> = leaves
        .iter()
        .map(|id| {
            let (c, r) = at[wf.stage_index(id).unwrap()];
            assert_eq!(c, 1);
            r
        })
        .collect();
    // Nothing crosses, so file order stays.
    assert_eq!(rows, (0..20).collect::<Vec<_>>());
    rows.sort_unstable();
    let svg = to_svg(&wf, approval);
    check_xml(&svg);
    assert_eq!(svg.matches("<path").count(), 40);
    // Boxes in one column do not overlap.
    let d = Drawing::new(&wf, &approval, Medium::File);
    let mut ys: Vec<(f64, f64)> = leaves
        .iter()
        .map(|id| {
            let b = d.boxes[wf.stage_index(id).unwrap()];
            (b.1, b.1 + b.3)
        })
        .collect();
    ys.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(ys.windows(2).all(|w| w[0].1 < w[1].0));
}

#[test]
fn a_deep_chain_and_long_ids() {
    let mut stages = serde_json::Map::new();
    let long = "a-very-long-stage-id-that-goes-on-and-on-and-on-well-past-forty-characters";
    stages.insert(long.into(), json!({"uses": "exec"}));
    let mut previous = long.to_owned();
    for i in 0..30 {
        let id = format!("step-{i}");
        stages.insert(id.clone(), json!({"uses": "exec", "needs": previous}));
        previous = id;
    }
    let wf = workflow(json!({"name": "chain", "stages": stages}));
    let at = layout(&wf);
    for (i, stage) in wf.stages.iter().enumerate() {
        let expected = if stage.id == long {
            0
        } else {
            stage.id[5..].parse::<usize>().unwrap() + 1
        };
        assert_eq!(at[i], (expected, 0), "{}", stage.id);
    }
    let svg = to_svg(&wf, approval);
    check_xml(&svg);
    // Cut in the box, whole in the tooltip.
    assert!(svg.contains(
        "<title>a-very-long-stage-id-that-goes-on-and-on-and-on-well-past-forty-characters\n"
    ));
    assert!(svg.contains(">a-very-long-stage-id-that-goes-on-and-o…</text>"));
    assert_eq!(svg.matches("<path").count(), 30);
    let d = Drawing::new(&wf, &approval, Medium::File);
    let first = d.boxes[wf.stage_index(long).unwrap()];
    assert!(first.2 < 45.0 * ID_SIZE * CHAR_WIDTH, "the box is bounded");
}

#[test]
fn crossings_are_reduced() {
    // File order puts b above a, but b's only dependent sits below a's.
    let wf = workflow(json!({"name": "x", "stages": {
        "r1": {"uses": "exec"},
        "r2": {"uses": "exec"},
        "b": {"uses": "exec", "needs": "r2"},
        "a": {"uses": "exec", "needs": "r1"}
    }}));
    let at = layout(&wf);
    let row = |id: &str| at[wf.stage_index(id).unwrap()].1;
    assert_eq!((row("r1"), row("r2")), (0, 1));
    assert_eq!((row("a"), row("b")), (0, 1));
    assert_eq!(Layers::new(&wf).crossings(), 0);
}

#[test]
fn numbers_are_short() {
    assert_eq!(num(12.0), "12");
    assert_eq!(num(12.25), "12.3");
    assert_eq!(num(-0.5), "-0.5");
    assert_eq!(num(-3.0), "-3");
}

#[test]
fn the_caller_says_which_stages_wait_for_a_person() {
    let wf = sample();
    let unit = |s: &Stage| s.id == "unit";
    let dot = to_dot(&wf, unit);
    let line = |id: &str| {
        dot.lines()
            .find(|l| l.contains(&format!("\"{id}\" [")))
            .unwrap()
            .to_owned()
    };
    assert!(line("unit").contains("shape=hexagon"), "{dot}");
    assert!(!line("release").contains("hexagon"), "{dot}");
    let svg = to_svg(&wf, unit);
    assert_eq!(
        svg.matches("<g class=\"stage approval\">").count(),
        2,
        "the box and the legend's sample"
    );
    assert!(svg.contains("<title>unit\nuses: my&quot;ci\\"));
    let none = to_svg(&wf, |_| false);
    assert!(
        !none.contains("stage approval"),
        "no box and no legend entry"
    );
    assert!(!to_dot(&wf, |_| false).contains("hexagon"));
}

/// A run of [`sample`] half-way: checkout and lint done, unit failed, release waiting, deploy
/// not yet reached.
fn halfway(stage: &Stage) -> Option<StageStatus> {
    Some(match stage.id.as_str() {
        "checkout" | "lint" => StageStatus::Succeeded,
        "unit" => StageStatus::Failed,
        "release" => StageStatus::Waiting,
        _ => StageStatus::Pending,
    })
}

fn anchor(stage: &Stage) -> Option<String> {
    Some(format!("#stage-{}", stage.id))
}

/// The markup of the box of stage `id`: from its link to the link's end.
fn box_of<'a>(svg: &'a str, id: &str) -> &'a str {
    let start = svg
        .find(&format!("<a href=\"#stage-{id}\">"))
        .unwrap_or_else(|| panic!("no link for {id}:\n{svg}"));
    let end = svg[start..].find("</a>").expect("the link ends") + start;
    &svg[start..end]
}

#[test]
fn the_status_picture_marks_and_links_every_stage() {
    let wf = sample();
    let svg = to_page_svg(&wf, approval, halfway, anchor);
    let elements = check_xml(&svg);
    assert_eq!(elements[0], "svg", "inline: no XML declaration first");
    assert!(!svg.contains("<?xml"));
    // A page's CSP refuses inline styles: colours come from the page's stylesheet.
    assert!(!svg.contains("<style") && !svg.contains(" style="), "{svg}");
    assert!(
        !svg.contains("fill=\"#ffffff\""),
        "no background of its own"
    );
    for stage in &wf.stages {
        let status = halfway(stage).unwrap().as_str();
        let markup = box_of(&svg, &stage.id);
        // The link is named by its title, which says the status in words.
        assert!(
            markup.starts_with(&format!(
                "<a href=\"#stage-{}\"><title>{}: {status}\n",
                stage.id, stage.id
            )),
            "{markup}"
        );
        assert!(
            markup.contains(&format!(
                "data-stage=\"{}\" data-status=\"{status}\">",
                stage.id
            )),
            "{markup}"
        );
        assert!(
            markup.contains(&format!("<g class=\"stage status-{status}")),
            "{markup}"
        );
        // Drawn in the box: the glyph and the word, not a colour alone.
        assert!(
            markup.contains(&format!(
                "<tspan class=\"icon\">{}</tspan> {status}</text>",
                status_icon(status)
            )),
            "{markup}"
        );
    }
    assert_eq!(svg.matches("<a href=").count(), wf.stages.len());
    assert_eq!(svg.matches("<title>").count(), 1 + wf.stages.len() + 6);
    // The other marks stay.
    assert!(box_of(&svg, "release").contains("class=\"stage status-waiting approval\""));
    assert!(box_of(&svg, "deploy").contains("class=\"stage status-pending conditional\""));
    assert_eq!(svg, to_page_svg(&sample(), approval, halfway, anchor));
}

#[test]
fn the_status_picture_is_laid_out_as_the_file_is() {
    let wf = sample();
    let file = Drawing::new(&wf, &approval, Medium::File);
    let marks = |s: &Stage| Mark {
        status: halfway(s),
        link: anchor(s),
    };
    let page = Drawing::new(&wf, &approval, Medium::Page(&marks));
    let order = |d: &Drawing<'_>| {
        let mut v: Vec<(i64, i64, usize)> = (0..wf.stages.len())
            .map(|i| (d.boxes[i].0 as i64, d.boxes[i].1 as i64, i))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, _, i)| i).collect::<Vec<_>>()
    };
    assert_eq!(order(&file), order(&page), "same columns and rows");
    for i in 0..wf.stages.len() {
        // One more line in each box, for the status.
        assert!(page.boxes[i].3 > file.boxes[i].3, "{}", wf.stages[i].id);
    }
    // A status word longer than the id widens the box to hold it.
    let short = workflow(json!({"name": "s", "stages": {"a": {"uses": "x"}}}));
    let wide = to_page_svg(
        &short,
        |_| false,
        |_| Some(StageStatus::Cancelled),
        |_| None,
    );
    let width: f64 = wide
        .split("<rect x=\"")
        .nth(1)
        .and_then(|r| r.split("width=\"").nth(1))
        .and_then(|w| w.split('"').next())
        .and_then(|w| w.parse().ok())
        .unwrap();
    assert!(width >= text_width("⊘ cancelled", STATUS_SIZE), "{wide}");
}

#[test]
fn the_status_picture_escapes_links_and_shows_no_status_it_was_not_given() {
    let wf = sample();
    let svg = to_page_svg(
        &wf,
        approval,
        |s| (s.id == "lint").then_some(StageStatus::Running),
        |s| (s.id != "unit").then(|| format!("/x?a=1&b=\"<{}>\"", s.id)),
    );
    check_xml(&svg);
    assert!(
        svg.contains("<a href=\"/x?a=1&amp;b=&quot;&lt;lint&gt;&quot;\"><title>lint: running\n")
    );
    assert!(svg.contains("<tspan class=\"icon\">▶</tspan> running</text>"));
    assert_eq!(svg.matches("class=\"status\"").count(), 1, "{svg}");
    assert_eq!(svg.matches("<a href=").count(), wf.stages.len() - 1);
    // Without a link, the title stays in the box's group.
    assert!(
        svg.contains("<g class=\"stage\" data-stage=\"unit\">\n<title>unit\nuses:"),
        "{svg}"
    );
    // The picture for files has none of it.
    let file = to_svg(&wf, approval);
    for absent in ["<a ", "data-stage", "status-", "class=\"status\""] {
        assert!(!file.contains(absent), "{absent}");
    }
    assert!(file.starts_with("<?xml") && file.contains("<style>"));
}

#[test]
fn every_status_has_its_own_glyph() {
    let statuses = [
        StageStatus::Pending,
        StageStatus::Running,
        StageStatus::Waiting,
        StageStatus::Succeeded,
        StageStatus::Failed,
        StageStatus::Cancelled,
        StageStatus::Skipped,
    ];
    let glyphs: std::collections::BTreeSet<&str> =
        statuses.iter().map(|s| status_icon(s.as_str())).collect();
    assert_eq!(glyphs.len(), statuses.len(), "{glyphs:?}");
    assert!(!glyphs.contains(status_icon("no-such-status")));
    assert_eq!(status_icon("processed"), status_icon("succeeded"));
}
