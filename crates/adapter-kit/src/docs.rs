//! Keeps an adapter's documented instance keys in step with the struct that declares them.
//!
//! An adapter's instance block is a `#[derive(Deserialize)]` struct; its documentation has a
//! key table, one row per key, the key (or several, `` `poll_initial`, `poll_max` ``) in
//! backticks in the first column. [`check_doc_keys`] compares the two and panics with the
//! keys missing from the table and those it has too many.

use std::collections::BTreeSet;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Panics unless the key table in the section headed `heading` of the Markdown file `doc`
/// lists exactly the keys serde reads for `T`. A section without a table lists no keys.
pub fn check_doc_keys<T: DeserializeOwned>(doc: &Path, heading: &str) {
    let text = std::fs::read_to_string(doc)
        .unwrap_or_else(|e| panic!("[docs] cannot read {}: {e}", doc.display()));
    let documented = table_keys(&text, heading)
        .unwrap_or_else(|| panic!("[docs] {} has no section headed `{heading}`", doc.display()));
    let declared: BTreeSet<String> = baton_core::fields_of::<T>()
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let missing: Vec<&String> = declared.difference(&documented).collect();
    let extra: Vec<&String> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "[docs] the key table under `{heading}` in {} does not match {}: missing {missing:?}, not keys {extra:?}",
        doc.display(),
        std::any::type_name::<T>(),
    );
}

/// The keys in the first table of the section headed `heading` (its text after the `#`s),
/// which ends at the next heading of the same or a higher level; `None` when no such
/// section exists. Lines inside code fences are not headings.
pub fn table_keys(markdown: &str, heading: &str) -> Option<BTreeSet<String>> {
    let mut in_fence = false;
    let mut section_level = None;
    let mut keys = BTreeSet::new();
    let mut table = TableState::Before;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(level) = heading_level(trimmed) {
            match section_level {
                Some(open) if level <= open => break,
                Some(_) => {}
                None if trimmed[level..].trim() == heading => section_level = Some(level),
                None => {}
            }
            continue;
        }
        if section_level.is_none() || table == TableState::After {
            continue;
        }
        match (trimmed.starts_with('|'), table) {
            (true, TableState::Before) => table = TableState::Header,
            (true, _) => {
                table = TableState::Rows;
                let first = trimmed[1..].split('|').next().unwrap_or_default();
                keys.extend(backticked(first));
            }
            (false, TableState::Before) => {}
            (false, _) => table = TableState::After,
        }
    }
    section_level.map(|_| keys)
}

/// Where the scan is relative to the section's first table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableState {
    Before,
    Header,
    Rows,
    After,
}

/// The level of a Markdown heading line (`## x` is 2), if it is one.
fn heading_level(line: &str) -> Option<usize> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    (level > 0 && line[level..].starts_with(' ')).then_some(level)
}

/// The spans between backticks in `cell`.
fn backticked(cell: &str) -> impl Iterator<Item = String> + '_ {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Adapter\n\n## Instance config\n\n```toml\n# not a heading\nurl = \"x\"\n```\n\n\
        | key | default | meaning |\n|---|---|---|\n| `url` | required | the root |\n\
        | `poll_initial`, `poll_max` | `2s`, `30s` | waits, see `engine.poll_max` |\n\
        | (neither) | | anonymous |\n\nAfter the table: | `not_a_key` |\n\n\
        ### Details\n\n| key | x |\n|---|---|\n| `nested` | x |\n\n## Stage `with`\n\n| key | meaning |\n|---|---|\n| `job` | x |\n\n## Empty\n\nNo keys.\n";

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn the_first_table_of_the_section_gives_the_keys() {
        assert_eq!(
            table_keys(DOC, "Instance config"),
            Some(set(&["url", "poll_initial", "poll_max"]))
        );
        assert_eq!(table_keys(DOC, "Stage `with`"), Some(set(&["job"])));
        assert_eq!(table_keys(DOC, "Empty"), Some(set(&[])));
        assert_eq!(table_keys(DOC, "not a heading"), None);
        assert_eq!(table_keys(DOC, "Missing"), None);
    }
}
