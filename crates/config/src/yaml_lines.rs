//! The block structure of YAML text, line by line: which line holds which key, how far each
//! key's value reaches, and which comments sit above it. Enough to find the line of a key
//! path, and to replace, insert or remove one entry of a block mapping while every other
//! line stays as written, comments included.
//!
//! Only block style is looked into: a value written in flow style (`{…}`, `[…]`) or as a
//! scalar is one value, taken or replaced whole. Indentation decides what belongs to what,
//! as it does for YAML itself: an entry's value is every following line indented deeper
//! than its key (and, for a list written at the key's own indentation, its `- ` items).

use std::ops::Range;

/// What a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing but spaces.
    Blank,
    /// A comment alone on its line (or a line of a block scalar that looks like one).
    Comment,
    /// Anything else: a key, an item, a value.
    Content,
    /// A document marker or directive at the left edge (`---`, `...`, `%YAML`).
    Marker,
}

/// One line of the text, without its line break.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// The line's text.
    pub(crate) text: &'a str,
    /// Spaces before its first character.
    pub(crate) indent: usize,
    /// What it holds.
    pub(crate) kind: Kind,
}

impl Line<'_> {
    /// True for a `- ` item of a block sequence.
    fn is_item(&self) -> bool {
        let rest = &self.text[self.indent..];
        rest == "-" || rest.starts_with("- ")
    }
}

/// YAML text split into lines.
#[derive(Debug, Clone)]
pub(crate) struct Lines<'a> {
    /// The text.
    source: &'a str,
    /// The lines.
    pub(crate) lines: Vec<Line<'a>>,
    /// Whether the text breaks lines with `\r\n`.
    pub(crate) crlf: bool,
    /// Whether the text ends with a line break.
    pub(crate) final_break: bool,
}

/// One entry of a block mapping: its key line and the lines its value takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The key, unquoted.
    pub(crate) key: String,
    /// The index of its key line.
    pub(crate) line: usize,
    /// The key's indentation.
    pub(crate) indent: usize,
    /// One past the last line of the entry (its value's last line, or a comment indented
    /// under it that follows).
    pub(crate) end: usize,
    /// Where on the key line the value starts and ends (byte offsets), without a trailing
    /// comment; empty when the value starts on the next line (or there is none).
    pub(crate) inline: Range<usize>,
}

impl<'a> Lines<'a> {
    /// Splits `text`.
    pub(crate) fn parse(text: &'a str) -> Self {
        let final_break = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut crlf = false;
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            body.split('\n')
                .map(|raw| {
                    let text = match raw.strip_suffix('\r') {
                        Some(stripped) => {
                            crlf = true;
                            stripped
                        }
                        None => raw,
                    };
                    classify(text)
                })
                .collect()
        };
        Self {
            source: text,
            lines,
            crlf,
            final_break,
        }
    }

    /// How many lines.
    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    /// The line break the text uses.
    pub(crate) fn newline(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    /// The entries of the top-level mapping; `None` when the top is not a block mapping.
    pub(crate) fn top(&self) -> Option<Vec<Entry>> {
        self.mapping(0..self.len(), 0)
    }

    /// The entries of the block mapping that is `entry`'s value; `None` when its value is
    /// not a block mapping (a scalar, a flow collection, a list, nothing).
    pub(crate) fn children(&self, entry: &Entry) -> Option<Vec<Entry>> {
        if !entry.inline.is_empty() {
            return None;
        }
        self.mapping(entry.line + 1..entry.end, entry.indent + 1)
    }

    /// The `- ` item lines of the block sequence that is `entry`'s value (empty when it is
    /// not one).
    pub(crate) fn items(&self, entry: &Entry) -> Vec<usize> {
        if !entry.inline.is_empty() {
            return Vec::new();
        }
        let Some(first) = (entry.line + 1..entry.end).find(|&i| self.is_content(i)) else {
            return Vec::new();
        };
        let indent = self.lines[first].indent;
        (first..entry.end)
            .filter(|&i| {
                self.is_content(i) && self.lines[i].indent == indent && self.lines[i].is_item()
            })
            .collect()
    }

    /// The inline value of `entry` (empty when the value starts on the next line).
    pub(crate) fn inline(&self, entry: &Entry) -> &'a str {
        &self.lines[entry.line].text[entry.inline.clone()]
    }

    /// Where the comment lines directly above `entry` begin (the entry's own line when
    /// there are none): a blank line ends them, and so does `floor`.
    pub(crate) fn comments_above(&self, entry: &Entry, floor: usize) -> usize {
        let mut start = entry.line;
        while start > floor && self.lines[start - 1].kind == Kind::Comment {
            start -= 1;
        }
        start
    }

    fn is_content(&self, i: usize) -> bool {
        self.lines[i].kind == Kind::Content
    }

    /// The block mapping whose lines are `range`, indented at least `min_indent`.
    fn mapping(&self, range: Range<usize>, min_indent: usize) -> Option<Vec<Entry>> {
        let first = range.clone().find(|&i| self.is_content(i))?;
        let indent = self.lines[first].indent;
        if indent < min_indent {
            return None;
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut last_content = first;
        let mut stop = range.end;
        for i in first..range.end {
            let line = self.lines[i];
            match line.kind {
                Kind::Content if line.indent > indent => last_content = i,
                Kind::Content if line.indent == indent => {
                    if line.is_item() {
                        // A list written at its key's indentation belongs to that key.
                        match entries.last() {
                            Some(e) if e.inline.is_empty() => last_content = i,
                            _ => return None,
                        }
                        continue;
                    }
                    let (key, inline) = key_line(line.text, indent)?;
                    if let Some(previous) = entries.last_mut() {
                        previous.end = self.extend_over_comments(last_content, i, indent);
                    }
                    entries.push(Entry {
                        key,
                        line: i,
                        indent,
                        end: i + 1,
                        inline,
                    });
                    last_content = i;
                }
                Kind::Content => return None,
                Kind::Marker => {
                    stop = i;
                    break;
                }
                Kind::Blank | Kind::Comment => {}
            }
        }
        if let Some(last) = entries.last_mut() {
            last.end = self.extend_over_comments(last_content, stop, indent);
        }
        Some(entries)
    }

    /// One past `last_content`, and past the comment lines indented deeper than `indent`
    /// that directly follow it (before `limit`): a comment under an entry's value is the
    /// entry's, one at its key's indentation belongs to what follows.
    fn extend_over_comments(&self, last_content: usize, limit: usize, indent: usize) -> usize {
        let mut end = last_content + 1;
        while end < limit
            && self.lines[end].kind == Kind::Comment
            && self.lines[end].indent > indent
        {
            end += 1;
        }
        end
    }

    /// The line (counted from 1) of the key `path` names (`stages.build.with.job`,
    /// `on[1].source`), or of the deepest key on the way that could be found.
    pub(crate) fn locate(&self, path: &str) -> Option<usize> {
        let mut entries = self.top()?;
        let mut found: Option<Entry> = None;
        for segment in segments(path) {
            let next = match segment {
                Segment::Key(key) => {
                    let Some(entry) = entries.iter().find(|e| e.key == key).cloned() else {
                        break;
                    };
                    entries = self.children(&entry).unwrap_or_default();
                    entry
                }
                Segment::Index(n) => {
                    let Some(parent) = &found else { break };
                    let Some(&line) = self.items(parent).get(n) else {
                        break;
                    };
                    let end = self.item_end(parent, line);
                    // The item's own keys start after `- `, one level in.
                    entries = self.item_mapping(line, end, self.lines[line].indent + 2);
                    Entry {
                        key: String::new(),
                        line,
                        indent: self.lines[line].indent,
                        end,
                        inline: 0..0,
                    }
                }
            };
            found = Some(next);
        }
        found.map(|e| e.line + 1)
    }

    /// One past the last line of the item at `line` of `parent`'s sequence.
    fn item_end(&self, parent: &Entry, line: usize) -> usize {
        let indent = self.lines[line].indent;
        (line + 1..parent.end)
            .find(|&i| self.is_content(i) && self.lines[i].indent <= indent)
            .unwrap_or(parent.end)
    }

    /// The mapping of a `- key: value` item: its first key sits on the item's line.
    fn item_mapping(&self, line: usize, end: usize, inner: usize) -> Vec<Entry> {
        let text = self.lines[line].text;
        let mut entries = Vec::new();
        if let Some((key, inline)) = key_line(text, inner) {
            entries.push(Entry {
                key,
                line,
                indent: inner,
                end: line + 1,
                inline,
            });
        }
        if let Some(rest) = self.mapping(line + 1..end, inner) {
            entries.extend(rest);
        }
        entries
    }
}

/// A step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment<'a> {
    /// A key of a mapping.
    Key(&'a str),
    /// An item of a sequence, from 0.
    Index(usize),
}

/// `stages.build.with` → keys; `on[1].source` → key, index, key.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(n) => out.push(Segment::Index(n)),
                Err(_) => return out,
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

fn classify(text: &str) -> Line<'_> {
    let indent = text.len() - text.trim_start_matches(' ').len();
    let rest = &text[indent..];
    let kind = if rest.trim().is_empty() {
        Kind::Blank
    } else if rest.starts_with('#') {
        Kind::Comment
    } else if indent == 0
        && (rest == "---"
            || rest.starts_with("--- ")
            || rest == "..."
            || rest.starts_with("... ")
            || rest.starts_with('%'))
    {
        Kind::Marker
    } else {
        Kind::Content
    };
    Line { text, indent, kind }
}

/// The key of a `key: value` line whose key starts at `indent`, and where its value is on
/// the line (without a trailing comment).
pub(crate) fn key_line(text: &str, indent: usize) -> Option<(String, Range<usize>)> {
    let rest = text.get(indent..)?;
    let (key, after) = match rest.chars().next()? {
        '"' => {
            let close = closing_double_quote(rest)?;
            let key = serde_json::from_str::<String>(&rest[..=close]).ok()?;
            (key, close + 1)
        }
        '\'' => {
            let close = closing_single_quote(rest)?;
            (rest[1..close].replace("''", "'"), close + 1)
        }
        '-' | '?' | ':' | ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '%'
        | '@' | '`' => {
            // An indicator: `-a: b` and `:a: b` are plain keys, the rest never are.
            let plain = matches!(rest.chars().next(), Some('-' | '?' | ':'))
                && rest[1..].starts_with(|c: char| !c.is_whitespace());
            if !plain {
                return None;
            }
            plain_key(rest)?
        }
        _ => plain_key(rest)?,
    };
    let after_key = rest[after..].trim_start_matches(' ');
    let colon = after_key.strip_prefix(':')?;
    if !(colon.is_empty() || colon.starts_with(' ') || colon.starts_with('\t')) {
        return None;
    }
    let value = colon.trim_start_matches([' ', '\t']);
    let start = text.len() - value.len();
    Some((key, start..start + value_length(value)))
}

/// A plain key: everything up to `: ` (or `:` at the end), trimmed; none when a comment
/// starts first.
fn plain_key(rest: &str) -> Option<(String, usize)> {
    let bytes = rest.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b':' if i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t' => {
                let key = rest[..i].trim_end();
                return (!key.is_empty()).then(|| (key.to_owned(), key.len()));
            }
            b'#' if i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') => return None,
            _ => {}
        }
    }
    None
}

/// The byte index of the `"` that closes the double-quoted text `rest` starts with.
fn closing_double_quote(rest: &str) -> Option<usize> {
    let bytes = rest.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The byte index of the `'` that closes the single-quoted text `rest` starts with.
fn closing_single_quote(rest: &str) -> Option<usize> {
    let bytes = rest.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// How much of `value` (the rest of a line after `key: `) is the value: up to a comment
/// (`#` after a space, outside quotes), trailing spaces dropped.
fn value_length(value: &str) -> usize {
    if value.starts_with('#') {
        return 0;
    }
    let bytes = value.as_bytes();
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    let mut end = bytes.len();
    while i < bytes.len() {
        let b = bytes[i];
        if double {
            match b {
                b'\\' => i += 1,
                b'"' => double = false,
                _ => {}
            }
        } else if single {
            if b == b'\'' {
                single = false;
            }
        } else {
            match b {
                b'"' if starts_token(bytes, i) => double = true,
                b'\'' if starts_token(bytes, i) => single = true,
                b'#' if i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        i += 1;
    }
    value[..end].trim_end().len()
}

/// Whether a quote at `i` opens a quoted scalar (at the start, or after a flow indicator
/// or a space) rather than sitting inside a plain one (`it's`).
fn starts_token(bytes: &[u8], i: usize) -> bool {
    i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'[' | b'{' | b',' | b':')
}

/// Changes to the lines of a text, applied together so that each names lines of the
/// original.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    /// Each change: the original lines it replaces and the lines that stand there instead.
    changes: Vec<(Range<usize>, Vec<String>)>,
}

impl Edits {
    /// Replaces lines `range` with `lines`.
    pub(crate) fn replace(&mut self, range: Range<usize>, lines: Vec<String>) {
        self.changes.push((range, lines));
    }

    /// Inserts `lines` before line `at`, below what an earlier insertion put there.
    pub(crate) fn insert(&mut self, at: usize, lines: Vec<String>) {
        match self
            .changes
            .iter_mut()
            .find(|(range, _)| range.start == at && range.end == at)
        {
            Some((_, earlier)) => earlier.extend(lines),
            None => self.changes.push((at..at, lines)),
        }
    }

    /// The text with every change made. Changes must not overlap; an insertion at the
    /// start of a replaced range goes before the replacement.
    pub(crate) fn apply(mut self, text: &Lines) -> String {
        if self.changes.is_empty() {
            return text.source.to_owned();
        }
        let mut lines: Vec<String> = text.lines.iter().map(|l| l.text.to_owned()).collect();
        // From the bottom up, so that each range still names the original lines; at one
        // start, the longer change first, so an insertion there ends up above it.
        self.changes
            .sort_by(|(a, _), (b, _)| b.start.cmp(&a.start).then(b.end.cmp(&a.end)));
        for (range, new) in self.changes {
            lines.splice(range, new);
        }
        let mut out = lines.join(text.newline());
        if (text.final_break || text.lines.is_empty()) && !out.is_empty() {
            out.push_str(text.newline());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKFLOW: &str = "\
# The release workflow.
name: release   # shown in the UI
on:
- source: github   # pushes only
  event: push
- source: manual
stages:
  # Compile first.
  build:
    uses: exec
    with:
      run: |
        make
        # not a comment: part of the script
      env: { A: '1 # not a comment' }
    # about build's timeout
    timeout: 45m

  deploy: { needs: [build], uses: exec, with: { run: 'echo hi' } }
report: [github]
";

    #[test]
    fn entries_reach_as_far_as_their_indentation() {
        let lines = Lines::parse(WORKFLOW);
        let top = lines.top().unwrap();
        let keys: Vec<&str> = top.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["name", "on", "stages", "report"]);
        assert_eq!(lines.inline(&top[0]), "release");
        assert_eq!(
            (top[1].line, top[1].end),
            (2, 6),
            "a list at the key's indentation"
        );
        let stages = lines.children(&top[2]).unwrap();
        assert_eq!(stages[0].key, "build");
        assert_eq!(lines.comments_above(&stages[0], top[2].line + 1), 7);
        // The blank line before `deploy` is nobody's.
        assert_eq!((stages[0].line, stages[0].end), (8, 17));
        assert_eq!(
            lines.inline(&stages[1]),
            "{ needs: [build], uses: exec, with: { run: 'echo hi' } }"
        );
        assert!(
            lines.children(&stages[1]).is_none(),
            "flow style is one value"
        );
        let build = lines.children(&stages[0]).unwrap();
        let keys: Vec<&str> = build.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["uses", "with", "timeout"]);
        let with = lines.children(&build[1]).unwrap();
        assert_eq!(with[0].key, "run");
        assert_eq!(lines.inline(&with[0]), "|");
        assert_eq!(lines.inline(&with[1]), "{ A: '1 # not a comment' }");
        assert_eq!(lines.items(&top[1]), vec![3, 5]);
    }

    #[test]
    fn key_paths_find_their_lines() {
        let lines = Lines::parse(WORKFLOW);
        assert_eq!(lines.locate("name"), Some(2));
        assert_eq!(lines.locate("stages.build.with.env"), Some(15));
        assert_eq!(lines.locate("stages.build.timeout"), Some(17));
        assert_eq!(lines.locate("on[1]"), Some(6));
        assert_eq!(lines.locate("on[0].event"), Some(5));
        assert_eq!(lines.locate("on[0].source"), Some(4));
        // Into flow style: the deepest key found.
        assert_eq!(lines.locate("stages.deploy.with.run"), Some(19));
        assert_eq!(lines.locate("stages.nothing.uses"), Some(7));
        assert_eq!(lines.locate(""), None);
        assert_eq!(Lines::parse("- a\n- b\n").locate("name"), None);
    }

    #[test]
    fn keys_are_read_as_yaml_reads_them() {
        assert_eq!(key_line("a: b", 0), Some(("a".into(), 3..4)));
        assert_eq!(
            key_line("  \"a b\": 'c' # x", 2),
            Some(("a b".into(), 9..12))
        );
        assert_eq!(key_line("'it''s':", 0), Some(("it's".into(), 8..8)));
        assert_eq!(key_line("url: http://x#y", 0), Some(("url".into(), 5..15)));
        assert_eq!(key_line("a:b: c", 0), Some(("a:b".into(), 5..6)));
        assert_eq!(key_line("say: it's # ok", 0), Some(("say".into(), 5..9)));
        assert_eq!(key_line("- a: b", 0), None);
        assert_eq!(key_line("a # b: c", 0), None);
        assert_eq!(key_line("just text", 0), None);
    }

    #[test]
    fn edits_keep_every_other_line_and_the_line_breaks() {
        let text = "a: 1\r\nb: 2\r\nc: 3\r\n";
        let lines = Lines::parse(text);
        let mut edits = Edits::default();
        edits.replace(1..2, vec!["b: 20".into(), "bb: 21".into()]);
        edits.insert(3, vec!["d: 4".into()]);
        edits.insert(0, vec!["# head".into()]);
        edits.insert(0, vec!["# second".into()]);
        assert_eq!(
            edits.apply(&lines),
            "# head\r\n# second\r\na: 1\r\nb: 20\r\nbb: 21\r\nc: 3\r\nd: 4\r\n"
        );
        let lines = Lines::parse("a: 1");
        let mut edits = Edits::default();
        edits.replace(0..1, vec!["a: 2".into()]);
        assert_eq!(
            edits.apply(&lines),
            "a: 2",
            "no line break added at the end"
        );
    }
}
