//! Pictures of a workflow's stage graph: Graphviz DOT ([`to_dot`]) and a standalone SVG drawn
//! without Graphviz ([`to_svg`]). Pure functions: same workflow, same bytes.
//!
//! The SVG uses a layered layout ([`layout`]): a stage's column is the length of its longest
//! path from a stage without `needs`; an edge that spans several columns passes through a
//! placeholder in each column between, so it never runs through a box; and rows are ordered
//! by a few barycenter sweeps, keeping the order with the fewest crossings.

use std::fmt::Write as _;

use crate::workflow::{OnFailure, Stage, Workflow};

/// Text longer than this many characters is cut (with `…`) inside SVG boxes; the whole text
/// stays in the box's tooltip.
const MAX_BOX_CHARS: usize = 40;
/// Conditions are shown shorter than ids.
const MAX_CONDITION_CHARS: usize = 44;

/// The workflow as a Graphviz digraph, left to right: one node per stage, labelled with its
/// id, its `uses` and (smaller) its own timeout, retry and failure policy; an edge from each
/// need to its dependent. Stages with an `if:` are dashed, with the condition as tooltip;
/// `approval` stages are hexagons.
///
/// Render it with `dot -Tsvg`, `dot -Tpng`, …
pub fn to_dot(workflow: &Workflow) -> String {
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
        let approval = stage.uses == "approval";
        if approval {
            attrs.push("shape=hexagon".into());
            attrs.push("fillcolor=\"#fff4d6\"".into());
            attrs.push("color=\"#b7791f\"".into());
        }
        let mut tooltip = format!("{} (uses: {})", stage.id, stage.uses);
        if let Some(condition) = &stage.condition {
            attrs.push(
                if approval {
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

/// Where [`to_svg`] puts each stage, indexed like [`Workflow::stages`]: its column (the length
/// of its longest path from a stage without `needs`) and its row within that column (0 at
/// the top; rows count stages only, not the places long edges pass through).
pub fn layout(workflow: &Workflow) -> Vec<(usize, usize)> {
    let layers = Layers::new(workflow);
    let mut at = vec![(0, 0); workflow.stages.len()];
    for (column, slots) in layers.columns.iter().enumerate() {
        let stages = slots.iter().filter(|&&v| v < workflow.stages.len());
        for (row, &v) in stages.enumerate() {
            at[v] = (column, row);
        }
    }
    at
}

/// The workflow as a standalone SVG image that any browser opens, drawn without Graphviz:
/// the stages as rounded boxes in columns by depth (id in bold, `uses` below, then timeout,
/// retry, failure policy and condition when set), curved arrows from each need to its
/// dependents, a dashed border for stages with an `if:`, an amber fill for `approval`
/// stages, and a legend. Every box has a tooltip with its full text.
pub fn to_svg(workflow: &Workflow) -> String {
    Drawing::new(workflow).render()
}

/// Every edge need → dependent, in stage order.
fn edges(workflow: &Workflow) -> Vec<(usize, usize)> {
    workflow
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.dependents.iter().map(move |&j| (i, j)))
        .collect()
}

/// The stage's own settings worth showing: a timeout written in the file, retries, and a
/// failure policy other than `halt`.
fn notes(workflow: &Workflow, stage: &Stage) -> Vec<String> {
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

/// A DOT quoted string: `"`, `\` and line breaks escaped, so that an id or a jq expression
/// can never end the string early (a trailing `\` would otherwise escape the closing quote).
fn dot_quote(text: &str) -> String {
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

/// Text for XML (SVG, and Graphviz HTML-like labels): the five special characters escaped,
/// and control characters XML 1.0 cannot hold replaced by a space.
fn xml_escape(text: &str) -> String {
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
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A number for an SVG attribute: at most one decimal, no trailing `.0`.
fn num(value: f64) -> String {
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

/// The layered graph: stages (vertices `0..n`) and placeholders for long edges (`n..`),
/// every edge between adjacent columns.
struct Layers {
    /// Vertices of each column, top to bottom.
    columns: Vec<Vec<usize>>,
    /// The column of each vertex.
    column: Vec<usize>,
    /// Predecessors and successors of each vertex (one column left, one right).
    preds: Vec<Vec<usize>>,
    succs: Vec<Vec<usize>>,
    /// For each edge of [`edges`], the vertices it passes through, source and target included.
    chains: Vec<Vec<usize>>,
}

impl Layers {
    fn new(workflow: &Workflow) -> Self {
        let n = workflow.stages.len();
        // Stages are in topological order: every need is already placed.
        let mut column = vec![0usize; n];
        for (i, stage) in workflow.stages.iter().enumerate() {
            column[i] = stage
                .needs
                .iter()
                .map(|&j| column[j] + 1)
                .max()
                .unwrap_or(0);
        }
        let width = column.iter().max().map_or(0, |&c| c + 1);
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut chains = Vec::new();
        for (from, to) in edges(workflow) {
            let mut chain = vec![from];
            for c in column[from] + 1..column[to] {
                let dummy = column.len();
                column.push(c);
                preds.push(Vec::new());
                succs.push(Vec::new());
                chain.push(dummy);
            }
            chain.push(to);
            for pair in chain.windows(2) {
                succs[pair[0]].push(pair[1]);
                preds[pair[1]].push(pair[0]);
            }
            chains.push(chain);
        }

        // Start from file order (authors tend to write stages in a meaningful order), with a
        // long edge's placeholders ordered by their source.
        let file_index = |v: usize| -> usize {
            workflow
                .spec
                .stages
                .get_index_of(workflow.stages[v].id.as_str())
                .unwrap_or(v)
        };
        let mut key: Vec<(usize, usize)> = (0..column.len()).map(|v| (usize::MAX, v)).collect();
        for (v, k) in key.iter_mut().enumerate().take(n) {
            *k = (file_index(v), 0);
        }
        for chain in &chains {
            let source = file_index(chain[0]);
            for &d in &chain[1..chain.len() - 1] {
                key[d] = (source, d);
            }
        }
        let mut columns: Vec<Vec<usize>> = vec![Vec::new(); width];
        for (v, &c) in column.iter().enumerate() {
            columns[c].push(v);
        }
        for slots in &mut columns {
            slots.sort_by_key(|&v| key[v]);
        }

        let mut layers = Self {
            columns,
            column,
            preds,
            succs,
            chains,
        };
        layers.reduce_crossings();
        layers
    }

    /// Barycenter sweeps, down then up, keeping the best order seen.
    fn reduce_crossings(&mut self) {
        let mut best = self.columns.clone();
        let mut fewest = self.crossings();
        for _ in 0..4 {
            if fewest == 0 {
                break;
            }
            for c in 1..self.columns.len() {
                self.sort_by_neighbours(c, true);
            }
            for c in (0..self.columns.len().saturating_sub(1)).rev() {
                self.sort_by_neighbours(c, false);
            }
            let crossings = self.crossings();
            if crossings < fewest {
                fewest = crossings;
                best = self.columns.clone();
            }
        }
        self.columns = best;
    }

    /// Positions centred on the column's middle, so that columns of different sizes compare.
    fn positions(&self) -> Vec<f64> {
        let mut pos = vec![0.0; self.column.len()];
        for slots in &self.columns {
            let mid = (slots.len() as f64 - 1.0) / 2.0;
            for (row, &v) in slots.iter().enumerate() {
                pos[v] = row as f64 - mid;
            }
        }
        pos
    }

    /// Orders column `c` by the mean position of each vertex's neighbours on the left
    /// (`from_left`) or the right; a vertex without such neighbours keeps its place.
    fn sort_by_neighbours(&mut self, c: usize, from_left: bool) {
        let pos = self.positions();
        let mut keyed: Vec<(f64, usize)> = self.columns[c]
            .iter()
            .map(|&v| {
                let near = if from_left {
                    &self.preds[v]
                } else {
                    &self.succs[v]
                };
                let key = if near.is_empty() {
                    pos[v]
                } else {
                    near.iter().map(|&u| pos[u]).sum::<f64>() / near.len() as f64
                };
                (key, v)
            })
            .collect();
        // Stable: ties keep the current order, so the result is deterministic.
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.columns[c] = keyed.into_iter().map(|(_, v)| v).collect();
    }

    /// Edge crossings between each pair of adjacent columns.
    fn crossings(&self) -> usize {
        let mut row = vec![0usize; self.column.len()];
        for slots in &self.columns {
            for (r, &v) in slots.iter().enumerate() {
                row[v] = r;
            }
        }
        let mut total = 0;
        for slots in &self.columns {
            let mut pairs: Vec<(usize, usize)> = Vec::new();
            for &u in slots {
                for &w in &self.succs[u] {
                    pairs.push((row[u], row[w]));
                }
            }
            for (i, a) in pairs.iter().enumerate() {
                for b in &pairs[i + 1..] {
                    if (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1) {
                        total += 1;
                    }
                }
            }
        }
        total
    }
}

// Sizes, in px. Text is monospace, so its width is close to 0.6 em per character.
const MARGIN: f64 = 24.0;
const TITLE_HEIGHT: f64 = 36.0;
const COLUMN_GAP: f64 = 72.0;
const MAX_COLUMN_GAP: f64 = 160.0;
const ROW_GAP: f64 = 18.0;
const DUMMY_HEIGHT: f64 = 8.0;
const PAD_X: f64 = 12.0;
const PAD_Y: f64 = 9.0;
const MIN_BOX_WIDTH: f64 = 96.0;
const ID_SIZE: f64 = 13.0;
const USES_SIZE: f64 = 12.0;
const NOTE_SIZE: f64 = 11.0;
const LEGEND_GAP: f64 = 28.0;
const CHAR_WIDTH: f64 = 0.6;
const FONT: &str = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";

fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * CHAR_WIDTH
}

/// One box's text, already clipped.
struct Label {
    id: String,
    uses: String,
    notes: Option<String>,
    condition: Option<String>,
    tooltip: String,
    approval: bool,
}

impl Label {
    fn new(workflow: &Workflow, stage: &Stage) -> Self {
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
            approval: stage.uses == "approval",
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

    fn size(&self) -> (f64, f64) {
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
}

/// A laid-out picture.
struct Drawing<'a> {
    workflow: &'a Workflow,
    layers: Layers,
    labels: Vec<Label>,
    /// Top-left corner and size of each vertex (placeholders have width 0).
    boxes: Vec<(f64, f64, f64, f64)>,
    /// Left edge and width of each column.
    column_x: Vec<(f64, f64)>,
    /// The legend's entries: only the kinds of things drawn.
    legend: Vec<(LegendKind, &'static str)>,
    width: f64,
    graph_bottom: f64,
}

impl<'a> Drawing<'a> {
    fn new(workflow: &'a Workflow) -> Self {
        let layers = Layers::new(workflow);
        let n = workflow.stages.len();
        let labels: Vec<Label> = workflow
            .stages
            .iter()
            .map(|s| Label::new(workflow, s))
            .collect();
        let size = |v: usize| -> (f64, f64) {
            if v < n {
                labels[v].size()
            } else {
                (0.0, DUMMY_HEIGHT)
            }
        };

        // Rows first: each column's slots stacked, the column centred on the tallest one.
        let column_height = |slots: &[usize]| -> f64 {
            slots.iter().map(|&v| size(v).1).sum::<f64>()
                + ROW_GAP * slots.len().saturating_sub(1) as f64
        };
        let tallest = layers
            .columns
            .iter()
            .map(|s| column_height(s))
            .fold(0.0, f64::max);
        let top = MARGIN + TITLE_HEIGHT;
        let mut boxes = vec![(0.0, 0.0, 0.0, 0.0); layers.column.len()];
        for slots in &layers.columns {
            let mut y = top + ((tallest - column_height(slots)) / 2.0).floor();
            for &v in slots {
                let (w, h) = size(v);
                boxes[v] = (0.0, y, w, h);
                y += h + ROW_GAP;
            }
        }

        // Then columns, with room for the curves: the farther an edge climbs or falls
        // between two columns, the wider the gap, so that it does not run nearly upright.
        let mid = |v: usize| boxes[v].1 + boxes[v].3 / 2.0;
        let mut column_x = Vec::with_capacity(layers.columns.len());
        let mut x = MARGIN;
        for slots in &layers.columns {
            let w = slots.iter().map(|&v| size(v).0).fold(0.0, f64::max);
            column_x.push((x, w));
            let climb = slots
                .iter()
                .flat_map(|&u| layers.succs[u].iter().map(move |&t| (u, t)))
                .map(|(u, t)| (mid(u) - mid(t)).abs())
                .fold(0.0, f64::max);
            x += w + (climb * 0.2).clamp(COLUMN_GAP, MAX_COLUMN_GAP).round();
        }
        let graph_width = column_x.last().map_or(0.0, |&(x, w)| x + w) - MARGIN;
        for (c, slots) in layers.columns.iter().enumerate() {
            let (cx, cw) = column_x[c];
            for &v in slots {
                let b = &mut boxes[v];
                if v < n {
                    b.0 = cx + ((cw - b.2) / 2.0).floor();
                } else {
                    (b.0, b.2) = (cx, cw);
                }
            }
        }

        let legend = legend_items(workflow);
        let legend_width = legend
            .iter()
            .map(|(_, text)| 30.0 + text_width(text, NOTE_SIZE) + 24.0)
            .sum::<f64>();
        let title_width = text_width(&title(workflow), 14.0);
        let width = graph_width.max(legend_width).max(title_width) + 2.0 * MARGIN;
        Self {
            workflow,
            layers,
            labels,
            boxes,
            column_x,
            legend,
            width: width.ceil(),
            graph_bottom: top + tallest,
        }
    }

    fn render(&self) -> String {
        let height = (self.graph_bottom + LEGEND_GAP + 22.0 + MARGIN).ceil();
        let mut out = String::new();
        let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}">"#,
            w = num(self.width),
            h = num(height),
        );
        let _ = writeln!(
            out,
            "<title>{}</title>",
            xml_escape(&format!("workflow {}", self.workflow.name()))
        );
        out.push_str(concat!(
            "<defs>\n",
            "<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" ",
            "markerHeight=\"8\" markerUnits=\"userSpaceOnUse\" orient=\"auto\">",
            "<polygon points=\"0,1 10,5 0,9\" fill=\"#718096\"/></marker>\n",
            "<style>\n",
            ".edge { fill: none; stroke: #a0aec0; stroke-width: 1.5; }\n",
            ".stage rect { fill: #f5f7fa; stroke: #4a5568; stroke-width: 1.2; }\n",
            ".stage.approval rect { fill: #fff4d6; stroke: #b7791f; }\n",
            ".stage.conditional rect { stroke-dasharray: 5 3; }\n",
            ".id { font-size: 13px; font-weight: bold; fill: #1a202c; }\n",
            ".uses { font-size: 12px; fill: #4a5568; }\n",
            ".note { font-size: 11px; fill: #718096; }\n",
            ".cond { font-size: 11px; fill: #718096; font-style: italic; }\n",
            ".title { font-size: 14px; font-weight: bold; fill: #1a202c; }\n",
            ".legend { font-size: 11px; fill: #4a5568; }\n",
            "</style>\n",
            "</defs>\n",
        ));
        let _ = writeln!(
            out,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text class="title" x="{}" y="{}">{}</text>"#,
            num(MARGIN),
            num(MARGIN + 14.0),
            xml_escape(&title(self.workflow))
        );
        self.render_edges(&mut out);
        self.render_stages(&mut out);
        self.render_legend(&mut out, self.graph_bottom + LEGEND_GAP);
        out.push_str("</svg>\n");
        out
    }

    /// The attachment heights of a vertex's edges on one side, spread over the middle of
    /// the box in the order of the other ends, so arrowheads do not pile up. Arrowheads too
    /// many to spread apart all meet at the middle instead, where they draw as one.
    fn ports(&self, v: usize, others: &[usize], arrows: bool) -> Vec<(usize, f64)> {
        let (_, y, _, h) = self.boxes[v];
        let mid = |u: usize| self.boxes[u].1 + self.boxes[u].3 / 2.0;
        let mut sorted: Vec<usize> = others.to_vec();
        sorted.sort_by(|&a, &b| mid(a).total_cmp(&mid(b)).then(a.cmp(&b)));
        let k = sorted.len();
        let step = match k {
            0 | 1 => 0.0,
            _ => (h * 0.6 / (k - 1) as f64).min(8.0),
        };
        let step = if arrows && step < 5.0 { 0.0 } else { step };
        sorted
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u, y + h / 2.0 + (i as f64 - (k as f64 - 1.0) / 2.0) * step))
            .collect()
    }

    fn render_edges(&self, out: &mut String) {
        let n = self.workflow.stages.len();
        out.push_str("<g class=\"edges\">\n");
        for chain in &self.layers.chains {
            let from = chain[0];
            let to = chain[chain.len() - 1];
            let first = chain[1];
            let last = chain[chain.len() - 2];
            let start_y = self
                .ports(from, &self.layers.succs[from], false)
                .into_iter()
                .find(|&(u, _)| u == first)
                .map_or(0.0, |(_, y)| y);
            let end_y = self
                .ports(to, &self.layers.preds[to], true)
                .into_iter()
                .find(|&(u, _)| u == last)
                .map_or(0.0, |(_, y)| y);
            let (fx, _, fw, _) = self.boxes[from];
            let mut points = vec![(fx + fw, start_y)];
            for &d in &chain[1..chain.len() - 1] {
                let (x, w) = self.column_x[self.layers.column[d]];
                let y = self.boxes[d].1 + DUMMY_HEIGHT / 2.0;
                points.push((x, y));
                points.push((x + w, y));
            }
            points.push((self.boxes[to].0, end_y));

            let mut d = format!("M{},{}", num(points[0].0), num(points[0].1));
            for (i, pair) in points.windows(2).enumerate() {
                let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
                if i % 2 == 1 {
                    // Across a column, through a placeholder: straight.
                    let _ = write!(d, " L{},{}", num(x2), num(y2));
                } else {
                    let bend = (x2 - x1) / 2.0;
                    let _ = write!(
                        d,
                        " C{},{} {},{} {},{}",
                        num(x1 + bend),
                        num(y1),
                        num(x2 - bend),
                        num(y2),
                        num(x2),
                        num(y2)
                    );
                }
            }
            let _ = writeln!(
                out,
                r#"<path class="edge" d="{d}" marker-end="url(#arrow)"><title>{} → {}</title></path>"#,
                xml_escape(&self.workflow.stages[from].id),
                xml_escape(&self.workflow.stages[to].id),
            );
            debug_assert!(from < n && to < n);
        }
        out.push_str("</g>\n");
    }

    fn render_stages(&self, out: &mut String) {
        out.push_str("<g class=\"stages\">\n");
        for (v, label) in self.labels.iter().enumerate() {
            let (x, y, w, h) = self.boxes[v];
            let mut class = String::from("stage");
            if label.approval {
                class.push_str(" approval");
            }
            if label.condition.is_some() {
                class.push_str(" conditional");
            }
            let _ = writeln!(out, r#"<g class="{class}">"#);
            let _ = writeln!(out, "<title>{}</title>", xml_escape(&label.tooltip));
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
                xml_escape(&label.id)
            );
            baseline += ID_SIZE * 0.2;
            for (text, size, italic) in label.small_lines() {
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
        out.push_str("</g>\n");
    }

    fn render_legend(&self, out: &mut String, top: f64) {
        out.push_str("<g class=\"legend\">\n");
        let mut x = MARGIN;
        let y = top;
        for (kind, text) in &self.legend {
            match kind {
                LegendKind::Arrow => {
                    let _ = writeln!(
                        out,
                        r#"<line class="edge" x1="{}" y1="{}" x2="{}" y2="{}" marker-end="url(#arrow)"/>"#,
                        num(x),
                        num(y + 7.0),
                        num(x + 22.0),
                        num(y + 7.0)
                    );
                }
                LegendKind::Box(class) => {
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
                r#"<text class="legend" x="{}" y="{}">{}</text>"#,
                num(x + 30.0),
                num(y + 11.0),
                xml_escape(text)
            );
            x += 30.0 + text_width(text, NOTE_SIZE) + 24.0;
        }
        out.push_str("</g>\n");
    }
}

enum LegendKind {
    Box(&'static str),
    Arrow,
}

/// The legend: boxes always; dashed boxes, approvals and arrows when the picture has them.
fn legend_items(workflow: &Workflow) -> Vec<(LegendKind, &'static str)> {
    let stages = &workflow.stages;
    let mut items = vec![(LegendKind::Box("stage"), "stage")];
    if stages.iter().any(|s| s.condition.is_some()) {
        items.push((
            LegendKind::Box("stage conditional"),
            "has an if: (may be skipped)",
        ));
    }
    if stages.iter().any(|s| s.uses == "approval") {
        items.push((
            LegendKind::Box("stage approval"),
            "approval (waits for a person)",
        ));
    }
    if stages.iter().any(|s| !s.needs.is_empty()) {
        items.push((LegendKind::Arrow, "needs → dependent"));
    }
    items
}

fn title(workflow: &Workflow) -> String {
    let n = workflow.stages.len();
    format!(
        "{} — {n} stage{}",
        workflow.name(),
        if n == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{StageDefaults, WorkflowSpec};
    use serde_json::{Value, json};

    fn workflow(value: Value) -> Workflow {
        let spec: WorkflowSpec = serde_json::from_value(value).unwrap();
        Workflow::compile(spec, StageDefaults::default()).unwrap()
    }

    /// Quotes, a backslash and XML's special characters, in valid jq.
    const CONDITION: &str =
        r#".event.ref == "refs/heads/main" and ("a\\" | length) < 3 and "&" != "<""#;

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
        let dot = to_dot(&wf);
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
        let svg = to_svg(&wf);
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
        assert_eq!(svg, to_svg(&sample()));
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
        let svg = to_svg(&wf);
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
        let svg = to_svg(&wf);
        check_xml(&svg);
        assert!(svg.contains(">only</text>"));
        assert_eq!(svg.matches("<path").count(), 0);
        assert!(svg.contains("one — 1 stage<"));
        let dot = to_dot(&wf);
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
        let svg = to_svg(&wf);
        check_xml(&svg);
        assert_eq!(svg.matches("<path").count(), 40);
        // Boxes in one column do not overlap.
        let d = Drawing::new(&wf);
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
        let svg = to_svg(&wf);
        check_xml(&svg);
        // Cut in the box, whole in the tooltip.
        assert!(svg.contains(
            "<title>a-very-long-stage-id-that-goes-on-and-on-and-on-well-past-forty-characters\n"
        ));
        assert!(svg.contains(">a-very-long-stage-id-that-goes-on-and-o…</text>"));
        assert_eq!(svg.matches("<path").count(), 30);
        let d = Drawing::new(&wf);
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
}
