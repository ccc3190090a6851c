//! The Graphviz DOT picture.

use std::fmt::Write as _;

use super::layers::edges;
use super::text::{notes, xml_escape};
use crate::workflow::{Stage, Workflow};

/// The DOT text; see [`super::to_dot`].
pub(super) fn render(workflow: &Workflow, waits_for_person: &dyn Fn(&Stage) -> bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(workflow.name()));
    out.push_str(
        "  graph [rankdir=LR, nodesep=0.3, ranksep=0.6, fontname=\"Helvetica\", fontsize=11];\n",
    );
    out.push_str(
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f5f7fa\", color=\"#4a5568\", \
         fontname=\"Helvetica\", fontsize=12, margin=\"0.15,0.06\"];\n",
    );
    out.push_str("  edge [color=\"#718096\", arrowsize=0.7];\n");
    for stage in &workflow.stages {
        let mut label = format!(
            "<B>{}</B><BR/>{}",
            xml_escape(&stage.id),
            xml_escape(&stage.uses)
        );
        let notes = notes(workflow, stage);
        if !notes.is_empty() {
            let _ = write!(
                label,
                "<BR/><FONT POINT-SIZE=\"9\" COLOR=\"#718096\">{}</FONT>",
                xml_escape(&notes.join(" · "))
            );
        }
        let mut attrs = vec![format!("label=<{label}>")];
        let waits = waits_for_person(stage);
        if waits {
            attrs.push("shape=hexagon".into());
            attrs.push("fillcolor=\"#fff4d6\"".into());
            attrs.push("color=\"#b7791f\"".into());
        }
        let mut tooltip = format!("{} (uses: {})", stage.id, stage.uses);
        if let Some(condition) = &stage.condition {
            attrs.push(
                if waits {
                    "style=\"filled,dashed\""
                } else {
                    "style=\"rounded,filled,dashed\""
                }
                .into(),
            );
            let _ = write!(tooltip, "\nif: {}", condition.source());
        }
        attrs.push(format!("tooltip={}", dot_quote(&tooltip)));
        let _ = writeln!(out, "  {} [{}];", dot_quote(&stage.id), attrs.join(", "));
    }
    for (from, to) in edges(workflow) {
        let _ = writeln!(
            out,
            "  {} -> {};",
            dot_quote(&workflow.stages[from].id),
            dot_quote(&workflow.stages[to].id)
        );
    }
    out.push_str("}\n");
    out
}

/// A DOT quoted string: `"`, `\` and line breaks escaped, so that an id or a jq expression
/// can never end the string early (a trailing `\` would otherwise escape the closing quote).
pub(super) fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
