//! Live progress of a run: a redrawn table on a terminal, plain lines elsewhere.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use baton_core::{RunStatus, StageStatus};
use baton_engine::{Event, RunView};

/// One stage as the display knows it.
struct Row {
    id: String,
    status: StageStatus,
    attempt: u32,
    message: Option<String>,
    since: Option<Instant>,
    took: Option<Duration>,
}

/// Shows the stages of one run while it goes.
pub(crate) struct Progress {
    live: bool,
    begun: Instant,
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    drawn: usize,
    frame: usize,
    out: Box<dyn Write + Send>,
    title: String,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

fn symbol(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Pending => "·",
        StageStatus::Running => "▶",
        StageStatus::Waiting => "⏸",
        StageStatus::Succeeded => "✓",
        StageStatus::Failed => "✗",
        StageStatus::Cancelled => "⊘",
        StageStatus::Skipped => "↷",
    }
}

fn color(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Succeeded => "\x1b[32m",
        StageStatus::Failed => "\x1b[31m",
        StageStatus::Running | StageStatus::Waiting => "\x1b[36m",
        StageStatus::Cancelled => "\x1b[33m",
        StageStatus::Pending | StageStatus::Skipped => "\x1b[2m",
    }
}

/// `1.2s`, `3m04s`, `2h05m`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

impl Progress {
    /// A display for `stages` (in order). `live` redraws in place (a terminal).
    pub(crate) fn new(
        title: String,
        stages: &[String],
        live: bool,
        out: Box<dyn Write + Send>,
    ) -> Self {
        let rows = stages
            .iter()
            .map(|id| Row {
                id: id.clone(),
                status: StageStatus::Pending,
                attempt: 0,
                message: None,
                since: None,
                took: None,
            })
            .collect();
        let index = stages
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Self {
            live,
            begun: Instant::now(),
            rows,
            index,
            drawn: 0,
            frame: 0,
            out,
            title,
        }
    }

    /// Takes an engine event for this run.
    pub(crate) fn on_event(&mut self, event: &Event) {
        let Event::Stage {
            stage_id,
            status,
            attempt,
            message,
            ..
        } = event
        else {
            return;
        };
        let Some(&i) = self.index.get(stage_id) else {
            return;
        };
        let row = &mut self.rows[i];
        let changed = row.status != *status || row.attempt != *attempt || row.message != *message;
        if row.since.is_none() && status.is_active() {
            row.since = Some(Instant::now());
        }
        if status.is_terminal() && row.took.is_none() {
            row.took = row.since.map(|s| s.elapsed());
        }
        if !status.is_terminal() {
            row.took = None;
        }
        row.status = *status;
        row.attempt = *attempt;
        row.message = message.clone();
        if changed && !self.live {
            let elapsed = self.begun.elapsed().as_secs_f64();
            let attempt = if *attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            };
            let note = message
                .as_deref()
                .filter(|m| !m.is_empty() && *m != status.as_str())
                .map(|m| format!(": {}", one_line(m)))
                .unwrap_or_default();
            let _ = writeln!(
                self.out,
                "[{elapsed:>7.2}s] {} {}{attempt}{note}",
                row.id, status
            );
        }
    }

    /// Redraws the table (terminal only).
    pub(crate) fn tick(&mut self) {
        if !self.live {
            return;
        }
        self.frame = self.frame.wrapping_add(1);
        let width = self.rows.iter().map(|r| r.id.len()).max().unwrap_or(0);
        let mut text = String::new();
        if self.drawn > 0 {
            text.push_str(&format!("\x1b[{}A", self.drawn));
        }
        text.push_str(&format!(
            "\x1b[2K\x1b[1m{}\x1b[0m  {}\n",
            self.title,
            human(self.begun.elapsed())
        ));
        for row in &self.rows {
            let sym = if row.status.is_active() {
                SPINNER[self.frame % SPINNER.len()]
            } else {
                symbol(row.status)
            };
            let time = match (row.took, row.since) {
                (Some(t), _) => human(t),
                (None, Some(s)) if row.status.is_active() => human(s.elapsed()),
                _ => String::new(),
            };
            let attempt = if row.attempt > 1 {
                format!(" attempt {}", row.attempt)
            } else {
                String::new()
            };
            let note = row
                .message
                .as_deref()
                .filter(|m| *m != row.status.as_str())
                .map(one_line)
                .unwrap_or_default();
            let note: String = note.chars().take(80).collect();
            text.push_str(&format!(
                "\x1b[2K  {}{sym} {:<width$}  {:<9}\x1b[0m {:>7}{attempt}  \x1b[2m{note}\x1b[0m\n",
                color(row.status),
                row.id,
                row.status.as_str(),
                time,
            ));
        }
        self.drawn = self.rows.len() + 1;
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Clears the live table so a prompt can be shown; the next tick draws it again below.
    pub(crate) fn pause(&mut self) {
        self.drawn = 0;
    }

    /// The closing lines: the final table (terminal) and a summary with failures and outputs.
    pub(crate) fn finish(&mut self, run: &RunView) {
        for stage in &run.stages {
            if let (Some(&i), Some(status)) =
                (self.index.get(&stage.id), StageStatus::parse(&stage.status))
            {
                let row = &mut self.rows[i];
                row.status = status;
                row.message = stage.message.clone();
                row.attempt = stage.attempt;
                if let (Some(s), Some(f)) = (stage.started_at, stage.finished_at) {
                    row.took = Some(Duration::from_millis((f - s).max(0) as u64));
                }
            }
        }
        self.tick();
        let took = run
            .duration_ms
            .map(|ms| human(Duration::from_millis(ms.max(0) as u64)))
            .unwrap_or_default();
        let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
        let _ = writeln!(self.out, "run {} {} {took}", run.id, status);
        if let Some(message) = &run.message {
            let _ = writeln!(self.out, "  {message}");
        }
        for stage in &run.stages {
            if stage.status == "failed"
                && let Some(m) = &stage.message
            {
                let _ = writeln!(
                    self.out,
                    "  {} failed: {}",
                    stage.id,
                    m.trim_end().replace('\n', "\n    ")
                );
            }
        }
        let with_outputs: Vec<_> = run
            .stages
            .iter()
            .filter(|s| s.outputs.as_object().is_some_and(|o| !o.is_empty()))
            .collect();
        if !with_outputs.is_empty() {
            let _ = writeln!(self.out, "outputs:");
            for stage in with_outputs {
                let text = stage.outputs.to_string();
                let text: String = if text.chars().count() > 160 {
                    text.chars().take(157).collect::<String>() + "..."
                } else {
                    text
                };
                let _ = writeln!(self.out, "  {}: {text}", stage.id);
            }
        }
        let _ = self.out.flush();
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}
