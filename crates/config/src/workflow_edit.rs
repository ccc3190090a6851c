//! The workflow editor's model of a workflow ([`WorkflowDraft`]: its name, triggers, and
//! each stage's `uses`, `with` and `needs`), read from a workflow file ([`draft_of`]) and
//! written back into one ([`compose`]).
//!
//! Writing back into an existing file edits its text in place: only the keys whose value
//! the draft changes are rewritten, so comments, blank lines, quoting and key order stay
//! as they were; a removed stage goes with the comments directly above it; a new stage
//! goes at the end of `stages`. Every result is read back and compared with what the draft
//! asks for; where the file's layout defeats the line editing (a `stages` map in flow
//! style, anchors a change would break), the workflow is written out whole instead, and
//! [`Composed::comments_kept`] says so.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Sink};
use crate::document::parse_yaml;
use crate::yaml_lines::{Edits, Entry, Kind, Lines};

/// A workflow as the editor shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDraft {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `on`, in order.
    #[serde(default)]
    pub on: Vec<DraftTrigger>,
    /// `stages`, in file order; new stages last.
    #[serde(default)]
    pub stages: Vec<DraftStage>,
}

/// One entry of `on`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftTrigger {
    /// `source`: `manual` or a `[sources]` name.
    #[serde(default)]
    pub source: String,
    /// `event`; empty for any event.
    #[serde(default)]
    pub event: String,
    /// `if`; empty for none.
    #[serde(default, rename = "if")]
    pub condition: String,
}

/// One stage, as far as the editor changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftStage {
    /// The stage id (its key under `stages`).
    #[serde(default)]
    pub id: String,
    /// `uses`: the adapter instance.
    #[serde(default)]
    pub uses: String,
    /// `with`, as YAML text (flow or block style, comments allowed); empty for none.
    #[serde(default)]
    pub with: String,
    /// `needs`: the ids this stage waits for.
    #[serde(default)]
    pub needs: Vec<String>,
}

/// A workflow file written from a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The file's text.
    pub text: String,
    /// False when an existing file had to be written out whole, losing its comments and
    /// layout.
    pub comments_kept: bool,
}

/// Why a file cannot be shown in the editor (its text still can be).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    /// The text is not a readable YAML workflow.
    #[error("the workflow cannot be read: {0}")]
    Unreadable(String),
    /// The workflow holds something the editor has no control for.
    #[error("the visual editor cannot show {0}; edit the YAML text instead")]
    Unsupported(String),
}

/// The draft of the workflow file `text`, each stage's `with` as written there (comments
/// included).
pub fn draft_of(text: &str) -> Result<WorkflowDraft, DraftError> {
    let document = read(text).map_err(DraftError::Unreadable)?;
    let Value::Object(map) = document else {
        return Err(DraftError::Unreadable(
            "expected a map with `name`, `on` and `stages` at the top".to_owned(),
        ));
    };
    let name =
        name_of(&map).ok_or_else(|| DraftError::Unsupported("a `name` that is not text".into()))?;
    let on = triggers_of(map.get("on"))
        .ok_or_else(|| DraftError::Unsupported("this `on` list".to_owned()))?;
    let lines = Lines::parse(text);
    let written = written_stages(&lines);
    let mut stages = Vec::new();
    match map.get("stages") {
        None | Some(Value::Null) => {}
        Some(Value::Object(items)) => {
            for (id, value) in items {
                let Some(stage) = value.as_object() else {
                    if value.is_null() {
                        stages.push(DraftStage {
                            id: id.clone(),
                            ..DraftStage::default()
                        });
                        continue;
                    }
                    return Err(DraftError::Unsupported(format!(
                        "stage `{id}`, which is not a map"
                    )));
                };
                let uses = match stage.get("uses") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => {
                        return Err(DraftError::Unsupported(format!(
                            "the `uses` of stage `{id}`, which is not text"
                        )));
                    }
                };
                let needs = needs_of(stage.get("needs")).ok_or_else(|| {
                    DraftError::Unsupported(format!("the `needs` of stage `{id}`"))
                })?;
                let with = with_text(stage, id, &written);
                stages.push(DraftStage {
                    id: id.clone(),
                    uses,
                    with,
                    needs,
                });
            }
        }
        Some(_) => {
            return Err(DraftError::Unsupported(
                "a `stages` that is not a map".into(),
            ));
        }
    }
    Ok(WorkflowDraft { name, on, stages })
}

/// The workflow file for `draft`: `original` (an existing file's text) edited in place, or
/// a new file when there is none.
pub fn compose(original: Option<&str>, draft: &WorkflowDraft) -> Composed {
    let Some(original) = original.filter(|t| !t.trim().is_empty()) else {
        return Composed {
            text: write_whole(draft, &Map::new()),
            comments_kept: true,
        };
    };
    let Ok(Value::Object(before)) = read(original) else {
        return Composed {
            text: write_whole(draft, &Map::new()),
            comments_kept: false,
        };
    };
    let plan = Plan::new(&before, original, draft);
    if let Some(text) = edit_in_place(original, draft, &plan)
        && plan.matches(&text, &before, draft)
    {
        return Composed {
            text,
            comments_kept: true,
        };
    }
    Composed {
        text: write_whole(draft, &before),
        comments_kept: false,
    }
}

/// What a draft changes in a file that parsed.
struct Plan {
    /// Whether `name` changes.
    name: bool,
    /// Whether `on` changes.
    on: bool,
    /// Whether the draft has no stage left of those the file has.
    clear_stages: bool,
    /// Per draft stage: the original stage it keeps (by id, the first draft stage of an id
    /// only), and which of its keys change.
    stages: Vec<StagePlan>,
}

#[derive(Default)]
struct StagePlan {
    /// The stage as the file has it; `None` for a new stage.
    original: Option<Value>,
    /// Whether `uses` changes.
    uses: bool,
    /// Whether `needs` changes.
    needs: bool,
    /// Whether `with` changes.
    with: bool,
}

impl StagePlan {
    fn changed(&self) -> bool {
        self.uses || self.needs || self.with
    }
}

impl Plan {
    fn new(before: &Map<String, Value>, text: &str, draft: &WorkflowDraft) -> Self {
        let written = written_stages(&Lines::parse(text));
        let stages_before = before.get("stages").and_then(Value::as_object);
        let mut seen = Vec::new();
        let stages = draft
            .stages
            .iter()
            .map(|stage| {
                let original = stages_before
                    .filter(|_| !seen.contains(&stage.id))
                    .and_then(|s| s.get(&stage.id));
                seen.push(stage.id.clone());
                let Some(original) = original else {
                    return StagePlan::default();
                };
                let map = original.as_object().cloned().unwrap_or_default();
                let with_before = with_text(&map, &stage.id, &written);
                StagePlan {
                    uses: map.get("uses").and_then(Value::as_str).unwrap_or_default() != stage.uses,
                    needs: needs_of(map.get("needs")).as_deref() != Some(&stage.needs[..]),
                    with: normalize(&with_before) != normalize(&stage.with),
                    original: Some(original.clone()),
                }
            })
            .collect();
        Self {
            name: name_of(before).as_deref() != Some(draft.name.as_str()),
            clear_stages: draft.stages.is_empty()
                && stages_before.is_some_and(|stages| !stages.is_empty()),
            on: triggers_of(before.get("on")).as_deref() != Some(&draft.on[..]),
            stages,
        }
    }

    /// Whether `text` reads as `before` with the draft's changes: a check on the line
    /// editing. When a `with` the draft gives is not YAML, nothing can be compared, and the
    /// text stands (its validation says what is wrong).
    fn matches(&self, text: &str, before: &Map<String, Value>, draft: &WorkflowDraft) -> bool {
        let Some(expected) = self.expected(before, draft) else {
            return true;
        };
        read(text).is_ok_and(|after| after == Value::Object(expected))
    }

    fn expected(
        &self,
        before: &Map<String, Value>,
        draft: &WorkflowDraft,
    ) -> Option<Map<String, Value>> {
        let mut expected = before.clone();
        if self.name {
            expected.insert("name".into(), Value::String(draft.name.clone()));
        }
        if self.on {
            expected.insert("on".into(), triggers_value(&draft.on));
        }
        let mut stages = Map::new();
        for (stage, plan) in draft.stages.iter().zip(&self.stages) {
            if let Some(original) = plan.original.as_ref().filter(|_| !plan.changed()) {
                if stages.insert(stage.id.clone(), original.clone()).is_some() {
                    return None;
                }
                continue;
            }
            let mut value = plan
                .original
                .as_ref()
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if plan.original.is_none() || plan.uses {
                value.insert("uses".into(), Value::String(stage.uses.clone()));
            }
            if plan.original.is_none() || plan.needs {
                value.remove("needs");
                if !stage.needs.is_empty() {
                    value.insert("needs".into(), needs_value(&stage.needs));
                }
            }
            if plan.original.is_none() || plan.with {
                value.remove("with");
                if let Some(with) = with_value(&stage.with)? {
                    value.insert("with".into(), with);
                }
            }
            if stages.contains_key(&stage.id) {
                // A second stage of one id: the file says it twice, which cannot be read.
                return None;
            }
            stages.insert(stage.id.clone(), Value::Object(value));
        }
        if !draft.stages.is_empty() || self.clear_stages {
            expected.insert("stages".into(), Value::Object(stages));
        }
        Some(expected)
    }
}

/// Edits `text` line by line; `None` when its layout is not one the line editing handles.
fn edit_in_place(text: &str, draft: &WorkflowDraft, plan: &Plan) -> Option<String> {
    let lines = Lines::parse(text);
    let top = lines.top()?;
    let find = |entries: &[Entry], key: &str| entries.iter().find(|e| e.key == key).cloned();
    let mut edits = Edits::default();
    let first_entry = top.first()?.clone();

    if plan.name {
        let value = scalar(&draft.name);
        match find(&top, "name") {
            Some(entry) => set_inline(&lines, &entry, &value, &mut edits),
            None => edits.insert(
                lines.comments_above(&first_entry, 0),
                vec![format!("name: {value}")],
            ),
        }
    }

    let stages_entry = find(&top, "stages");
    if plan.on {
        let mut block = trigger_lines(&draft.on);
        match find(&top, "on") {
            Some(entry) => match block.is_empty() {
                true => set_inline(&lines, &entry, "[]", &mut edits),
                false => {
                    let head = key_line_without_value(&lines, &entry);
                    block.insert(0, head);
                    edits.replace(entry.line..entry.end, block);
                }
            },
            None if !block.is_empty() => {
                block.insert(0, "on:".to_owned());
                let at = stages_entry
                    .as_ref()
                    .map_or(lines.len(), |s| lines.comments_above(s, 0));
                edits.insert(at, block);
            }
            None => {}
        }
    }

    let stages_entry = match stages_entry {
        Some(entry) => entry,
        None if draft.stages.is_empty() => return Some(edits.apply(&lines)),
        None => return None,
    };
    if plan.clear_stages {
        set_inline(&lines, &stages_entry, "{}", &mut edits);
        return Some(edits.apply(&lines));
    }
    if draft.stages.is_empty() {
        return Some(edits.apply(&lines));
    }
    let written = match lines.children(&stages_entry) {
        Some(entries) => entries,
        None if lines.inline(&stages_entry).is_empty() => Vec::new(),
        None => return None,
    };
    let stage_indent = written
        .first()
        .map_or(stages_entry.indent + 2, |e| e.indent);
    let step = written
        .iter()
        .find_map(|e| lines.children(e)?.first().map(|c| c.indent - e.indent))
        .unwrap_or(2);
    let spaced = written.windows(2).any(|pair| {
        lines.lines[pair[0].end..pair[1].line]
            .iter()
            .any(|l| l.kind == Kind::Blank)
    });

    // Stages the draft no longer has.
    let kept: Vec<&str> = draft.stages.iter().map(|s| s.id.as_str()).collect();
    let mut floor = stages_entry.line + 1;
    for entry in &written {
        if !kept.contains(&entry.key.as_str()) {
            let start = lines.comments_above(entry, floor);
            let mut end = entry.end;
            let blank_before = start > 0 && lines.lines[start - 1].kind == Kind::Blank;
            if blank_before && end < stages_entry.end && lines.lines[end].kind == Kind::Blank {
                end += 1;
            }
            edits.replace(start..end, Vec::new());
        }
        floor = entry.end;
    }

    let mut added = Vec::new();
    for (stage, stage_plan) in draft.stages.iter().zip(&plan.stages) {
        let Some(original) = &stage_plan.original else {
            if spaced {
                added.push(String::new());
            }
            added.extend(stage_lines(stage, None, stage_indent, step));
            continue;
        };
        if !stage_plan.changed() {
            continue;
        }
        let entry = written.iter().find(|e| e.key == stage.id)?;
        let Some(children) = lines.children(entry) else {
            // Flow style, or no value: the stage is written out again.
            edits.replace(
                entry.line..entry.end,
                stage_lines(stage, original.as_object(), entry.indent, step),
            );
            continue;
        };
        let inner = children.first().map_or(entry.indent + step, |c| c.indent);
        let mut head = Vec::new();
        if stage_plan.needs {
            match find(&children, "needs") {
                Some(c) if stage.needs.is_empty() => {
                    edits.replace(lines.comments_above(&c, entry.line + 1)..c.end, Vec::new());
                }
                Some(c) => set_inline(&lines, &c, &flow_list(&stage.needs), &mut edits),
                None if stage.needs.is_empty() => {}
                None => head.push(format!(
                    "{}needs: {}",
                    " ".repeat(inner),
                    flow_list(&stage.needs)
                )),
            }
        }
        if stage_plan.uses {
            match find(&children, "uses") {
                Some(c) => set_inline(&lines, &c, &scalar(&stage.uses), &mut edits),
                None => head.push(format!(
                    "{}uses: {}",
                    " ".repeat(inner),
                    scalar(&stage.uses)
                )),
            }
        }
        if !head.is_empty() {
            edits.insert(entry.line + 1, head);
        }
        if stage_plan.with {
            let with = with_lines(&stage.with, inner, step);
            match (find(&children, "with"), with) {
                (Some(c), Some(mut block)) => {
                    block[0] = keep_comment(&lines, &c, &block[0], block.len() == 1);
                    edits.replace(c.line..c.end, block);
                }
                (Some(c), None) => {
                    edits.replace(lines.comments_above(&c, entry.line + 1)..c.end, Vec::new());
                }
                (None, Some(block)) => edits.insert(entry.end, block),
                (None, None) => {}
            }
        }
    }
    if !added.is_empty() {
        edits.insert(stages_entry.end, added);
    }
    Some(edits.apply(&lines))
}

/// The key line of `entry` with its value dropped, its comment kept.
fn key_line_without_value(lines: &Lines, entry: &Entry) -> String {
    let text = lines.lines[entry.line].text;
    let head = text[..entry.inline.start].trim_end();
    let comment = text[entry.inline.end..].trim();
    if comment.is_empty() {
        head.to_owned()
    } else {
        format!("{head} {comment}")
    }
}

/// `first`, the new key line of `entry`, with the old key line's comment when the new
/// value fits on that line (`single`).
fn keep_comment(lines: &Lines, entry: &Entry, first: &str, single: bool) -> String {
    let text = lines.lines[entry.line].text;
    let comment = text[entry.inline.end..].trim();
    if comment.is_empty() || !(single || first.trim_end().ends_with(':')) {
        first.to_owned()
    } else {
        format!("{first} {comment}")
    }
}

/// Replaces `entry`'s value with the one-line `value`, keeping its key and its comment.
fn set_inline(lines: &Lines, entry: &Entry, value: &str, edits: &mut Edits) {
    let text = lines.lines[entry.line].text;
    let head = text[..entry.inline.start].trim_end();
    let tail = &text[entry.inline.end..];
    let comment = tail.trim_start();
    let mut line = format!("{head} {value}");
    if !comment.is_empty() {
        let spacing = &tail[..tail.len() - comment.len()];
        line.push_str(if spacing.is_empty() { " " } else { spacing });
        line.push_str(comment);
    }
    // Lines the old value took below its key go with it.
    edits.replace(entry.line..entry.end, vec![line]);
}

/// A stage written out whole at `indent`: its id, then `needs`, `uses` and `with` from the
/// draft and every other key of `original` in its place.
fn stage_lines(
    stage: &DraftStage,
    original: Option<&Map<String, Value>>,
    indent: usize,
    step: usize,
) -> Vec<String> {
    let inner = indent + step;
    let pad = " ".repeat(inner);
    let mut keys: Vec<String> = original
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for (i, key) in ["needs", "uses", "with"].into_iter().enumerate() {
        if !keys.iter().any(|k| k == key) {
            let at = keys
                .iter()
                .rposition(|k| ["needs", "uses", "with"][..i].contains(&k.as_str()))
                .map_or(0, |p| p + 1);
            keys.insert(at.min(keys.len()), key.to_owned());
        }
    }
    let mut out = vec![format!("{}{}:", " ".repeat(indent), scalar(&stage.id))];
    for key in keys {
        match key.as_str() {
            "needs" if !stage.needs.is_empty() => {
                out.push(format!("{pad}needs: {}", flow_list(&stage.needs)));
            }
            "uses" => out.push(format!("{pad}uses: {}", scalar(&stage.uses))),
            "with" => out.extend(with_lines(&stage.with, inner, step).unwrap_or_default()),
            "needs" => {}
            other => {
                if let Some(value) = original.and_then(|m| m.get(other)) {
                    out.extend(value_lines(other, value, inner));
                }
            }
        }
    }
    out
}

/// `with:` at `indent` holding the editor's text: on the key line when the text is one
/// flow or scalar value (or starts one: `{ a: 1,` …, `|`), else indented `step` more below
/// it. `None` when the text holds no value.
fn with_lines(text: &str, indent: usize, step: usize) -> Option<Vec<String>> {
    let body: Vec<&str> = text.trim_end().lines().map(str::trim_end).collect();
    let first = body
        .iter()
        .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    let pad = " ".repeat(indent);
    let deeper = " ".repeat(indent + step);
    let start = body[first].trim_start();
    let single_plain = body.len() == 1 && !start.starts_with("- ") && key_like(start).is_none();
    let inline = first == 0
        && (single_plain || start.starts_with(['{', '[', '|', '>', '"', '\'', '&', '*', '!']));
    let mut out = Vec::new();
    if inline {
        out.push(format!("{pad}with: {start}"));
        for line in &body[1..] {
            out.push(indented(&deeper, line));
        }
    } else {
        out.push(format!("{pad}with:"));
        for line in &body {
            out.push(indented(&deeper, line));
        }
    }
    Some(out)
}

fn key_like(line: &str) -> Option<(String, std::ops::Range<usize>)> {
    crate::yaml_lines::key_line(line, 0)
}

fn indented(pad: &str, line: &str) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!("{pad}{line}")
    }
}

/// The `on:` list's items, indented two spaces; empty for no trigger.
fn trigger_lines(triggers: &[DraftTrigger]) -> Vec<String> {
    let mut out = Vec::new();
    for t in triggers {
        out.push(format!("  - source: {}", scalar(&t.source)));
        if !t.event.is_empty() {
            out.push(format!("    event: {}", scalar(&t.event)));
        }
        if !t.condition.is_empty() {
            out.push(format!("    if: {}", scalar(&t.condition)));
        }
    }
    out
}

/// `key: value` at `indent`, a value of more than one line indented below its key.
fn value_lines(key: &str, value: &Value, indent: usize) -> Vec<String> {
    let pad = " ".repeat(indent);
    let text = yaml_text(value);
    let body: Vec<&str> = text.trim_end().lines().collect();
    match body.as_slice() {
        [one]
            if !matches!(value, Value::Object(m) if !m.is_empty())
                && !matches!(value, Value::Array(a) if !a.is_empty()) =>
        {
            vec![format!("{pad}{}: {one}", scalar(key))]
        }
        _ => {
            let deeper = " ".repeat(indent + 2);
            std::iter::once(format!("{pad}{}:", scalar(key)))
                .chain(body.iter().map(|l| indented(&deeper, l)))
                .collect()
        }
    }
}

/// A whole workflow file for `draft`, the keys of `before` it does not change kept (their
/// comments are not).
fn write_whole(draft: &WorkflowDraft, before: &Map<String, Value>) -> String {
    let mut keys: Vec<String> = before.keys().cloned().collect();
    for key in ["stages", "on", "name"] {
        if !keys.iter().any(|k| k == key) {
            keys.insert(0, key.to_owned());
        }
    }
    let stages_before = before.get("stages").and_then(Value::as_object);
    let mut out = Vec::new();
    for key in keys {
        match key.as_str() {
            "name" => out.push(format!("name: {}", scalar(&draft.name))),
            "on" if draft.on.is_empty() => {
                if before.contains_key("on") {
                    out.push("on: []".to_owned());
                }
            }
            "on" => {
                out.push("on:".to_owned());
                out.extend(trigger_lines(&draft.on));
            }
            "stages" if draft.stages.is_empty() => out.push("stages: {}".to_owned()),
            "stages" => {
                out.push("stages:".to_owned());
                for stage in &draft.stages {
                    let original = stages_before
                        .and_then(|s| s.get(&stage.id))
                        .and_then(Value::as_object);
                    out.extend(stage_lines(stage, original, 2, 2));
                }
            }
            other => {
                if let Some(value) = before.get(other) {
                    out.extend(value_lines(other, value, 0));
                }
            }
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// A string as a one-line YAML scalar: plain when YAML reads it back as the same string,
/// else quoted.
fn scalar(text: &str) -> String {
    let plain = serde_yaml_ng::to_string(text).unwrap_or_default();
    let plain = plain.strip_suffix('\n').unwrap_or(&plain);
    if plain.contains('\n') || plain.is_empty() {
        serde_json::to_string(text).unwrap_or_else(|_| "''".to_owned())
    } else {
        plain.to_owned()
    }
}

/// `[a, b]`.
fn flow_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| scalar(i)).collect();
    format!("[{}]", items.join(", "))
}

/// A value as block-style YAML text.
fn yaml_text(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

/// Text compared for changes: the same lines, trailing spaces and blank lines aside.
fn normalize(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().map(str::trim_end).collect();
    lines.join("\n")
}

/// The parsed `with` of the editor's text; `Some(None)` for none, `None` when it is not
/// YAML.
fn with_value(text: &str) -> Option<Option<Value>> {
    if normalize(text)
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Some(None);
    }
    read(text).ok().map(Some)
}

fn triggers_value(triggers: &[DraftTrigger]) -> Value {
    Value::Array(
        triggers
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("source".into(), Value::String(t.source.clone()));
                if !t.event.is_empty() {
                    m.insert("event".into(), Value::String(t.event.clone()));
                }
                if !t.condition.is_empty() {
                    m.insert("if".into(), Value::String(t.condition.clone()));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn needs_value(needs: &[String]) -> Value {
    Value::Array(needs.iter().cloned().map(Value::String).collect())
}

/// The `name` as the editor shows it: text, a number as its digits, nothing as empty;
/// `None` for anything else.
fn name_of(map: &Map<String, Value>) -> Option<String> {
    match map.get("name") {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => None,
    }
}

/// The triggers of an `on` value; `None` when it holds anything the editor cannot show.
fn triggers_of(on: Option<&Value>) -> Option<Vec<DraftTrigger>> {
    let items = match on {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return None,
    };
    items
        .iter()
        .map(|item| {
            let map = item.as_object()?;
            if map
                .keys()
                .any(|k| !["source", "event", "if"].contains(&k.as_str()))
            {
                return None;
            }
            let text = |key: &str| match map.get(key) {
                None | Some(Value::Null) => Some(String::new()),
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => None,
            };
            Some(DraftTrigger {
                source: text("source")?,
                event: text("event")?,
                condition: text("if")?,
            })
        })
        .collect()
}

/// The ids of a `needs` value (one id or a list); `None` for anything else.
fn needs_of(needs: Option<&Value>) -> Option<Vec<String>> {
    match needs {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => None,
    }
}

/// The `with` of stage `id` as text: as the file writes it when that reads as its value
/// (a merge key or an alias may say otherwise), else the value written out.
fn with_text(stage: &Map<String, Value>, id: &str, written: &[WrittenWith]) -> String {
    let value = stage.get("with").filter(|v| !v.is_null());
    match written.iter().find(|w| w.id == id) {
        Some(w) if with_value(&w.with) == Some(value.cloned()) => w.with.clone(),
        _ => value.map(yaml_text).unwrap_or_default(),
    }
}

/// A stage's `with` as the file writes it.
struct WrittenWith {
    /// The stage id.
    id: String,
    /// Its `with` as written, dedented; empty when it has none.
    with: String,
}

/// The `with` text of each block-style stage, as written (dedented): what the editor shows
/// and compares.
fn written_stages(lines: &Lines) -> Vec<WrittenWith> {
    let mut out = Vec::new();
    let Some(top) = lines.top() else { return out };
    let Some(stages) = top.iter().find(|e| e.key == "stages") else {
        return out;
    };
    for stage in lines.children(stages).unwrap_or_default() {
        let Some(children) = lines.children(&stage) else {
            continue;
        };
        let with = match children.iter().find(|c| c.key == "with") {
            Some(with) => value_text(lines, with),
            None => String::new(),
        };
        out.push(WrittenWith {
            id: stage.key.clone(),
            with,
        });
    }
    out
}

/// The text of `entry`'s value: the rest of its key line (when the value starts there) and
/// the lines below, less their common indentation.
fn value_text(lines: &Lines, entry: &Entry) -> String {
    let mut out = Vec::new();
    let text = lines.lines[entry.line].text;
    if !entry.inline.is_empty() {
        out.push(text[entry.inline.start..].trim_end().to_owned());
    }
    let below = &lines.lines[entry.line + 1..entry.end];
    let cut = below
        .iter()
        .filter(|l| l.kind == Kind::Content)
        .map(|l| l.indent)
        .min()
        .unwrap_or(0);
    for line in below {
        let strip = line.indent.min(cut);
        out.push(line.text[strip..].trim_end().to_owned());
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// YAML text as JSON, with the checks a workflow file gets; the first problem as text.
fn read(text: &str) -> Result<Value, String> {
    let mut problems: Vec<Diagnostic> = Vec::new();
    let value = parse_yaml(
        text,
        &mut Sink::new(std::path::Path::new(""), &mut problems),
    );
    match value {
        Some(value) if problems.is_empty() => Ok(value),
        _ => Err(problems
            .into_iter()
            .next()
            .map_or_else(|| "not YAML".to_owned(), |p| p.message)),
    }
}

#[cfg(test)]
mod tests;
