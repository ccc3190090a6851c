//! Pictures of a workflow's stage graph: Graphviz DOT ([`to_dot`]) and a standalone SVG drawn
//! without Graphviz ([`to_svg`]). Pure functions: same workflow, same bytes.
//!
//! The SVG uses a layered layout ([`layout`]): a stage's column is the length of its longest
//! path from a stage without `needs`; an edge that spans several columns passes through a
//! placeholder in each column between, so it never runs through a box; and rows are ordered
//! by a few barycenter sweeps, keeping the order with the fewest crossings.
//!
//! The graph does not know adapter kinds: the caller says which stages wait for a person
//! (those whose kind takes decisions), and those are drawn apart.
//!
//! How the parts fit:
//! - `dot` writes the DOT text straight from the workflow; Graphviz lays it out.
//! - `layers` computes the layered layout: columns, placeholders, row order.
//! - `svg` places a box per stage on those layers (`label` gives each box its text, size
//!   and markup), draws the edges between them, and adds a title and the `legend`.
//! - `status` holds the glyph of each status, which the run page's boxes and the web UI's
//!   badges share.
//! - `text` holds what both pictures share: a stage's notes, XML escaping, clipping and
//!   short numbers.

mod dot;
mod label;
mod layers;
mod legend;
mod status;
mod svg;
#[cfg(test)]
mod tests;
mod text;

pub use status::status_icon;

use crate::state::StageStatus;
use crate::workflow::{Stage, Workflow};
use label::Mark;
use svg::{Drawing, Medium};

/// The workflow as a Graphviz digraph, left to right: one node per stage, labelled with its
/// id, its `uses` and (smaller) its own timeout, retry and failure policy; an edge from each
/// need to its dependent. Stages with an `if:` are dashed, with the condition as tooltip;
/// stages for which `waits_for_person` is true are hexagons.
///
/// Render it with `dot -Tsvg`, `dot -Tpng`, …
pub fn to_dot(workflow: &Workflow, waits_for_person: impl Fn(&Stage) -> bool) -> String {
    dot::render(workflow, &waits_for_person)
}

/// Where [`to_svg`] puts each stage, indexed like [`Workflow::stages`]: its column (the length
/// of its longest path from a stage without `needs`) and its row within that column (0 at
/// the top; rows count stages only, not the places long edges pass through).
pub fn layout(workflow: &Workflow) -> Vec<(usize, usize)> {
    let layers = layers::Layers::new(workflow);
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
/// dependents, a dashed border for stages with an `if:`, an amber fill for stages for which
/// `waits_for_person` is true, and a legend. Every box has a tooltip with its full text.
pub fn to_svg(workflow: &Workflow, waits_for_person: impl Fn(&Stage) -> bool) -> String {
    Drawing::new(workflow, &waits_for_person, Medium::File).render()
}

/// The workflow as [`to_svg`] draws it, laid out the same way, for a web page: inline SVG
/// (no XML declaration, no `<style>`, no background: the page's stylesheet colours it, by
/// the classes below). Each box is a group `<g class="stage …" data-stage="<id>">`; for a
/// run's page it also shows its stage's `status` as a glyph and a word (the same glyphs as
/// [`status_icon`]), with the class `status-<status>` and `data-status="<status>"`, and sits
/// in an `<a>` to `link`'s address when it gives one, named by the box's `<title>`. A page
/// about the workflow alone gives `None` for both.
pub fn to_page_svg(
    workflow: &Workflow,
    waits_for_person: impl Fn(&Stage) -> bool,
    status: impl Fn(&Stage) -> Option<StageStatus>,
    link: impl Fn(&Stage) -> Option<String>,
) -> String {
    let mark = |stage: &Stage| Mark {
        status: status(stage),
        link: link(stage),
    };
    Drawing::new(workflow, &waits_for_person, Medium::Page(&mark)).render()
}
