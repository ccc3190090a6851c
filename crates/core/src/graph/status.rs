//! The glyph that goes with a status word wherever baton shows one (the run graph's boxes,
//! the web UI's badges), so that a status never depends on colour alone.

/// The glyph drawn beside `status`: a stage's, a run's or a webhook delivery's status as
/// stored (`succeeded`, `waiting`, `processed`, …); `•` for a word it does not know.
pub fn status_icon(status: &str) -> &'static str {
    match status {
        "succeeded" | "processed" => "✓",
        "failed" => "✗",
        "running" => "▶",
        // Not U+23F8 (pause): common Linux fonts lack it and a browser draws a box.
        "waiting" => "‖",
        "pending" | "queued" | "received" | "replay" => "…",
        "cancelled" => "⊘",
        "skipped" => "↷",
        _ => "•",
    }
}
