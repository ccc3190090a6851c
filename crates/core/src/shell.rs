//! Template results inside shell scripts: where each template stands in a script, and how
//! its result is written there so that `sh` reads it as literal text, never as syntax.
//!
//! A script's literal text is written by the workflow's author; only the template results
//! come from events. So the text around the templates is scanned once, when the workflow
//! loads, and each template gets the quoting its place needs ([`Quoting`]). A place where
//! no quoting is safe (a here-document, backquotes, `${ … }`, `$(( … ))`) is refused with
//! the reason, and so is every place after a construct this scan does not follow.

use std::collections::VecDeque;

/// How a template's result is written at its place in a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Outside quotes: one single-quoted word, each `'` written as `'\''`.
    Bare,
    /// Inside `'…'`: the text, each `'` written as `'\''`.
    Single,
    /// Inside `"…"`: the double quotes are closed around one single-quoted word.
    Double,
    /// Inside a comment: nothing, since a newline in the result would end the comment.
    Comment,
}

impl Quoting {
    /// Appends `text` to `out` so that, at this place, `sh` reads exactly `text`.
    pub fn write(self, text: &str, out: &mut String) {
        match self {
            Self::Bare => single_quoted(text, out),
            Self::Single => escape_single(text, out),
            Self::Double => {
                out.push('"');
                single_quoted(text, out);
                out.push('"');
            }
            Self::Comment => {}
        }
    }
}

/// Appends `text` as one single-quoted shell word: `it's` becomes `'it'\''s'`, and the empty
/// text `''`, an empty word.
pub fn single_quoted(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('\'');
    escape_single(text, out);
    out.push('\'');
}

fn escape_single(text: &str, out: &mut String) {
    for (i, part) in text.split('\'').enumerate() {
        if i > 0 {
            out.push_str("'\\''");
        }
        out.push_str(part);
    }
}

/// Where each template of a script stands. `texts` are the script's literal parts, with a
/// template between each two (so `n` templates have `n + 1` texts, some of them empty).
/// Returns, for each template, its [`Quoting`], or where it stands when no quoting is safe
/// there (a phrase such as "stands inside a here-document").
pub fn quoting_of(texts: &[&str]) -> Vec<Result<Quoting, &'static str>> {
    let mut scan = Scan {
        word_start: true,
        ..Scan::default()
    };
    let mut places = Vec::with_capacity(texts.len().saturating_sub(1));
    for (i, text) in texts.iter().enumerate() {
        scan.text(text.as_bytes());
        if i + 1 < texts.len() {
            places.push(scan.template());
        }
    }
    places
}

/// A construct the scan is inside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `$( … )`, with the `(` opened inside it and not closed yet.
    Command(usize),
    /// `$(( … ))`, with the same count.
    Arithmetic(usize),
    /// `${ … }`.
    Parameter,
    /// `` ` … ` ``.
    Backquotes,
    /// `" … "`.
    Double,
    /// `' … '`.
    Single,
    /// `#` to the end of the line.
    Comment,
}

/// A here-document whose body starts after the next newline.
#[derive(Debug)]
struct Heredoc {
    delimiter: Vec<u8>,
    /// `<<-`: leading tabs are stripped from its lines.
    strip_tabs: bool,
    /// The delimiter was quoted: the body is not expanded.
    quoted: bool,
}

/// The state of the scan: the constructs it is inside of, innermost last (none: a command
/// line outside quotes).
#[derive(Debug, Default)]
struct Scan {
    frames: Vec<Frame>,
    /// The next byte starts a word (where `#` starts a comment).
    word_start: bool,
    /// The last byte was a `\` that escapes the next one.
    escaped: bool,
    /// The last byte was a `$` that starts nothing yet.
    dollar: bool,
    /// Here-documents whose bodies come after the next newline, in order.
    pending: VecDeque<Heredoc>,
    /// The body being read, the first of `pending`.
    in_body: bool,
    /// The body line read so far, and whether a template stands in it.
    line: Vec<u8>,
    line_templated: bool,
    /// Set once the scan meets something it does not follow: every later template is
    /// refused with this reason.
    lost: Option<&'static str>,
}

const AFTER_UNKNOWN: &str = "stands after a construct baton does not follow";

impl Scan {
    fn frame(&self) -> Option<Frame> {
        self.frames.last().copied()
    }

    fn lose(&mut self, why: &'static str) {
        self.lost.get_or_insert(why);
    }

    /// Where a template at the current position stands; then it counts as part of a word.
    fn template(&mut self) -> Result<Quoting, &'static str> {
        let place = self.place();
        if self.in_body {
            self.line_templated = true;
        }
        self.word_start = false;
        self.escaped = false;
        self.dollar = false;
        place
    }

    fn place(&self) -> Result<Quoting, &'static str> {
        if let Some(why) = self.lost {
            return Err(why);
        }
        if self.in_body {
            return Err("stands inside a here-document");
        }
        if self.escaped {
            return Err("stands right after a `\\`");
        }
        for frame in &self.frames {
            match frame {
                Frame::Parameter => return Err("stands inside `${ … }`"),
                Frame::Arithmetic(_) => return Err("stands inside `$(( … ))`"),
                Frame::Backquotes => {
                    return Err("stands inside backquotes (`$( … )` takes templates)");
                }
                _ => {}
            }
        }
        Ok(match self.frame() {
            None | Some(Frame::Command(_)) if self.dollar => {
                return Err("stands right after a `$`");
            }
            None | Some(Frame::Command(_)) => Quoting::Bare,
            Some(Frame::Double) => Quoting::Double,
            Some(Frame::Single) => Quoting::Single,
            Some(Frame::Comment) => Quoting::Comment,
            // Refused above.
            Some(Frame::Parameter | Frame::Arithmetic(_) | Frame::Backquotes) => Quoting::Bare,
        })
    }

    /// Scans one literal part of the script.
    fn text(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() && self.lost.is_none() {
            if self.in_body {
                i = self.body_byte(s, i);
                continue;
            }
            let b = s[i];
            i += 1;
            let dollar = std::mem::take(&mut self.dollar);
            if std::mem::take(&mut self.escaped) {
                // `\` and a newline join two lines: no newline is seen.
                self.word_start = false;
                continue;
            }
            match self.frame() {
                Some(Frame::Single) => {
                    if b == b'\'' {
                        self.frames.pop();
                    }
                }
                Some(Frame::Comment) => {
                    if b == b'\n' {
                        self.frames.pop();
                        self.newline();
                    }
                }
                Some(Frame::Double) => match b {
                    b'"' => {
                        self.frames.pop();
                        self.word_start = false;
                    }
                    b'\\' => self.escaped = true,
                    b'$' => i = self.expansion(s, i),
                    b'`' => self.frames.push(Frame::Backquotes),
                    _ => {}
                },
                Some(Frame::Backquotes) => match b {
                    b'\\' => self.escaped = true,
                    b'`' => {
                        self.frames.pop();
                        self.word_start = false;
                    }
                    b'\n' => self.newline_inside(),
                    _ => {}
                },
                Some(Frame::Parameter) => match b {
                    b'\\' => self.escaped = true,
                    b'}' => {
                        self.frames.pop();
                        self.word_start = false;
                    }
                    b'"' => self.frames.push(Frame::Double),
                    b'\'' => {
                        // Shells disagree on single quotes in `"${x:-'…'}"`.
                        if self.frames.contains(&Frame::Double) {
                            self.lose(AFTER_UNKNOWN);
                        } else {
                            self.frames.push(Frame::Single);
                        }
                    }
                    b'$' => i = self.expansion(s, i),
                    b'`' => self.frames.push(Frame::Backquotes),
                    b'\n' => self.newline_inside(),
                    _ => {}
                },
                Some(Frame::Arithmetic(open)) => match b {
                    b'(' => self.set_frame(Frame::Arithmetic(open + 1)),
                    b')' if open > 0 => self.set_frame(Frame::Arithmetic(open - 1)),
                    b')' => {
                        if s.get(i) == Some(&b')') {
                            i += 1;
                            self.frames.pop();
                            self.word_start = false;
                        } else {
                            self.lose(AFTER_UNKNOWN);
                        }
                    }
                    b'\\' => self.escaped = true,
                    b'"' => self.frames.push(Frame::Double),
                    b'\'' => self.frames.push(Frame::Single),
                    b'$' => i = self.expansion(s, i),
                    b'`' => self.frames.push(Frame::Backquotes),
                    b'\n' => self.newline_inside(),
                    _ => {}
                },
                None | Some(Frame::Command(_)) => i = self.unquoted_byte(s, i, b, dollar),
            }
        }
    }

    fn set_frame(&mut self, frame: Frame) {
        if let Some(last) = self.frames.last_mut() {
            *last = frame;
        }
    }

    /// One byte outside quotes (`s[i - 1]`); returns where the scan goes on.
    fn unquoted_byte(&mut self, s: &[u8], mut i: usize, b: u8, after_dollar: bool) -> usize {
        let starts_word = self.word_start;
        self.word_start = false;
        match b {
            b'\'' if after_dollar => {
                // `$'…'`: bash reads escapes in it, dash a `$` and a quoted string.
                self.lose(AFTER_UNKNOWN);
            }
            b'\'' => self.frames.push(Frame::Single),
            b'"' => self.frames.push(Frame::Double),
            b'\\' => self.escaped = true,
            b'$' => i = self.expansion(s, i),
            b'`' => self.frames.push(Frame::Backquotes),
            b'#' if starts_word => self.frames.push(Frame::Comment),
            b'\n' => self.newline(),
            b' ' | b'\t' | b';' | b'&' | b'|' | b'>' => self.word_start = true,
            b'(' => {
                if let Some(Frame::Command(open)) = self.frame() {
                    self.set_frame(Frame::Command(open + 1));
                }
                self.word_start = true;
            }
            b')' => match self.frame() {
                Some(Frame::Command(0)) => {
                    // The end of `$( … )`, which is part of a word.
                    self.frames.pop();
                }
                Some(Frame::Command(open)) => {
                    self.set_frame(Frame::Command(open - 1));
                    self.word_start = true;
                }
                _ => self.word_start = true,
            },
            b'<' => {
                self.word_start = true;
                if s.get(i) == Some(&b'<') {
                    if s.get(i + 1) == Some(&b'<') {
                        // A here-string (bash), which dash reads otherwise.
                        self.lose(AFTER_UNKNOWN);
                        return i;
                    }
                    let strip_tabs = s.get(i + 1) == Some(&b'-');
                    i = self.heredoc(s, i + 1 + usize::from(strip_tabs), strip_tabs);
                }
            }
            // The patterns of a `case` hold unbalanced `)`, which would end `$( … )` here.
            b'c' if starts_word
                && matches!(self.frame(), Some(Frame::Command(_)))
                && s[i - 1..].starts_with(b"case")
                && s.get(i + 3)
                    .is_none_or(|n| matches!(n, b' ' | b'\t' | b'\n')) =>
            {
                self.lose(AFTER_UNKNOWN);
            }
            _ => {}
        }
        i
    }

    /// After a `$` (at `s[i - 1]`): opens `$(`, `$((` or `${`; returns where the scan goes on.
    fn expansion(&mut self, s: &[u8], i: usize) -> usize {
        match (s.get(i), s.get(i + 1)) {
            (Some(b'('), Some(b'(')) => {
                self.frames.push(Frame::Arithmetic(0));
                i + 2
            }
            (Some(b'('), _) => {
                self.frames.push(Frame::Command(0));
                self.word_start = true;
                i + 1
            }
            (Some(b'{'), _) => {
                self.frames.push(Frame::Parameter);
                i + 1
            }
            _ => {
                self.dollar = true;
                i
            }
        }
    }

    /// A newline outside quotes: here-document bodies begin.
    fn newline(&mut self) {
        self.word_start = true;
        if !self.pending.is_empty() {
            self.in_body = true;
            self.line.clear();
            self.line_templated = false;
        }
    }

    /// A newline inside a construct where a here-document's body would not be looked for.
    fn newline_inside(&mut self) {
        if !self.pending.is_empty() {
            self.lose(AFTER_UNKNOWN);
        }
    }

    /// Reads a here-document's delimiter word, from `s[i]` (after `<<` or `<<-`).
    fn heredoc(&mut self, s: &[u8], mut i: usize, strip_tabs: bool) -> usize {
        while matches!(s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let mut delimiter = Vec::new();
        let mut quoted = false;
        loop {
            let Some(&b) = s.get(i) else {
                // The text ends: a template would be part of the delimiter.
                self.lose(AFTER_UNKNOWN);
                return i;
            };
            match b {
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')' => break,
                b'\'' => {
                    quoted = true;
                    let Some(end) = s[i + 1..].iter().position(|&c| c == b'\'') else {
                        self.lose(AFTER_UNKNOWN);
                        return s.len();
                    };
                    delimiter.extend_from_slice(&s[i + 1..i + 1 + end]);
                    i += end + 2;
                }
                b'"' => {
                    quoted = true;
                    i += 1;
                    loop {
                        match s.get(i) {
                            Some(b'"') => break,
                            Some(b'\\') if matches!(s.get(i + 1), Some(b'"' | b'\\')) => {
                                delimiter.push(s[i + 1]);
                                i += 2;
                            }
                            // Expansions in a delimiter: shells differ.
                            None | Some(b'$' | b'`' | b'\\') => {
                                self.lose(AFTER_UNKNOWN);
                                return s.len();
                            }
                            Some(&c) => {
                                delimiter.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                }
                b'\\' if i + 1 < s.len() => {
                    quoted = true;
                    delimiter.push(s[i + 1]);
                    i += 2;
                }
                b'\\' | b'$' | b'`' => {
                    self.lose(AFTER_UNKNOWN);
                    return s.len();
                }
                _ => {
                    delimiter.push(b);
                    i += 1;
                }
            }
        }
        if delimiter.is_empty() {
            self.lose(AFTER_UNKNOWN);
        }
        self.pending.push_back(Heredoc {
            delimiter,
            strip_tabs,
            quoted,
        });
        i
    }

    /// One byte of a here-document's body; returns where the scan goes on.
    fn body_byte(&mut self, s: &[u8], i: usize) -> usize {
        let b = s[i];
        if b != b'\n' {
            self.line.push(b);
            return i + 1;
        }
        let Some(doc) = self.pending.front() else {
            self.in_body = false;
            return i + 1;
        };
        let line = if doc.strip_tabs {
            let tabs = self.line.iter().take_while(|&&c| c == b'\t').count();
            &self.line[tabs..]
        } else {
            &self.line[..]
        };
        if !self.line_templated && line == doc.delimiter.as_slice() {
            self.pending.pop_front();
            if self.pending.is_empty() {
                self.in_body = false;
                self.word_start = true;
            }
        } else if !doc.quoted && line.ends_with(b"\\") {
            // A `\` at the end of a line joins it to the next in an unquoted body, which
            // shells apply before looking for the delimiter or not.
            self.lose(AFTER_UNKNOWN);
        }
        self.line.clear();
        self.line_templated = false;
        i + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(quoting: Quoting, text: &str) -> String {
        let mut out = String::new();
        quoting.write(text, &mut out);
        out
    }

    #[test]
    fn words_are_single_quoted() {
        assert_eq!(quoted(Quoting::Bare, ""), "''");
        assert_eq!(quoted(Quoting::Bare, "a b"), "'a b'");
        assert_eq!(quoted(Quoting::Bare, "it's"), "'it'\\''s'");
        assert_eq!(quoted(Quoting::Bare, "'"), "''\\'''");
        assert_eq!(quoted(Quoting::Bare, "$(x)\n`y`"), "'$(x)\n`y`'");
        assert_eq!(quoted(Quoting::Single, "it's"), "it'\\''s");
        assert_eq!(quoted(Quoting::Double, "a\"b"), "\"'a\"b'\"");
        assert_eq!(quoted(Quoting::Comment, "x\nrm -rf /"), "");
    }

    fn places(texts: &[&str]) -> Vec<Result<Quoting, &'static str>> {
        quoting_of(texts)
    }

    #[test]
    fn finds_quotes_around_templates() {
        use Quoting::*;
        assert_eq!(places(&["echo ", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo \"[COUT] ref = ", "\""]), [Ok(Double)]);
        assert_eq!(places(&["echo 'a ", " b'"]), [Ok(Single)]);
        assert_eq!(places(&["echo \"it's ", "\""]), [Ok(Double)]);
        assert_eq!(places(&["echo 'say \"", "\"'"]), [Ok(Single)]);
        assert_eq!(
            places(&["x=", "; echo \"$(printf %s ", ")\" ", ""]),
            [Ok(Bare), Ok(Bare), Ok(Bare)]
        );
        assert_eq!(places(&["echo \"a $(echo \"b ", "\") c\""]), [Ok(Double)]);
        assert_eq!(places(&["echo \"\\\"", "\\\"\""]), [Ok(Double)]);
        assert_eq!(places(&["echo \\\\", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo ", "", ""]), [Ok(Bare), Ok(Bare)]);
        assert_eq!(places(&["a=$(( 1 + 2 )) ", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo ${x:-y} ", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo `date` ", ""]), [Ok(Bare)]);
    }

    #[test]
    fn comments_start_only_at_a_word() {
        use Quoting::*;
        assert_eq!(places(&["# ", "\necho ", ""]), [Ok(Comment), Ok(Bare)]);
        assert_eq!(places(&["echo a # ", ""]), [Ok(Comment)]);
        assert_eq!(places(&["echo a#", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo $#", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo ", "#", ""]), [Ok(Bare), Ok(Bare)]);
        assert_eq!(places(&["echo $(x)#", ""]), [Ok(Bare)]);
        assert_eq!(places(&["echo $( # ", "\n)"]), [Ok(Comment)]);
        assert_eq!(places(&["echo 'a#' # it's ", ""]), [Ok(Comment)]);
    }

    #[test]
    fn here_documents_are_followed_and_their_bodies_refused() {
        use Quoting::*;
        let body = Err("stands inside a here-document");
        assert_eq!(
            places(&["cat <<EOF\nhello ", "\nEOF\necho ", ""]),
            [body, Ok(Bare)]
        );
        assert_eq!(
            places(&["cat <<'EOF' >f ", "\n$x ", "\nEOF\necho ", ""]),
            [Ok(Bare), body, Ok(Bare)]
        );
        assert_eq!(
            places(&["cat <<-\"EOF\"\n\tx\n\tEOF\necho ", ""]),
            [Ok(Bare)]
        );
        assert_eq!(
            places(&["cat <<\"$E\"\nE\necho ", ""]),
            [Err(AFTER_UNKNOWN)]
        );
        assert_eq!(places(&["cat <<-E\\OF\n\tx\n\tEOF\necho ", ""]), [Ok(Bare)]);
        assert_eq!(
            places(&["cat <<A <<B\nA\n", "\nA\nB\n", ""]),
            [body, Ok(Bare)]
        );
        assert_eq!(
            places(&["x=$(cat <<EOF\n", "\nEOF\n)\necho ", ""]),
            [body, Ok(Bare)]
        );
        assert_eq!(places(&["cat <<", "\n"]), [Err(AFTER_UNKNOWN)]);
        assert_eq!(places(&["cat <<EOF", "\n"]), [Err(AFTER_UNKNOWN)]);
        assert_eq!(
            places(&["cat <<EOF\nx\\\nEOF\nEOF\necho ", ""]),
            [Err(AFTER_UNKNOWN)]
        );
        assert_eq!(places(&["cat <<<x; echo ", ""]), [Err(AFTER_UNKNOWN)]);
        // Not an operator inside quotes.
        assert_eq!(places(&["echo \"<<EOF\"\necho ", ""]), [Ok(Bare)]);
    }

    #[test]
    fn places_without_a_safe_quoting_are_refused() {
        let refused = |texts: &[&str]| places(texts)[0].unwrap_err();
        assert!(refused(&["echo \\", ""]).contains("`\\`"));
        assert!(refused(&["echo \"\\", "\""]).contains("`\\`"));
        assert!(refused(&["echo $", ""]).contains("`$`"));
        assert!(refused(&["echo $(echo $", ")"]).contains("`$`"));
        assert!(refused(&["echo ${x:-", "}"]).contains("${"));
        assert!(refused(&["echo \"${x:-\"", "\"}\""]).contains("${"));
        assert!(refused(&["echo $(( ", " + 1 ))"]).contains("$(("));
        assert!(refused(&["echo `echo ", "`"]).contains("backquotes"));
        assert!(refused(&["echo \"`echo ", "`\""]).contains("backquotes"));
        assert_eq!(refused(&["echo $'a\\'", "'"]), AFTER_UNKNOWN);
        assert_eq!(
            refused(&["x=$(case $y in a) echo;; esac); echo ", ""]),
            AFTER_UNKNOWN
        );
        assert_eq!(refused(&["echo \"${x:-'}'}\" ", ""]), AFTER_UNKNOWN);
        // `$"…"` reads as double quotes in both shells; `'` in it is literal.
        assert_eq!(places(&["echo $\"'", "'\""]), [Ok(Quoting::Double)]);
        assert_eq!(places(&["echo \"$", "\""]), [Ok(Quoting::Double)]);
    }
}
