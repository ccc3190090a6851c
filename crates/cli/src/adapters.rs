//! `baton adapters`: the adapter kinds this build knows, as each declares itself.

use std::process::ExitCode;

use baton_core::{AdapterKind, Kinds};
use clap::Args;
use serde_json::{Value, json};

use crate::setup;

/// `baton adapters`.
#[derive(Args, Debug)]
pub(crate) struct AdaptersArgs {
    /// Print the kinds as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists every built-in kind: name, whether it needs an `[adapters]` block, whether its
/// stages take decisions, its documentation and what it does.
pub(crate) fn adapters(args: AdaptersArgs) -> ExitCode {
    let kinds = setup::checking_kinds();
    if args.json {
        let list: Vec<Value> = kinds.iter().map(|k| describe(k.as_ref())).collect();
        println!("{:#}", Value::Array(list));
    } else {
        print!("{}", table(&kinds));
    }
    ExitCode::SUCCESS
}

/// One kind as JSON.
fn describe(kind: &dyn AdapterKind) -> Value {
    json!({
        "kind": kind.kind(),
        "summary": kind.summary(),
        "docs": kind.docs(),
        "builtin_instance": kind.builtin_instance(),
        "takes_decisions": kind.takes_decisions(),
    })
}

/// The kinds as aligned columns, with a header.
fn table(kinds: &Kinds) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows = vec![[
        "KIND",
        "NEEDS [adapters] BLOCK",
        "TAKES DECISIONS",
        "DOCS",
        "SUMMARY",
    ]];
    rows.extend(kinds.iter().map(|k| {
        [
            k.kind(),
            yes_no(!k.builtin_instance()),
            yes_no(k.takes_decisions()),
            k.docs(),
            k.summary(),
        ]
    }));
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_every_kind() {
        let kinds = setup::checking_kinds();
        let text = table(&kinds);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), kinds.names().count() + 1, "{text}");
        let docs_at = lines[0].find("DOCS").unwrap();
        for (line, kind) in lines[1..].iter().zip(kinds.iter()) {
            assert!(line.starts_with(&format!("{} ", kind.kind())), "{line}");
            assert_eq!(line.find(kind.docs()), Some(docs_at), "{text}");
        }
    }
}
