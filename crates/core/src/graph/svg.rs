//! The SVG picture: boxes placed on the layered layout, curved edges, a title and a legend.

use std::fmt::Write as _;

use super::label::{Label, Mark};
use super::layers::Layers;
use super::legend::Legend;
use super::text::{num, xml_escape};
use crate::workflow::{Stage, Workflow};

// Sizes, in px. Text is monospace, so its width is close to 0.6 em per character.
pub(super) const MARGIN: f64 = 24.0;
const TITLE_HEIGHT: f64 = 36.0;
const COLUMN_GAP: f64 = 72.0;
const MAX_COLUMN_GAP: f64 = 160.0;
const ROW_GAP: f64 = 18.0;
const DUMMY_HEIGHT: f64 = 8.0;
pub(super) const PAD_X: f64 = 12.0;
pub(super) const PAD_Y: f64 = 9.0;
pub(super) const MIN_BOX_WIDTH: f64 = 96.0;
pub(super) const ID_SIZE: f64 = 13.0;
pub(super) const USES_SIZE: f64 = 12.0;
pub(super) const NOTE_SIZE: f64 = 11.0;
pub(super) const STATUS_SIZE: f64 = 12.0;
const TITLE_SIZE: f64 = 14.0;
const LEGEND_GAP: f64 = 28.0;
pub(super) const CHAR_WIDTH: f64 = 0.6;
const FONT: &str = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace";

/// About how wide `text` is at font size `size`, in px.
pub(super) fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * CHAR_WIDTH
}

/// Where a picture is shown.
pub(super) enum Medium<'a> {
    /// A file of its own: an XML declaration, its own stylesheet, a white background.
    File,
    /// Inline in a page whose stylesheet colours it (a page's CSP forbids a `<style>`
    /// element), with what the page adds to each box.
    Page(&'a dyn Fn(&Stage) -> Mark),
}

/// A laid-out picture.
pub(super) struct Drawing<'a> {
    workflow: &'a Workflow,
    /// A file of its own, rather than inline in a page.
    standalone: bool,
    layers: Layers,
    labels: Vec<Label>,
    /// Top-left corner and size of each vertex (placeholders have width 0).
    pub(super) boxes: Vec<(f64, f64, f64, f64)>,
    /// Left edge and width of each column.
    column_x: Vec<(f64, f64)>,
    /// The legend: only the kinds of things drawn.
    legend: Legend,
    width: f64,
    graph_bottom: f64,
}

impl<'a> Drawing<'a> {
    pub(super) fn new(
        workflow: &'a Workflow,
        waits_for_person: &dyn Fn(&Stage) -> bool,
        medium: Medium<'_>,
    ) -> Self {
        let layers = Layers::new(workflow);
        let n = workflow.stages.len();
        let mark = |s: &Stage| match &medium {
            Medium::File => None,
            Medium::Page(mark) => Some(mark(s)),
        };
        let labels: Vec<Label> = workflow
            .stages
            .iter()
            .map(|s| Label::new(workflow, s, waits_for_person(s), mark(s)))
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

        let legend = Legend::new(workflow, &labels);
        let legend_width = legend.width();
        let title_width = text_width(&title(workflow), TITLE_SIZE);
        let width = graph_width.max(legend_width).max(title_width) + 2.0 * MARGIN;
        Self {
            workflow,
            standalone: matches!(medium, Medium::File),
            layers,
            labels,
            boxes,
            column_x,
            legend,
            width: width.ceil(),
            graph_bottom: top + tallest,
        }
    }

    pub(super) fn render(&self) -> String {
        let height = (self.graph_bottom + LEGEND_GAP + 22.0 + MARGIN).ceil();
        let mut out = String::new();
        if self.standalone {
            let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        }
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
            "<polygon class=\"arrowhead\" points=\"0,1 10,5 0,9\" fill=\"#718096\"/></marker>\n",
        ));
        if self.standalone {
            out.push_str(concat!(
                "<style>\n",
                ".edge { fill: none; stroke: #a0aec0; stroke-width: 1.5; }\n",
                ".stage rect { fill: #f5f7fa; stroke: #4a5568; stroke-width: 1.2; }\n",
                ".stage.approval rect { fill: #fff4d6; stroke: #b7791f; }\n",
                ".stage.conditional rect { stroke-dasharray: 5 3; }\n",
                ".id, .title { font-weight: bold; fill: #1a202c; }\n",
                ".uses, .legend { fill: #4a5568; }\n",
                ".note { fill: #718096; }\n",
                ".cond { fill: #718096; font-style: italic; }\n",
                "</style>\n",
            ));
        }
        out.push_str("</defs>\n");
        if self.standalone {
            let _ = writeln!(
                out,
                r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
            );
        }
        let _ = writeln!(
            out,
            r#"<text class="title" x="{}" y="{}" font-size="{}">{}</text>"#,
            num(MARGIN),
            num(MARGIN + TITLE_SIZE),
            num(TITLE_SIZE),
            xml_escape(&title(self.workflow))
        );
        self.render_edges(&mut out);
        self.render_stages(&mut out);
        self.legend.render(&mut out, self.graph_bottom + LEGEND_GAP);
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
            label.render(out, self.boxes[v]);
        }
        out.push_str("</g>\n");
    }
}

/// The picture's heading: the workflow's name and how many stages it has.
fn title(workflow: &Workflow) -> String {
    let n = workflow.stages.len();
    format!(
        "{} — {n} stage{}",
        workflow.name(),
        if n == 1 { "" } else { "s" }
    )
}
