//! Template rendering and trigger matching: compiled jq on fuzzed programs and payloads.
//!
//! # Input
//!
//! The program, a NUL byte, then the JSON text it reads:
//!
//! - template target: a string with `${{ … }}` templates, or JSON (a stage's `with:` block,
//!   its strings holding templates), then the event of a run; the templates are rendered
//!   against the context a stage sees (`.event`, `.trigger`, `.run`, `.stages`);
//! - trigger target: an `on[].if` expression, then a delivery's body.
//!
//! The program is at most [`MAX_PROGRAM`] bytes. A program can still run away (`def f: f;
//! f`), so a run must also give libFuzzer a `-timeout` and an `-rss_limit_mb` (run.sh does).
//!
//! # Checks
//!
//! - no panic, whatever the program and payload;
//! - a trigger's condition gives the same answer on a payload read the way the matcher
//!   reads a stored delivery (straight into jaq's values) as on the same payload read
//!   the way the engine reads a stage's context (through `serde_json`).

use baton_core::context::{StageView, TriggerInfo, stage_context};
use baton_core::expr::{parse_val, to_val};
use baton_core::workflow::Trigger;
use baton_core::{Expr, ExternalRef, StageStatus, TemplatedValue};
use serde_json::{Value, json};

use crate::split_nul;

/// The longest program a target runs. Real ones are a line or two; a longer program only
/// finds more ways to run long.
pub const MAX_PROGRAM: usize = 512;

/// Renders the templates of `data` against a stage context holding its event.
pub fn template(data: &[u8]) {
    let Some((program, event)) = split_nul(data, MAX_PROGRAM) else {
        return;
    };
    // A `with:` block is JSON with templates in its strings; anything else is one string.
    let block = match serde_json::from_str::<Value>(program) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => Value::String(program.to_owned()),
    };
    let Ok(compiled) = TemplatedValue::compile(&block) else {
        return;
    };
    let event = serde_json::from_str(event).unwrap_or(Value::Null);
    let outputs = json!({"dir": "work/1", "number": 14, "properties": {"version": "1.2.3"}});
    let external = ExternalRef::new("14");
    let context = stage_context(
        &event,
        &TriggerInfo {
            source: "github".into(),
            event: "push".into(),
            delivery_id: Some("d-1".into()),
        },
        "01J0RUN",
        "fuzz",
        1,
        [(
            "build",
            StageView {
                status: StageStatus::Succeeded,
                outputs: &outputs,
                external: Some(&external),
            },
        )],
    );
    let _ = compiled.render(&to_val(&context));
}

/// Evaluates the trigger condition of `data` on its payload, read both ways.
pub fn trigger(data: &[u8]) {
    let Some((program, payload)) = split_nul(data, MAX_PROGRAM) else {
        return;
    };
    let Ok(condition) = Expr::compile(program) else {
        return;
    };
    let Ok(stored) = parse_val(payload) else {
        return;
    };
    let trigger = Trigger {
        source: "github".into(),
        event: Some("push".into()),
        condition: Some(condition.clone()),
    };
    let matched = trigger.matches("github", "push", &stored);
    let Ok(value) = serde_json::from_str::<Value>(payload) else {
        return;
    };
    let in_context = condition.is_true(&value);
    if let (Ok(matched), Ok(in_context)) = (matched, in_context) {
        assert_eq!(
            matched, in_context,
            "`{program}` holds {matched} for the matcher but {in_context} for the engine on {payload}"
        );
    }
}
