//! What makes jaq's one-step operations bounded: a rewrite of every parsed program (the
//! user's and jaq's standard definitions), and checked versions of the built-ins that would
//! otherwise do unbounded work between two steps.
//!
//! Steps are counted where jaq runs a term or calls a filter (see [`super::Metered`]); the
//! gaps are the operations that do a lot inside one term or one built-in call:
//!
//! - walking a whole value: converting it to text (`tostring`, `"\(…)"`, `@json`, `tojson`),
//!   comparing (`==`, `<`, `sort`, `unique`, `contains`), hashing (object keys), `..`.
//!   Values share their parts, so `reduce range(60) as $x (0; [., .])` is small in memory
//!   but has 2^60 leaves. Such operations first walk their operands (`!walk`), charging a
//!   step per value (and per 64 bytes of string) and refusing values nested deeper than
//!   [`MAX_VALUE_DEPTH`]; the walk itself keeps its own stack, so it cannot overflow.
//! - making a large value from a small one: string repetition (`"x" * 10000000000`),
//!   splitting, `explode`, regular expressions, `fromjson`, escaping. These check the most
//!   memory they could need against `max_memory` before they run, and count the values
//!   they made after.
//! - quadratic work: array subtraction, `indices`, `contains` charge the product of their
//!   operands' sizes.
//! - generators that do not call back into jq (`range`) take a step per value.
//!
//! Internal names start with `!`, which jq's syntax cannot write, so an expression cannot
//! call the unchecked built-ins.

use jaq_core::box_iter::box_once;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::native::{Fun, bome, v};
use jaq_core::ops::Math;
use jaq_core::{Cv, Error, Exn, Native, ValXs};
use jaq_json::{Num, Val};

use super::{Bounded, MAX_VALUE_DEPTH, charge, reserve};

type T = Term<&'static str>;

/// The name of the definition that holds a rewritten expression; the program calls it.
pub(crate) const MAIN: &str = "__baton_expression__";

/// Rewrites `term` so that every operation listed in the module docs goes through its
/// check.
pub(crate) fn rewrite(term: Term<&str>) -> Term<&str> {
    use Term::*;
    match term {
        Id | Num(_) | Var(_) | Break(_) => term,
        Recurse => pipe(call("!walk", vec![]), Recurse),
        Str(fmt, parts) => Str(
            fmt,
            parts
                .into_iter()
                .map(|part| match part {
                    StrPart::Term(t) => StrPart::Term(walked(rewrite(t))),
                    other => other,
                })
                .collect(),
        ),
        Arr(t) => Arr(t.map(|t| Box::new(rewrite(*t)))),
        Obj(entries) => Obj(entries
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (k @ Var(_), None) => (k, None),
                (k, v) => (key(rewrite(k)), v.map(rewrite)),
            })
            .collect()),
        Neg(t) => Neg(Box::new(rewrite(*t))),
        BinOp(l, op, r) => binop(rewrite(*l), op, rewrite(*r)),
        Label(x, t) => Label(x, Box::new(rewrite(*t))),
        Fold(name, xs, pat, args) => Fold(
            name,
            Box::new(rewrite(*xs)),
            pattern(pat),
            args.into_iter().map(rewrite).collect(),
        ),
        TryCatch(t, c) => TryCatch(Box::new(rewrite(*t)), c.map(|c| Box::new(rewrite(*c)))),
        IfThenElse(branches, otherwise) => IfThenElse(
            branches
                .into_iter()
                .map(|(c, t)| (rewrite(c), rewrite(t)))
                .collect(),
            otherwise.map(|t| Box::new(rewrite(*t))),
        ),
        Def(defs, t) => Def(
            defs.into_iter().map(rewrite_def).collect(),
            Box::new(rewrite(*t)),
        ),
        Call(name, args) => Call(name, args.into_iter().map(rewrite).collect()),
        Path(t, path) => Path(
            Box::new(rewrite(*t)),
            jaq_core::path::Path(
                path.0
                    .into_iter()
                    .map(|(part, opt)| {
                        use jaq_core::path::Part;
                        let part = match part {
                            Part::Index(i) => Part::Index(key(rewrite(i))),
                            Part::Range(from, to) => Part::Range(
                                from.map(|t| key(rewrite(t))),
                                to.map(|t| key(rewrite(t))),
                            ),
                        };
                        (part, opt)
                    })
                    .collect(),
            ),
        ),
    }
}

/// [`rewrite`] for a definition's body.
pub(crate) fn rewrite_def(def: Def<&str>) -> Def<&str> {
    Def {
        name: def.name,
        args: def.args,
        body: rewrite(def.body),
    }
}

fn binop<'s>(l: Term<&'s str>, op: BinaryOp<&'s str>, r: Term<&'s str>) -> Term<&'s str> {
    match op {
        BinaryOp::Math(m) => match checked_math(m) {
            Some(name) => call(name, vec![l, r]),
            None => Term::BinOp(Box::new(l), op, Box::new(r)),
        },
        // `l op= r` is `r as $x | l |= . op $x`, which routes `op` through its check.
        BinaryOp::UpdateMath(m) => match checked_math(m) {
            Some(name) => {
                let x = "$!update";
                let update = Term::BinOp(
                    Box::new(l),
                    BinaryOp::Update,
                    Box::new(call(name, vec![Term::Id, Term::Var(x)])),
                );
                Term::BinOp(
                    Box::new(r),
                    BinaryOp::Pipe(Some(Pattern::Var(x))),
                    Box::new(update),
                )
            }
            None => Term::BinOp(Box::new(l), op, Box::new(r)),
        },
        BinaryOp::Cmp(_) => Term::BinOp(Box::new(walked(l)), op, Box::new(walked(r))),
        BinaryOp::Pipe(Some(pat)) => {
            Term::BinOp(Box::new(l), BinaryOp::Pipe(Some(pattern(pat))), Box::new(r))
        }
        op => Term::BinOp(Box::new(l), op, Box::new(r)),
    }
}

/// The checked native for an arithmetic operator that can do unbounded work in one go.
fn checked_math(m: Math) -> Option<&'static str> {
    match m {
        Math::Mul => Some("!mul"),
        Math::Sub => Some("!sub"),
        Math::Div => Some("!div"),
        Math::Add | Math::Rem => None,
    }
}

fn pattern(pat: Pattern<&str>) -> Pattern<&str> {
    match pat {
        Pattern::Var(x) => Pattern::Var(x),
        Pattern::Arr(items) => Pattern::Arr(items.into_iter().map(pattern).collect()),
        Pattern::Obj(entries) => Pattern::Obj(
            entries
                .into_iter()
                .map(|(k, p)| (key(rewrite(k)), pattern(p)))
                .collect(),
        ),
    }
}

/// A key or index: walked (it is hashed or compared) unless it is a literal.
fn key(t: Term<&str>) -> Term<&str> {
    let literal = match &t {
        Term::Num(_) => true,
        Term::Str(None, parts) => parts
            .iter()
            .all(|p| matches!(p, StrPart::Str(_) | StrPart::Char(_))),
        _ => false,
    };
    if literal { t } else { walked(t) }
}

fn walked(t: Term<&str>) -> Term<&str> {
    pipe(t, call("!walk", vec![]))
}

fn pipe<'s>(l: Term<&'s str>, r: Term<&'s str>) -> Term<&'s str> {
    Term::BinOp(Box::new(l), BinaryOp::Pipe(None), Box::new(r))
}

fn call<'s>(name: &'s str, args: Vec<Term<&'s str>>) -> Term<&'s str> {
    Term::Call(name, args)
}

/// A jq built-in replaced by a definition that checks before (and maybe after) it.
struct Wrapped {
    /// The name jq code calls; the native itself is renamed to `raw`.
    name: &'static str,
    /// Its arguments, as a definition writes them (`$x` for values, `f` for filters).
    args: &'static [&'static str],
    /// The renamed native.
    raw: &'static str,
    /// The check run on the input first (with the same value arguments), if any.
    check: Option<(&'static str, &'static [T])>,
    /// Filter arguments' outputs are walked (they are compared).
    walk_filters: bool,
    /// The outputs are walked (charged a step a value).
    walk_outputs: bool,
}

const fn wrapped(name: &'static str, raw: &'static str) -> Wrapped {
    Wrapped {
        name,
        args: &[],
        raw,
        check: None,
        walk_filters: false,
        walk_outputs: false,
    }
}

fn wrappers() -> Vec<Wrapped> {
    // `!reserve(n)`: the input string may grow `n` times.
    let reserve = |name, raw, n: &'static [T]| Wrapped {
        check: Some(("!reserve", n)),
        ..wrapped(name, raw)
    };
    let pairs = |name, raw| Wrapped {
        args: &["$x"],
        check: Some(("!check pairs", &[])),
        ..wrapped(name, raw)
    };
    let sorting = |name, raw| Wrapped {
        args: &["f"],
        check: Some(("!check sort", &[])),
        walk_filters: true,
        ..wrapped(name, raw)
    };
    let regex = |name, raw| Wrapped {
        args: &["$re", "$flags"],
        check: Some(("!check regex", &[])),
        walk_outputs: true,
        ..wrapped(name, raw)
    };
    vec![
        Wrapped {
            args: &["$from", "$to", "$by"],
            walk_outputs: true,
            ..wrapped("range", "!range")
        },
        Wrapped {
            walk_outputs: true,
            ..reserve("explode", "!explode", &[Term::Num("16")])
        },
        Wrapped {
            check: Some(("!walk", &[])),
            ..wrapped("implode", "!implode")
        },
        Wrapped {
            check: Some(("!check tojson", &[])),
            ..wrapped("tojson", "!tojson")
        },
        Wrapped {
            check: Some(("!check fromjson", &[])),
            walk_outputs: true,
            ..wrapped("fromjson", "!fromjson")
        },
        reserve("escape_html", "!escape_html", &[Term::Num("6")]),
        reserve("encode_uri", "!encode_uri", &[Term::Num("3")]),
        reserve("encode_base64", "!encode_base64", &[Term::Num("2")]),
        reserve("escape_sh", "!escape_sh", &[Term::Num("4")]),
        Wrapped {
            args: &["$fmt"],
            check: Some(("!check format", &[])),
            ..wrapped("strftime", "!strftime")
        },
        Wrapped {
            args: &["$fmt"],
            check: Some(("!check format", &[])),
            ..wrapped("strflocaltime", "!strflocaltime")
        },
        pairs("contains", "!contains"),
        pairs("indices", "!indices"),
        pairs("bsearch", "!bsearch"),
        Wrapped {
            args: &["$k"],
            check: Some(("!check key", &[])),
            ..wrapped("has", "!has")
        },
        Wrapped {
            check: Some(("!check sort", &[])),
            ..wrapped("sort", "!sort")
        },
        sorting("sort_by", "!sort_by"),
        sorting("group_by", "!group_by"),
        sorting("min_by_or_empty", "!min_by_or_empty"),
        sorting("max_by_or_empty", "!max_by_or_empty"),
        regex("matches", "!matches"),
        regex("split_matches", "!split_matches"),
        regex("split_", "!split_"),
        Wrapped {
            check: Some(("!walk", &[])),
            ..wrapped("debug_empty", "!debug_empty")
        },
        Wrapped {
            check: Some(("!walk", &[])),
            ..wrapped("stderr_empty", "!stderr_empty")
        },
    ]
}

impl Wrapped {
    fn def(&self) -> Def<&'static str> {
        let arg = |a: &'static str| -> T {
            if a.starts_with('$') {
                Term::Var(a)
            } else if self.walk_filters {
                walked(call(a, vec![]))
            } else {
                call(a, vec![])
            }
        };
        let mut body = call(self.raw, self.args.iter().map(|a| arg(a)).collect());
        if let Some((check, extra)) = self.check {
            let mut args: Vec<T> = self
                .args
                .iter()
                .filter(|a| a.starts_with('$'))
                .map(|a| Term::Var(*a))
                .collect();
            args.extend(extra.iter().cloned());
            body = pipe(call(check, args), body);
        }
        if self.walk_outputs {
            body = walked(body);
        }
        Def {
            name: self.name,
            args: self.args.to_vec(),
            body,
        }
    }
}

/// The checking definitions of the wrapped built-ins, then jaq's standard definitions
/// (which call them), rewritten. Built once.
pub(crate) fn prelude() -> Vec<Def<&'static str>> {
    static PRELUDE: std::sync::OnceLock<Vec<Def<&'static str>>> = std::sync::OnceLock::new();
    PRELUDE
        .get_or_init(|| {
            let standard = jaq_core::defs()
                .chain(jaq_std::defs())
                .chain(jaq_json::defs())
                .map(rewrite_def);
            wrappers()
                .iter()
                .map(Wrapped::def)
                .chain(standard)
                .collect()
        })
        .clone()
}

/// jaq's built-ins, the wrapped ones renamed, and the checks.
pub(crate) fn funs() -> impl Iterator<Item = Fun<Bounded>> {
    let wrapped = wrappers();
    let rename = move |(name, args, f): Fun<Bounded>| {
        let raw = wrapped
            .iter()
            .find(|w| w.name == name && w.args.len() == args.len())
            .map_or(name, |w| w.raw);
        (raw, args, f)
    };
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, args, _)| !(*name == "env" && args.is_empty()))
        .map(rename)
        .chain(checks())
        .chain([("env", v(0), Native::<Bounded>::new(no_env))])
}

/// jaq's `env` lists the process's environment, which holds the secrets the config reads
/// from `{ env = … }` references; a workflow's expressions must not reach them.
fn no_env(_: Cv<'_, Bounded>) -> Out<'_> {
    box_once(Err(fail(
        "`env` is not available: expressions see the run's context, not baton's environment \
         (it holds secrets); pass values through the event or a stage's outputs"
            .to_owned(),
    )))
}

fn checks() -> impl Iterator<Item = Fun<Bounded>> {
    let walk = Native::<Bounded>::new(|cv| pass(check_walk(&cv.1), cv.1))
        .with_paths(|cv| match check_walk(&cv.1.0) {
            Ok(()) => box_once(Ok(cv.1)),
            Err(e) => box_once(Err(e)),
        })
        .with_update(|cv, f| match check_walk(&cv.1) {
            Ok(()) => f(cv.1),
            Err(e) => box_once(Err(e)),
        });
    [
        ("!walk", v(0), walk),
        ("!mul", v(2), Native::<Bounded>::new(mul)),
        ("!sub", v(2), Native::<Bounded>::new(sub)),
        ("!div", v(2), Native::<Bounded>::new(div)),
        ("!reserve", v(1), Native::<Bounded>::new(reserve_by)),
        ("!check pairs", v(1), Native::<Bounded>::new(check_pairs)),
        ("!check sort", v(0), Native::<Bounded>::new(check_sort)),
        ("!check key", v(1), Native::<Bounded>::new(check_key)),
        ("!check regex", v(2), Native::<Bounded>::new(check_regex)),
        ("!check tojson", v(0), Native::<Bounded>::new(check_tojson)),
        (
            "!check fromjson",
            v(0),
            Native::<Bounded>::new(check_fromjson),
        ),
        ("!check format", v(1), Native::<Bounded>::new(check_format)),
    ]
    .into_iter()
}

type Out<'a> = ValXs<'a, Val>;

fn pass<'a>(check: Result<(), Exn<'a, Val>>, v: Val) -> Out<'a> {
    box_once(check.map(|()| v))
}

fn fail<'a>(message: String) -> Exn<'a, Val> {
    Exn::from(Error::str(message))
}

/// What walking a value found: its values (containers, keys and scalars) and string bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Weight {
    /// Arrays, objects, keys and scalars, counted as often as they are reached.
    pub(crate) values: u64,
    /// Bytes of the strings reached.
    pub(crate) bytes: u64,
}

impl Weight {
    /// The most bytes the value's JSON text can take: every string byte escaped
    /// (`\u0000`) and every other value as a long number with its separator.
    pub(crate) fn json_bytes(self) -> usize {
        let bytes = self
            .bytes
            .saturating_mul(6)
            .saturating_add(self.values.saturating_mul(26));
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// Walks `v` without recursion, charging a step a value and a step per 64 string bytes as
/// it goes (so a value whose shared parts make it huge stops the evaluation instead of
/// holding it). `Err` with the depth when it is nested deeper than [`MAX_VALUE_DEPTH`].
pub(crate) fn value_weight(v: &Val) -> Result<Weight, usize> {
    const BATCH: u64 = 1024;
    let mut weight = Weight::default();
    let mut unpaid = 0u64;
    let mut stack: Vec<(&Val, usize)> = vec![(v, 0)];
    while let Some((v, depth)) = stack.pop() {
        weight.values += 1;
        unpaid += 1;
        let container = |len: usize| {
            if len > 0 && depth >= MAX_VALUE_DEPTH {
                Err(depth + 1)
            } else {
                Ok(())
            }
        };
        match v {
            Val::Arr(items) => {
                container(items.len())?;
                stack.extend(items.iter().map(|x| (x, depth + 1)));
            }
            Val::Obj(map) => {
                container(map.len())?;
                for (k, x) in map.iter() {
                    stack.push((k, depth + 1));
                    stack.push((x, depth + 1));
                }
            }
            Val::TStr(b) | Val::BStr(b) => {
                weight.bytes += b.len() as u64;
                unpaid += b.len() as u64 / 64;
            }
            Val::Num(Num::Dec(d)) => weight.bytes += d.len() as u64,
            Val::Num(Num::BigInt(i)) => weight.bytes += i.bits() / 3,
            Val::Null | Val::Bool(_) | Val::Num(Num::Int(_) | Num::Float(_)) => {}
        }
        if unpaid >= BATCH {
            charge(unpaid);
            unpaid = 0;
        }
    }
    charge(unpaid);
    Ok(weight)
}

fn too_deep<'a>(depth: usize) -> Exn<'a, Val> {
    fail(format!(
        "a value nested {depth} levels deep is deeper than the {MAX_VALUE_DEPTH} levels an expression may compare, convert or parse"
    ))
}

fn weigh<'a>(v: &Val) -> Result<Weight, Exn<'a, Val>> {
    value_weight(v).map_err(too_deep)
}

fn check_walk<'a>(v: &Val) -> Result<(), Exn<'a, Val>> {
    weigh(v).map(drop)
}

fn str_len(v: &Val) -> Option<usize> {
    match v {
        Val::TStr(b) | Val::BStr(b) => Some(b.len()),
        _ => None,
    }
}

/// The repeat count of a string multiplication, as jaq reads it (integers only).
fn repeat_count(n: &Val) -> Option<usize> {
    match n {
        Val::Num(Num::Int(i)) => Some(usize::try_from(*i).unwrap_or(0)),
        Val::Num(Num::BigInt(_)) => Some(if *n < Val::from(0isize) {
            0
        } else {
            usize::MAX
        }),
        _ => None,
    }
}

/// `l * r`: a string repeated may not need more than the memory left; objects merged
/// deeply are walked first.
fn mul(mut cv: Cv<Bounded>) -> Out {
    let r = cv.0.pop_var();
    let l = cv.0.pop_var();
    let repeat = match (&l, &r) {
        (s, n) | (n, s) if str_len(s).is_some() => repeat_count(n).map(|n| (str_len(s), n)),
        _ => None,
    };
    if let Some((Some(len), n)) = repeat {
        let bytes = len.saturating_mul(n);
        reserve(bytes);
        charge(bytes as u64 / 64);
    } else if let (Val::Obj(_), Val::Obj(_)) = (&l, &r) {
        for v in [&l, &r] {
            if let Err(e) = check_walk(v) {
                return box_once(Err(e));
            }
        }
    }
    bome(l * r)
}

/// `l - r`: array subtraction compares every pair.
fn sub(mut cv: Cv<Bounded>) -> Out {
    let r = cv.0.pop_var();
    let l = cv.0.pop_var();
    if let (Val::Arr(a), Val::Arr(b)) = (&l, &r) {
        let pairs = (a.len() as u64).saturating_mul(b.len() as u64);
        charge(pairs);
        for v in [&l, &r] {
            if let Err(e) = check_walk(v) {
                return box_once(Err(e));
            }
        }
    }
    bome(l - r)
}

/// `l / r`: a string split makes up to one string per byte.
fn div(mut cv: Cv<Bounded>) -> Out {
    let r = cv.0.pop_var();
    let l = cv.0.pop_var();
    if let (Some(len), Some(_)) = (str_len(&l), str_len(&r)) {
        reserve(len.saturating_add(1).saturating_mul(SPLIT_PIECE));
        charge(len as u64);
    }
    bome(l / r)
}

/// Bytes one piece of a split string takes: its array slot and its string header.
const SPLIT_PIECE: usize = 64;

/// `!reserve(n)`: the input string may grow `n` times.
fn reserve_by(mut cv: Cv<Bounded>) -> Out {
    let factor = cv.0.pop_var();
    let n = repeat_count(&factor).unwrap_or(1);
    if let Some(len) = str_len(&cv.1) {
        reserve(len.saturating_mul(n));
        charge(len as u64 / 64);
    }
    box_once(Ok(cv.1))
}

/// `contains($x)`, `indices($x)`, `bsearch($x)`: every part of the input against every part of `$x`.
fn check_pairs(mut cv: Cv<Bounded>) -> Out {
    let x = cv.0.pop_var();
    let check = || {
        let a = weigh(&cv.1)?;
        let b = weigh(&x)?;
        let size = |w: Weight| w.values.saturating_add(w.bytes / 64).max(1);
        charge(size(a).saturating_mul(size(b)));
        // `indices` answers with up to one index per byte or element of the input.
        let len = str_len(&cv.1).map_or(a.values, |l| l as u64);
        reserve(usize::try_from(len.saturating_mul(16)).unwrap_or(usize::MAX));
        Ok(())
    };
    let result = check();
    pass(result, cv.1)
}

/// Sorting and friends: the elements are compared (walked) `n log n` times at most.
fn check_sort(cv: Cv<Bounded>) -> Out {
    let check = || {
        weigh(&cv.1)?;
        if let Val::Arr(items) = &cv.1 {
            let n = items.len() as u64;
            charge(n.saturating_mul(u64::from(64 - n.leading_zeros())));
        }
        Ok(())
    };
    let result = check();
    pass(result, cv.1)
}

/// `has($k)`: the key is hashed or compared.
fn check_key(mut cv: Cv<Bounded>) -> Out {
    let k = cv.0.pop_var();
    pass(check_walk(&k), cv.1)
}

/// Bytes one match of a regular expression takes in its answer, plus one capture group's.
const MATCH_BYTES: usize = 512;
const CAPTURE_BYTES: usize = 256;

/// Regular expressions: the search takes up to (pattern × input) work, and a global search
/// answers with up to one match per input byte.
fn check_regex(mut cv: Cv<Bounded>) -> Out {
    let flags = cv.0.pop_var();
    let re = cv.0.pop_var();
    if let (Some(len), Some(re_len)) = (str_len(&cv.1), str_len(&re)) {
        let global = matches!(&flags, Val::TStr(f) | Val::BStr(f) if f.contains(&b'g'));
        let groups = match &re {
            Val::TStr(b) | Val::BStr(b) => b.iter().filter(|c| **c == b'(').count(),
            _ => 0,
        };
        let per_match = MATCH_BYTES.saturating_add(groups.saturating_mul(CAPTURE_BYTES));
        let matches = if global { len.saturating_add(1) } else { 1 };
        reserve(matches.saturating_mul(per_match));
        charge((len as u64).saturating_mul(re_len as u64) / 64);
    }
    box_once(Ok(cv.1))
}

fn check_tojson(cv: Cv<Bounded>) -> Out {
    let result = weigh(&cv.1).map(|w| reserve(w.json_bytes()));
    pass(result, cv.1)
}

/// Bytes a parsed JSON value may take per byte of its text (`{}` is two bytes of text and
/// some 60 bytes of object).
const PARSED_PER_BYTE: usize = 32;

/// `fromjson`: the parser recurses once per nesting level, so deeper text is refused.
fn check_fromjson(cv: Cv<Bounded>) -> Out {
    let result = match &cv.1 {
        Val::TStr(b) | Val::BStr(b) => {
            let depth = text_depth(b);
            if depth > MAX_VALUE_DEPTH {
                Err(too_deep(depth))
            } else {
                reserve(b.len().saturating_mul(PARSED_PER_BYTE));
                charge(b.len() as u64 / 64);
                Ok(())
            }
        }
        _ => Ok(()),
    };
    pass(result, cv.1)
}

/// The deepest bracket nesting of JSON text, strings skipped.
fn text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &c in text {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Bytes a formatted date may take per byte of its format (`%c` is two bytes and some
/// thirty of text).
const FORMATTED_PER_BYTE: usize = 32;

fn check_format(mut cv: Cv<Bounded>) -> Out {
    let format = cv.0.pop_var();
    if let Some(len) = str_len(&format) {
        reserve(len.saturating_mul(FORMATTED_PER_BYTE));
        charge(len as u64 / 64);
    }
    box_once(Ok(cv.1))
}
