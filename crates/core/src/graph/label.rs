//! One stage's box in the SVG: its clipped text, its size and its markup.

use std::fmt::Write as _;

use super::svg::{ID_SIZE, MIN_BOX_WIDTH, NOTE_SIZE, PAD_X, PAD_Y, USES_SIZE, text_width};
use super::text::{clip, notes, num, xml_escape};
use crate::workflow::{Stage, Workflow};

/// Text longer than this many characters is cut (with `…`) inside SVG boxes; the whole text
/// stays in the box's tooltip.
const MAX_BOX_CHARS: usize = 40;
/// Conditions are shown shorter than ids.
const MAX_CONDITION_CHARS: usize = 44;

/// One box's text, already clipped.
pub(super) struct Label {
    id: String,
    uses: String,
    notes: Option<String>,
    pub(super) condition: Option<String>,
    tooltip: String,
    /// Drawn as a stage that waits for a person.
    pub(super) waits_for_person: bool,
}

impl Label {
    pub(super) fn new(workflow: &Workflow, stage: &Stage, waits_for_person: bool) -> Self {
        let notes = notes(workflow, stage);
        let mut tooltip = format!("{}\nuses: {}", stage.id, stage.uses);
        for note in &notes {
            let _ = write!(tooltip, "\n{note}");
        }
        if let Some(c) = &stage.condition {
            let _ = write!(tooltip, "\nif: {}", c.source());
        }
        Self {
            id: clip(&stage.id, MAX_BOX_CHARS),
            uses: clip(&format!("uses: {}", stage.uses), MAX_BOX_CHARS),
            notes: (!notes.is_empty()).then(|| clip(&notes.join(" · "), MAX_BOX_CHARS)),
            condition: stage.condition.as_ref().map(|c| {
                let one_line = c.source().split_whitespace().collect::<Vec<_>>().join(" ");
                format!("if {}", clip(&one_line, MAX_CONDITION_CHARS))
            }),
            tooltip,
            waits_for_person,
        }
    }

    /// The lines under the id: (text, font size, italic).
    fn small_lines(&self) -> Vec<(&str, f64, bool)> {
        let mut lines = vec![(self.uses.as_str(), USES_SIZE, false)];
        if let Some(n) = &self.notes {
            lines.push((n, NOTE_SIZE, false));
        }
        if let Some(c) = &self.condition {
            lines.push((c, NOTE_SIZE, true));
        }
        lines
    }

    pub(super) fn size(&self) -> (f64, f64) {
        let mut width = text_width(&self.id, ID_SIZE);
        let mut height = ID_SIZE + 2.0 * PAD_Y;
        for (text, size, _) in self.small_lines() {
            width = width.max(text_width(text, size));
            height += size + 5.0;
        }
        (
            (width + 2.0 * PAD_X).max(MIN_BOX_WIDTH).ceil(),
            height.ceil(),
        )
    }

    /// The box at `(x, y)` of size `(w, h)` with its text and tooltip, as an SVG group.
    pub(super) fn render(&self, out: &mut String, (x, y, w, h): (f64, f64, f64, f64)) {
        let mut class = String::from("stage");
        if self.waits_for_person {
            class.push_str(" approval");
        }
        if self.condition.is_some() {
            class.push_str(" conditional");
        }
        let _ = writeln!(out, r#"<g class="{class}">"#);
        let _ = writeln!(out, "<title>{}</title>", xml_escape(&self.tooltip));
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="{}" height="{}" rx="7" ry="7"/>"#,
            num(x),
            num(y),
            num(w),
            num(h)
        );
        let tx = num(x + PAD_X);
        let mut baseline = y + PAD_Y + ID_SIZE * 0.8;
        let _ = writeln!(
            out,
            r#"<text class="id" x="{tx}" y="{}">{}</text>"#,
            num(baseline),
            xml_escape(&self.id)
        );
        baseline += ID_SIZE * 0.2;
        for (text, size, italic) in self.small_lines() {
            baseline += 5.0 + size;
            let class = if italic {
                "cond"
            } else if size == USES_SIZE {
                "uses"
            } else {
                "note"
            };
            let _ = writeln!(
                out,
                r#"<text class="{class}" x="{tx}" y="{}">{}</text>"#,
                num(baseline - size * 0.2),
                xml_escape(text)
            );
        }
        out.push_str("</g>\n");
    }
}
