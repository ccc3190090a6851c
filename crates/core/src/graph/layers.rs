//! The layered layout: stages in columns by depth, placeholders where a long edge crosses a
//! column, rows ordered to cut crossings.

use crate::workflow::Workflow;

/// Every edge need → dependent, in stage order.
pub(super) fn edges(workflow: &Workflow) -> Vec<(usize, usize)> {
    workflow
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.dependents.iter().map(move |&j| (i, j)))
        .collect()
}

/// The layered graph: stages (vertices `0..n`) and placeholders for long edges (`n..`),
/// every edge between adjacent columns.
pub(super) struct Layers {
    /// Vertices of each column, top to bottom.
    pub(super) columns: Vec<Vec<usize>>,
    /// The column of each vertex.
    pub(super) column: Vec<usize>,
    /// Predecessors and successors of each vertex (one column left, one right).
    pub(super) preds: Vec<Vec<usize>>,
    pub(super) succs: Vec<Vec<usize>>,
    /// For each edge of [`edges`], the vertices it passes through, source and target included.
    pub(super) chains: Vec<Vec<usize>>,
}

impl Layers {
    pub(super) fn new(workflow: &Workflow) -> Self {
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
    pub(super) fn crossings(&self) -> usize {
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
