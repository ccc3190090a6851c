//! Text shared by both pictures: a stage's notes, XML escaping, clipping and numbers.

use crate::workflow::{OnFailure, Stage, Workflow};

/// The stage's own settings worth showing: a timeout written in the file, retries, and a
/// failure policy other than `halt`.
pub(super) fn notes(workflow: &Workflow, stage: &Stage) -> Vec<String> {
    let mut notes = Vec::new();
    let spec = workflow.spec.stages.get(&stage.id);
    if let Some(timeout) = spec.and_then(|s| s.timeout) {
        notes.push(format!("timeout {timeout}"));
    }
    if stage.retry.attempts > 1 {
        notes.push(format!("{} attempts", stage.retry.attempts));
    }
    match stage.on_failure {
        OnFailure::Halt => {}
        OnFailure::Continue => notes.push("on failure: continue".into()),
        OnFailure::Ignore => notes.push("on failure: ignore".into()),
    }
    notes
}

/// and control characters XML 1.0 cannot hold replaced by a space.
pub(super) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `text`, cut to at most `max` characters with a trailing `…`.
pub(super) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A number for an SVG attribute: at most one decimal, no trailing `.0`.
pub(super) fn num(value: f64) -> String {
    let tenths = (value * 10.0).round() as i64;
    if tenths % 10 == 0 {
        (tenths / 10).to_string()
    } else {
        format!(
            "{}{}.{}",
            if tenths < 0 { "-" } else { "" },
            (tenths / 10).abs(),
            (tenths % 10).abs()
        )
    }
}
