//! jq expressions (through the jaq crates) and `${{ … }}` templates.
//!
//! Everything is compiled once, when a workflow loads; evaluation never re-parses.

use std::fmt;
use std::sync::Arc;

use jaq_core::load::parse::Def;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Exn, ValX, Vars};
use jaq_json::Val;
use serde_json::Value;

use crate::expr_bound::{self, Bounded as Data, Metered};
use crate::shell::Quoting;

/// A jq expression could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid jq expression `{source_text}`: {message}")]
pub struct CompileError {
    /// The expression as written.
    pub source_text: String,
    /// What the parser or compiler reported, with the position.
    pub message: String,
}

/// Evaluating a jq expression failed at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jq expression `{source_text}` failed: {message}")]
pub struct EvalError {
    /// The expression as written.
    pub source_text: String,
    /// jq's error text.
    pub message: String,
}

/// A compiled jq expression. Cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    filter: Arc<jaq_core::Filter<Data>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr {
    /// Parses and compiles `code`, with jq's standard library.
    pub fn compile(code: &str) -> Result<Self, CompileError> {
        let fail = |message: String| CompileError {
            source_text: code.to_owned(),
            message,
        };
        // jaq parses and compiles recursively: a few hundred nested brackets or chained
        // operators overflow a 2 MiB thread stack, which aborts the process.
        let depth = nesting_estimate(code);
        if depth > MAX_NESTING {
            return Err(fail(format!(
                "too complex: {depth} nested brackets and chained operators, at most {MAX_NESTING}; split it or move the logic into a script"
            )));
        }
        let arena = Arena::default();
        // Syntax errors, reported against the expression as written.
        Loader::new([])
            .load(&arena, File { code, path: () })
            .map_err(|errors| fail(describe_load_errors(code, errors)))?;
        let term = jaq_core::load::parse(code, |p| p.term())
            .ok_or_else(|| fail("cannot be parsed".to_owned()))?;
        // The program that runs: the expression rewritten so that every operation is
        // bounded (see `expr_bound`), as the last definition after jaq's standard ones.
        let main = Def {
            name: expr_bound::MAIN,
            args: Vec::new(),
            body: expr_bound::rewrite(term),
        };
        let mut prelude: Vec<Def<&str>> = expr_bound::prelude();
        prelude.push(main);
        let modules = Loader::new(prelude)
            .load(
                &arena,
                File {
                    code: expr_bound::MAIN,
                    path: (),
                },
            )
            .map_err(|errors| fail(describe_load_errors(code, errors)))?;
        let filter = Compiler::default()
            .with_funs(expr_bound::funs())
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, errs)| errs)
                    .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                    .collect();
                fail(names.join(", "))
            })?;
        Ok(Self {
            source: code.into(),
            filter: Arc::new(filter),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the expression on `input` and returns every output.
    pub fn eval_all(&self, input: &Value) -> Result<Vec<Value>, EvalError> {
        self.eval_val(to_val(input))
    }

    /// Runs the expression on an input already converted with [`to_val`].
    ///
    /// Bounded by the [`Limits`](expr_bound::Limits) of the evaluation thread it runs on
    /// (see [`expr_bound`]).
    pub fn eval_val(&self, input: Val) -> Result<Vec<Value>, EvalError> {
        self.bounded(input, |outputs| {
            let mut values = Vec::new();
            for output in outputs {
                values.push(from_val(&output.map_err(exception_text)?)?);
            }
            Ok(values)
        })
    }

    /// Runs the compiled program on `input` on an evaluation thread, under its bounds, and
    /// hands its outputs to `consume` there.
    fn bounded<R: Send + 'static>(
        &self,
        input: Val,
        consume: impl FnOnce(&mut dyn Iterator<Item = ValX<'_, Val>>) -> Result<R, String>
        + Send
        + 'static,
    ) -> Result<R, EvalError> {
        let expr = self.clone();
        let outcome = expr_bound::on_eval_thread(move |limits| {
            expr_bound::bounded(limits, || {
                let ctx = Ctx::<Data>::new(Metered::new(&expr.filter.lut), Vars::new([]));
                let mut outputs = expr.filter.id.run((ctx, input));
                consume(&mut outputs)
            })
        });
        let message = match outcome {
            Ok(Ok(Ok(r))) => return Ok(r),
            Ok(Ok(Err(message))) => message,
            Ok(Err(exceeded)) => exceeded.to_string(),
            Err(pool) => pool.to_string(),
        };
        Err(EvalError {
            source_text: self.source.to_string(),
            message,
        })
    }

    /// The first output, or `null` when the expression yields nothing (jq's `empty`).
    pub fn eval_first(&self, input: &Value) -> Result<Value, EvalError> {
        Ok(self
            .eval_all(input)?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    }

    /// jq truthiness of the first output: `false`, `null` and no output at all are false.
    pub fn is_true(&self, input: &Value) -> Result<bool, EvalError> {
        Ok(truthy(&self.eval_first(input)?))
    }

    /// [`Expr::is_true`] on an input already in jaq's form, without converting the output
    /// back to JSON: the trigger filter every delivery goes through.
    pub fn is_true_val(&self, input: Val) -> Result<bool, EvalError> {
        self.bounded(input, |outputs| match outputs.next() {
            None => Ok(false),
            Some(Ok(val)) => Ok(jaq_core::ValT::as_bool(&val)),
            Some(Err(e)) => Err(exception_text(e)),
        })
    }
}

/// The text of a run-time exception: jaq's error message (at most [`MAX_ERROR_TEXT`]
/// bytes of it: it may show a value, and a value may be huge), or what `halt` asked for.
fn exception_text(e: Exn<'_, Val>) -> String {
    match e.get_err() {
        Ok(error) => bounded_text(&error, MAX_ERROR_TEXT),
        Err(other) => match other.get_halt() {
            Ok(code) => format!(
                "it called `halt` (exit code {code}), which ends only this expression, not baton"
            ),
            Err(_) => "jq's control flow escaped the expression".to_owned(),
        },
    }
}

/// The longest error text kept from jaq; the rest is cut, with `…`.
pub const MAX_ERROR_TEXT: usize = 1024;

/// `value` as text, cut at `max` bytes (on a character boundary). Stops writing there, so
/// a value whose text would be huge costs no more than `max` bytes.
fn bounded_text(value: &dyn fmt::Display, max: usize) -> String {
    struct Cut {
        out: String,
        max: usize,
        cut: bool,
    }
    impl fmt::Write for Cut {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.max - self.out.len();
            if s.len() <= room {
                self.out.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.out.push_str(&s[..end]);
            self.cut = true;
            Err(fmt::Error)
        }
    }
    let mut cut = Cut {
        out: String::new(),
        max,
        cut: false,
    };
    let _ = fmt::write(&mut cut, format_args!("{value}"));
    if cut.cut {
        cut.out.push('…');
    }
    cut.out
}

/// Parses JSON text straight into jaq's value type, with no `serde_json::Value` between.
pub fn parse_val(text: &str) -> Result<Val, serde_json::Error> {
    serde_json::from_str(text)
}

/// The largest [`nesting_estimate`] [`Expr::compile`] accepts.
pub const MAX_NESTING: usize = 100;

/// An upper bound on how deep jaq recurses to parse and run `code`: the deepest bracket
/// nesting plus every chaining operator and keyword (`|`, `,`, `+`, `==`, `and`, `if`, …).
/// Object fields, path steps and string interpolations do not nest, so they do not count.
pub fn nesting_estimate(code: &str) -> usize {
    #[derive(PartialEq)]
    enum Open {
        Bracket(u8),
        Interpolation,
    }
    let bytes = code.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    let (mut deepest, mut operators) = (0usize, 0usize);
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' if bytes.get(i + 1) == Some(&b'(') => {
                    in_string = false;
                    stack.push(Open::Interpolation);
                    deepest = deepest.max(stack.len());
                    i += 1;
                }
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                stack.push(Open::Bracket(b));
                deepest = deepest.max(stack.len());
            }
            b')' if stack.last() == Some(&Open::Interpolation) => {
                stack.pop();
                in_string = true;
            }
            b')' | b']' | b'}' => {
                stack.pop();
            }
            // Commas between object fields do not chain.
            b',' if stack.last() == Some(&Open::Bracket(b'{')) => {}
            b'|' | b',' | b'+' | b'-' | b'*' | b'/' | b'%' | b'=' | b'<' | b'>' | b'?' => {
                operators += 1;
                // `//`, `==`, `|=`, `<=`, `?//` and the like are one operator.
                while bytes
                    .get(i + 1)
                    .is_some_and(|n| matches!(n, b'/' | b'=' | b'|'))
                {
                    i += 1;
                }
            }
            b'$' | b'.' => {
                // `$if`, `.and`: names, not keywords.
                while bytes
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_')
                {
                    i += 1;
                }
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while bytes
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_')
                {
                    i += 1;
                }
                if matches!(
                    &code[start..=i],
                    "and"
                        | "or"
                        | "if"
                        | "elif"
                        | "try"
                        | "reduce"
                        | "foreach"
                        | "as"
                        | "def"
                        | "label"
                ) {
                    operators += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    deepest + operators
}

/// jq truthiness: everything but `false` and `null` is true.
pub fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

/// Converts a JSON value into jaq's value type.
pub fn to_val(value: &Value) -> Val {
    serde_json::from_value(value.clone()).unwrap_or(Val::Null)
}

/// Converts an output back to JSON, on the evaluation thread and within its bounds: the
/// value is walked (and charged) first, since its text may be far larger than its memory.
fn from_val(val: &Val) -> Result<Value, String> {
    let weight = expr_bound::value_weight(val).map_err(|depth| {
        format!(
            "its output is nested {depth} levels deep, deeper than the {} levels an output may have",
            expr_bound::MAX_VALUE_DEPTH
        )
    })?;
    expr_bound::reserve(weight.json_bytes());
    // jaq writes its values as JSON text; byte strings and non-finite numbers come out as
    // text that is not JSON, which we keep as a string rather than lose.
    let text = val.to_string();
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn describe_load_errors(code: &str, errors: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let at = |rest: &str| {
        let offset = code.len().saturating_sub(rest.len());
        let found: String = rest.chars().take(12).collect();
        if found.is_empty() {
            format!("at the end (column {})", offset + 1)
        } else {
            format!("at column {}, found `{found}`", offset + 1)
        }
    };
    let mut parts = Vec::new();
    for (_, error) in errors {
        match error {
            Error::Io(items) => parts.extend(
                items
                    .into_iter()
                    .map(|(path, msg)| format!("cannot load `{path}`: {msg}")),
            ),
            Error::Lex(items) => {
                for (expect, rest) in items {
                    let what = match expect {
                        jaq_core::load::lex::Expect::Delim(open) => format!("a match for `{open}`"),
                        other => other.as_str().to_owned(),
                    };
                    parts.push(format!("expected {what} {}", at(rest)));
                }
            }
            Error::Parse(items) => {
                for (expect, rest) in items {
                    parts.push(format!("expected {} {}", expect.as_str(), at(rest)));
                }
            }
        }
    }
    parts.join("; ")
}

/// One piece of a template string.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Expr(Expr),
    /// An expression in a shell script, and how its result is quoted at its place there.
    Shell(Expr, Quoting),
}

/// A string that may hold `${{ jq }}` templates.
///
/// A string that is exactly one template keeps the JSON type of the result; otherwise each
/// result is written into the text (strings without quotes, other values as JSON). In a
/// shell script ([`Template::parse_script`]) each result is written as literal text instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Splits `text` into literal text and compiled expressions.
    pub fn parse(text: &str) -> Result<Self, CompileError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("${{") {
            let after = &rest[open + 3..];
            let close = after.find("}}").ok_or_else(|| CompileError {
                source_text: text.to_owned(),
                message: "a `${{` is never closed with `}}`".to_owned(),
            })?;
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let code = after[..close].trim();
            if code.is_empty() {
                return Err(CompileError {
                    source_text: text.to_owned(),
                    message: "empty `${{ }}`: write a jq expression inside".to_owned(),
                });
            }
            pieces.push(Piece::Expr(Expr::compile(code)?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self { pieces })
    }

    /// [`Template::parse`] for a shell script: each result is written so that `sh` reads it as
    /// literal text at its place (one single-quoted word outside quotes; see [`crate::shell`]),
    /// and the template always renders to a string. A template where no quoting is safe (in
    /// a here-document, for one) is an error.
    pub fn parse_script(text: &str) -> Result<Self, CompileError> {
        let Self { pieces } = Self::parse(text)?;
        let mut texts = vec![String::new()];
        for piece in &pieces {
            match piece {
                Piece::Text(t) => {
                    if let Some(last) = texts.last_mut() {
                        last.push_str(t);
                    }
                }
                _ => texts.push(String::new()),
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut places = crate::shell::quoting_of(&texts).into_iter();
        let mut problems = Vec::new();
        let mut shell_pieces = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let Piece::Expr(expr) = piece else {
                shell_pieces.push(piece);
                continue;
            };
            match places.next() {
                Some(Ok(quoting)) => shell_pieces.push(Piece::Shell(expr, quoting)),
                Some(Err(place)) => problems.push(format!(
                    "`${{{{ {0} }}}}` {place} in the shell script, where baton cannot quote it as literal text: pass the value through `env:` (`env: {{ VALUE: '${{{{ {0} }}}}' }}`) and write \"$VALUE\" in the script",
                    expr.source()
                )),
                // One place per expression: never short.
                None => {}
            }
        }
        if problems.is_empty() {
            Ok(Self {
                pieces: shell_pieces,
            })
        } else {
            Err(CompileError {
                source_text: text.to_owned(),
                message: problems.join("; "),
            })
        }
    }

    /// True when the text holds at least one expression.
    pub fn has_expressions(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Expr(_) | Piece::Shell(..)))
    }

    /// The expressions in this template, in order.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Expr(e) | Piece::Shell(e, _) => Some(e),
            Piece::Text(_) => None,
        })
    }

    /// Renders against a context already converted with [`to_val`].
    pub fn render(&self, context: &Val) -> Result<Value, EvalError> {
        if let [Piece::Expr(expr)] = self.pieces.as_slice() {
            let mut outputs = expr.eval_val(context.clone())?;
            return Ok(if outputs.len() == 1 {
                outputs.pop().unwrap_or(Value::Null)
            } else if outputs.is_empty() {
                Value::Null
            } else {
                Value::Array(outputs)
            });
        }
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Expr(expr) => write_results(expr, context, &mut out)?,
                // A comment drops the result, so it is not worked out.
                Piece::Shell(_, Quoting::Comment) => {}
                Piece::Shell(expr, quoting) => {
                    let mut text = String::new();
                    write_results(expr, context, &mut text)?;
                    quoting.write(&text, &mut out);
                }
            }
        }
        Ok(Value::String(out))
    }
}

/// Appends every result of `expr` as text: strings without quotes, `null` as nothing, other
/// values as JSON.
fn write_results(expr: &Expr, context: &Val, out: &mut String) -> Result<(), EvalError> {
    for value in expr.eval_val(context.clone())? {
        match value {
            Value::String(s) => out.push_str(&s),
            Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(())
}

/// A JSON value whose strings may hold templates (a stage's `with:` block).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatedValue {
    /// A value with no template anywhere inside: used as is.
    Literal(Value),
    /// A string with templates.
    Template(Template),
    /// An array with a template somewhere inside.
    Array(Vec<TemplatedValue>),
    /// An object with a template somewhere inside.
    Object(Vec<(String, TemplatedValue)>),
}

/// A template that failed to compile, with the key path inside the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Path inside the value, such as `parameters.SHA` or `items[2]`.
    pub path: String,
    /// The compile error.
    pub error: CompileError,
}

impl TemplatedValue {
    /// Compiles every template inside `value`, collecting every error.
    pub fn compile(value: &Value) -> Result<Self, Vec<TemplateError>> {
        Self::compile_with_scripts(value, &[])
    }

    /// [`TemplatedValue::compile`] for a stage's `with:` block whose top-level keys named in
    /// `script_keys` hold shell scripts: their templates are compiled with
    /// [`Template::parse_script`].
    pub fn compile_with_scripts(
        value: &Value,
        script_keys: &[&str],
    ) -> Result<Self, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let compiled = Self::compile_at(value, String::new(), script_keys, false, &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    /// `script_keys` apply to the keys of `value` itself; `script` says `value` is a script.
    fn compile_at(
        value: &Value,
        path: String,
        script_keys: &[&str],
        script: bool,
        errors: &mut Vec<TemplateError>,
    ) -> Self {
        let parse = if script {
            Template::parse_script
        } else {
            Template::parse
        };
        match value {
            Value::String(s) if s.contains("${{") => match parse(s) {
                Ok(t) => Self::Template(t),
                Err(error) => {
                    errors.push(TemplateError { path, error });
                    Self::Literal(value.clone())
                }
            },
            Value::Array(items) => {
                let compiled: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, format!("{path}[{i}]"), &[], false, errors))
                    .collect();
                if compiled.iter().all(|c| matches!(c, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Array(compiled)
                }
            }
            Value::Object(map) => {
                let compiled: Vec<_> = map
                    .iter()
                    .map(|(k, v)| {
                        let child = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        let script = script_keys.contains(&k.as_str());
                        (k.clone(), Self::compile_at(v, child, &[], script, errors))
                    })
                    .collect();
                if compiled.iter().all(|(_, c)| matches!(c, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Object(compiled)
                }
            }
            other => Self::Literal(other.clone()),
        }
    }

    /// Every expression inside, in document order.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect_expressions(&mut out);
        out
    }

    fn collect_expressions<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Self::Literal(_) => {}
            Self::Template(t) => out.extend(t.expressions()),
            Self::Array(items) => items.iter().for_each(|i| i.collect_expressions(out)),
            Self::Object(entries) => entries.iter().for_each(|(_, v)| v.collect_expressions(out)),
        }
    }

    /// Renders against `context` (converted once by the caller with [`to_val`]).
    pub fn render(&self, context: &Val) -> Result<Value, EvalError> {
        Ok(match self {
            Self::Literal(v) => v.clone(),
            Self::Template(t) => t.render(context)?,
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render(context))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (k, v) in entries {
                    map.insert(k.clone(), v.render(context)?);
                }
                Value::Object(map)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(text: &str, ctx: Value) -> Value {
        Template::parse(text)
            .unwrap()
            .render(&to_val(&ctx))
            .unwrap()
    }

    #[test]
    fn whole_string_template_keeps_json_type() {
        let ctx = json!({"n": 42, "o": {"a": [1, 2]}, "s": "x"});
        assert_eq!(render("${{ .n }}", ctx.clone()), json!(42));
        assert_eq!(render("${{.o}}", ctx.clone()), json!({"a": [1, 2]}));
        assert_eq!(render("${{ .s }}", ctx.clone()), json!("x"));
        assert_eq!(render("${{ .missing }}", ctx), Value::Null);
    }

    #[test]
    fn embedded_templates_interpolate_text() {
        let ctx = json!({"n": 42, "s": "main", "o": {"a": 1}});
        assert_eq!(
            render("build ${{ .n }} of ${{ .s }}", ctx.clone()),
            json!("build 42 of main")
        );
        assert_eq!(render("obj=${{ .o }}", ctx.clone()), json!("obj={\"a\":1}"));
        assert_eq!(render("no templates here", ctx), json!("no templates here"));
    }

    #[test]
    fn script_templates_render_as_literal_shell_text() {
        let ctx = json!({
            "ref": "refs/heads/$(echo${IFS}x:$GH_SECRET)",
            "quotes": "it's \"q\"\nnext",
            "n": 3,
            "none": null,
        });
        let render = |text: &str| {
            Template::parse_script(text)
                .unwrap()
                .render(&to_val(&ctx))
                .unwrap()
        };
        assert_eq!(
            render("echo \"[COUT] ref = ${{ .ref }}\""),
            json!("echo \"[COUT] ref = \"'refs/heads/$(echo${IFS}x:$GH_SECRET)'\"\"")
        );
        assert_eq!(
            render("echo ${{ .quotes }}"),
            json!("echo 'it'\\''s \"q\"\nnext'")
        );
        assert_eq!(render("echo '${{ .n }}'"), json!("echo '3'"));
        // A whole-string template is a word too, not the raw value.
        assert_eq!(
            render("${{ .ref }}"),
            json!("'refs/heads/$(echo${IFS}x:$GH_SECRET)'")
        );
        assert_eq!(render("x ${{ .none }}"), json!("x ''"));
        assert_eq!(render("true # ${{ .ref }}\ntrue"), json!("true # \ntrue"));

        let err = Template::parse_script("cat <<EOF\n${{ .ref }}\nEOF\necho ${{ .n }} `${{ .n }}`")
            .unwrap_err();
        assert!(
            err.message
                .contains("`${{ .ref }}` stands inside a here-document")
                && err.message.contains("`${{ .n }}` stands inside backquotes")
                && err.message.contains("env: { VALUE: '${{ .ref }}' }"),
            "{}",
            err.message
        );
    }

    #[test]
    fn only_script_keys_are_quoted() {
        let with = json!({
            "run": "echo ${{ .x }}",
            "env": {"X": "${{ .x }}"},
            "input": {"run": "echo ${{ .x }}"},
        });
        let ctx = to_val(&json!({"x": "a;b"}));
        let rendered = TemplatedValue::compile_with_scripts(&with, &["run"])
            .unwrap()
            .render(&ctx)
            .unwrap();
        assert_eq!(
            rendered,
            json!({"run": "echo 'a;b'", "env": {"X": "a;b"}, "input": {"run": "echo a;b"}})
        );
        let plain = TemplatedValue::compile(&with)
            .unwrap()
            .render(&ctx)
            .unwrap();
        assert_eq!(plain["run"], "echo a;b");
        let errs =
            TemplatedValue::compile_with_scripts(&json!({"run": "echo `${{ .x }}`"}), &["run"])
                .unwrap_err();
        assert_eq!(errs[0].path, "run");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = Template::parse("x ${{ .a | ][ }}").unwrap_err();
        assert!(err.message.contains("expected"), "{}", err.message);
        assert!(
            Template::parse("x ${{ .a")
                .unwrap_err()
                .message
                .contains("never closed")
        );
        assert!(
            Template::parse("${{ }}")
                .unwrap_err()
                .message
                .contains("empty")
        );
        let err = Expr::compile("nosuch(1)").unwrap_err();
        assert!(
            err.message.contains("undefined filter `nosuch`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn deep_or_long_expressions_are_refused_not_overflowed() {
        let cases = [
            format!("{}.{}", "(".repeat(10_000), ")".repeat(10_000)),
            format!("1{}", "+1".repeat(10_000)),
            format!(".{}", "|.".repeat(10_000)),
            format!("[{}]", vec!["1"; 10_000].join(",")),
            format!("{}1", "-".repeat(10_000)),
            format!("{}1", "try ".repeat(10_000)),
            format!("\"{}\"", "\\(".repeat(10_000)),
        ];
        for code in &cases {
            let err = Expr::compile(code).unwrap_err();
            assert!(err.message.contains("too complex"), "{}", err.message);
        }
        // Wide but flat expressions stay allowed.
        let fields: Vec<String> = (0..300).map(|i| format!("f{i}: .a.b.c")).collect();
        assert!(Expr::compile(&format!("{{{}}}", fields.join(", "))).is_ok());
        assert!(Expr::compile(&format!("\"{}\"", "\\(.a) ".repeat(300))).is_ok());
        assert_eq!(nesting_estimate(r#".a == "x|y(" and $if.or # a | b"#), 2);
        let at_limit = format!("{}.{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(Expr::compile(&at_limit).is_ok());
    }

    #[test]
    fn runtime_errors_carry_jq_text() {
        let err = Expr::compile(".a.b")
            .unwrap()
            .eval_all(&json!({"a": "text"}))
            .unwrap_err();
        assert!(err.message.contains("cannot index"), "{}", err.message);
    }

    #[test]
    fn truthiness_follows_jq() {
        let check = |code: &str| Expr::compile(code).unwrap().is_true(&json!({})).unwrap();
        assert!(!check("false"));
        assert!(!check("null"));
        assert!(!check("empty"));
        assert!(check("0"));
        assert!(check("\"\""));
        assert!(check("[]"));
    }

    #[test]
    fn templated_value_renders_nested_and_reports_paths() {
        let with = json!({"a": {"b": ["${{ .x }}", 2]}, "c": "lit"});
        let tv = TemplatedValue::compile(&with).unwrap();
        assert_eq!(
            tv.render(&to_val(&json!({"x": true}))).unwrap(),
            json!({"a": {"b": [true, 2]}, "c": "lit"})
        );
        let errs =
            TemplatedValue::compile(&json!({"p": {"q": ["ok", "${{ ][ }}"]}, "r": "${{ ( }}"}))
                .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["p.q[1]", "r"]);
    }
}
