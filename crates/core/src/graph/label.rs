//! One stage's box in the SVG: its clipped text, its size and its markup.

use std::fmt::Write as _;

use super::status::status_icon;
use super::svg::{
    ID_SIZE, MIN_BOX_WIDTH, NOTE_SIZE, PAD_X, PAD_Y, STATUS_SIZE, USES_SIZE, text_width,
};
use super::text::{clip, notes, num, xml_escape};
use crate::state::StageStatus;
use crate::workflow::{Stage, Workflow};

/// Text longer than this many characters is cut (with `…`) inside SVG boxes; the whole text
/// stays in the box's tooltip.
const MAX_BOX_CHARS: usize = 40;
/// Conditions are shown shorter than ids.
const MAX_CONDITION_CHARS: usize = 44;

/// What a run's page adds to a stage's box.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    /// The stage's status, drawn in the box as a glyph and a word.
    pub(super) status: Option<StageStatus>,
    /// The address the box links to.
    pub(super) link: Option<String>,
}

/// What one line under the id is, which sets its class, size and style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The status: a glyph and a word.
    Status,
    /// `uses: <adapter>`.
    Uses,
    /// Timeout, retries, failure policy.
    Note,
    /// The `if:` condition, in italics.
    Condition,
}

impl Line {
    fn class(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Uses => "uses",
            Self::Note => "note",
            Self::Condition => "cond",
        }
    }

    fn size(self) -> f64 {
        match self {
            Self::Status => STATUS_SIZE,
            Self::Uses => USES_SIZE,
            Self::Note | Self::Condition => NOTE_SIZE,
        }
    }
}

/// One box's text, already clipped.
pub(super) struct Label {
    /// The stage id, whole (for `data-stage`).
    stage: String,
    id: String,
    uses: String,
    notes: Option<String>,
    pub(super) condition: Option<String>,
    tooltip: String,
    /// Drawn as a stage that waits for a person.
    pub(super) waits_for_person: bool,
    /// What a run's page adds; `None` in a file.
    mark: Option<Mark>,
}

impl Label {
    pub(super) fn new(
        workflow: &Workflow,
        stage: &Stage,
        waits_for_person: bool,
        mark: Option<Mark>,
    ) -> Self {
        let notes = notes(workflow, stage);
        let mut tooltip = stage.id.clone();
        if let Some(status) = mark.as_ref().and_then(|m| m.status) {
            let _ = write!(tooltip, ": {status}");
        }
        let _ = write!(tooltip, "\nuses: {}", stage.uses);
        for note in &notes {
            let _ = write!(tooltip, "\n{note}");
        }
        if let Some(c) = &stage.condition {
            let _ = write!(tooltip, "\nif: {}", c.source());
        }
        Self {
            stage: stage.id.clone(),
            id: clip(&stage.id, MAX_BOX_CHARS),
            uses: clip(&format!("uses: {}", stage.uses), MAX_BOX_CHARS),
            notes: (!notes.is_empty()).then(|| clip(&notes.join(" · "), MAX_BOX_CHARS)),
            condition: stage.condition.as_ref().map(|c| {
                let one_line = c.source().split_whitespace().collect::<Vec<_>>().join(" ");
                format!("if {}", clip(&one_line, MAX_CONDITION_CHARS))
            }),
            tooltip,
            waits_for_person,
            mark,
        }
    }

    fn status(&self) -> Option<StageStatus> {
        self.mark.as_ref().and_then(|m| m.status)
    }

    fn link(&self) -> Option<&str> {
        self.mark.as_ref().and_then(|m| m.link.as_deref())
    }

    /// The status line's text: the glyph, a space, the word.
    fn status_text(&self) -> Option<String> {
        self.status()
            .map(|s| format!("{} {}", status_icon(s.as_str()), s.as_str()))
    }

    /// The lines under the id, top to bottom (the status line's text is the word alone:
    /// its glyph is drawn apart).
    fn small_lines(&self) -> Vec<(Line, &str)> {
        let mut lines = Vec::with_capacity(4);
        if let Some(status) = self.status() {
            lines.push((Line::Status, status.as_str()));
        }
        lines.push((Line::Uses, self.uses.as_str()));
        if let Some(n) = &self.notes {
            lines.push((Line::Note, n));
        }
        if let Some(c) = &self.condition {
            lines.push((Line::Condition, c));
        }
        lines
    }

    pub(super) fn size(&self) -> (f64, f64) {
        let mut width = text_width(&self.id, ID_SIZE);
        let mut height = ID_SIZE + 2.0 * PAD_Y;
        let status = self.status_text();
        for (line, text) in self.small_lines() {
            let text = match (line, &status) {
                (Line::Status, Some(whole)) => whole.as_str(),
                _ => text,
            };
            width = width.max(text_width(text, line.size()));
            height += line.size() + 5.0;
        }
        (
            (width + 2.0 * PAD_X).max(MIN_BOX_WIDTH).ceil(),
            height.ceil(),
        )
    }

    /// The box at `(x, y)` of size `(w, h)` with its text and tooltip, as an SVG group;
    /// inside a link, with the tooltip naming the link, when the box has one.
    pub(super) fn render(&self, out: &mut String, (x, y, w, h): (f64, f64, f64, f64)) {
        let mut class = String::from("stage");
        if let Some(status) = self.status() {
            let _ = write!(class, " status-{status}");
        }
        if self.waits_for_person {
            class.push_str(" approval");
        }
        if self.condition.is_some() {
            class.push_str(" conditional");
        }
        let title = format!("<title>{}</title>", xml_escape(&self.tooltip));
        if let Some(link) = self.link() {
            let _ = writeln!(out, r#"<a href="{}">{title}"#, xml_escape(link));
        }
        let _ = write!(out, r#"<g class="{class}""#);
        if self.mark.is_some() {
            let _ = write!(out, r#" data-stage="{}""#, xml_escape(&self.stage));
        }
        if let Some(status) = self.status() {
            let _ = write!(out, r#" data-status="{status}""#);
        }
        out.push_str(">\n");
        if self.link().is_none() {
            let _ = writeln!(out, "{title}");
        }
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
            r#"<text class="id" x="{tx}" y="{}" font-size="{}">{}</text>"#,
            num(baseline),
            num(ID_SIZE),
            xml_escape(&self.id)
        );
        baseline += ID_SIZE * 0.2;
        for (line, text) in self.small_lines() {
            let size = line.size();
            baseline += 5.0 + size;
            let glyph = match line {
                Line::Status => format!(r#"<tspan class="icon">{}</tspan> "#, status_icon(text)),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                r#"<text class="{}" x="{tx}" y="{}" font-size="{}">{glyph}{}</text>"#,
                line.class(),
                num(baseline - size * 0.2),
                num(size),
                xml_escape(text)
            );
        }
        out.push_str("</g>\n");
        if self.link().is_some() {
            out.push_str("</a>\n");
        }
    }
}
