//! The SVG's legend: one entry per kind of thing the picture draws.

use std::fmt::Write as _;

use super::label::Label;
use super::svg::{MARGIN, NOTE_SIZE, text_width};
use super::text::{num, xml_escape};
use crate::workflow::Workflow;

/// What an entry's sample looks like.
enum Sample {
    /// A box with these CSS classes.
    Box(&'static str),
    /// An edge.
    Arrow,
}

/// The legend's entries, left to right.
pub(super) struct Legend {
    entries: Vec<(Sample, &'static str)>,
}

impl Legend {
    /// Boxes always; dashed boxes, boxes that wait for a person and arrows when the picture
    /// has them.
    pub(super) fn new(workflow: &Workflow, labels: &[Label]) -> Self {
        let mut entries = vec![(Sample::Box("stage"), "stage")];
        if labels.iter().any(|l| l.condition.is_some()) {
            entries.push((
                Sample::Box("stage conditional"),
                "has an if: (may be skipped)",
            ));
        }
        if labels.iter().any(|l| l.waits_for_person) {
            entries.push((
                Sample::Box("stage approval"),
                "approval (waits for a person)",
            ));
        }
        if workflow.stages.iter().any(|s| !s.needs.is_empty()) {
            entries.push((Sample::Arrow, "needs → dependent"));
        }
        Self { entries }
    }

    /// The room one entry takes: its sample, its text and the gap after it.
    fn entry_width(text: &str) -> f64 {
        30.0 + text_width(text, NOTE_SIZE) + 24.0
    }

    /// The width of the whole legend.
    pub(super) fn width(&self) -> f64 {
        self.entries
            .iter()
            .map(|(_, text)| Self::entry_width(text))
            .sum()
    }

    /// The legend as an SVG group whose top is at `top`.
    pub(super) fn render(&self, out: &mut String, top: f64) {
        out.push_str("<g class=\"legend\">\n");
        let mut x = MARGIN;
        let y = top;
        for (sample, text) in &self.entries {
            match sample {
                Sample::Arrow => {
                    let _ = writeln!(
                        out,
                        r#"<line class="edge" x1="{}" y1="{}" x2="{}" y2="{}" marker-end="url(#arrow)"/>"#,
                        num(x),
                        num(y + 7.0),
                        num(x + 22.0),
                        num(y + 7.0)
                    );
                }
                Sample::Box(class) => {
                    let _ = writeln!(
                        out,
                        r#"<g class="{class}"><rect x="{}" y="{}" width="22" height="14" rx="4" ry="4"/></g>"#,
                        num(x),
                        num(y)
                    );
                }
            }
            let _ = writeln!(
                out,
                r#"<text class="legend" x="{}" y="{}" font-size="{}">{}</text>"#,
                num(x + 30.0),
                num(y + 11.0),
                num(NOTE_SIZE),
                xml_escape(text)
            );
            x += Self::entry_width(text);
        }
        out.push_str("</g>\n");
    }
}
