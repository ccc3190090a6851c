//! The bounded evaluation rewrites every program and wraps built-ins with checks; for
//! ordinary expressions the answers are jaq's own, compared here with jaq run directly.

use baton_core::Expr;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::{Value, json};

/// `code` on `input` with plain jaq: its outputs as JSON, or its error text.
fn plain(code: &str, input: &Value) -> Result<Vec<Value>, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .unwrap_or_else(|_| panic!("{code} parses"));
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .unwrap_or_else(|_| panic!("{code} compiles"));
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let input: Val = serde_json::from_value(input.clone()).unwrap();
    let mut out = Vec::new();
    for v in filter.id.run((ctx, input)).map(unwrap_valr) {
        match v {
            Ok(v) => out.push(serde_json::from_str(&v.to_string()).unwrap()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

fn bounded(code: &str, input: &Value) -> Result<Vec<Value>, String> {
    Expr::compile(code)
        .unwrap_or_else(|e| panic!("{e}"))
        .eval_all(input)
        .map_err(|e| e.message)
}

#[test]
fn answers_are_jaqs() {
    let input = json!({
        "a": 3, "b": [3, 1, 2, 1], "s": "a,b,c", "o": {"x": {"y": 1}, "z": [1, {"w": 2}]},
        "people": [{"n": "bo", "age": 30}, {"n": "al", "age": 25}, {"n": "cy", "age": 30}],
        "text": "The quick brown fox", "k": "x", "n": null
    });
    let cases = [
        ".a * 2",
        "2 * .a",
        ".s * 3",
        "3 * .s",
        ".s * 0",
        "{a: {b: 1}} * {a: {c: 2}}",
        ".a - 1",
        ".b - [1]",
        ".a / 2",
        ".s / \",\"",
        ".s / \"\"",
        ".a % 2",
        ".a *= 2",
        ".b[] -= 1",
        ".a /= 2",
        ".o.x.y += 1",
        ".n //= 5",
        ".a == 3",
        ".b != [1]",
        ".o < .b",
        "[.b[] | . >= 2]",
        ".o == .o",
        "\"n=\\(.a), b=\\(.b)\"",
        "@base64 \"x\\(.a)\"",
        "@json \"v: \\(.o)\"",
        "@text",
        "tostring",
        "tojson",
        "tojson | fromjson",
        ".o | @html",
        ".s | @uri",
        ".b | @sh",
        ".s | @base64 | @base64d",
        "[.b[] | tostring] | join(\"-\")",
        "[..]",
        "[paths]",
        "[paths(type == \"number\")]",
        "path(..)",
        "walk(if type == \"number\" then . + 1 else . end)",
        "(.. | numbers) |= . * 10",
        ".o | to_entries",
        ".o | with_entries(.value |= tostring)",
        "{(.k): .a}",
        "{a, (.s): 1, \"lit\": 2}",
        ". as {a: $x, (.k): $y} | [$x, $y]",
        ".o | keys",
        ".o | has(\"x\")",
        "\"x\" | in({x: 1})",
        ".b | index(1)",
        ".b | indices(1)",
        ".s | indices(\",\")",
        ".b | contains([1, 2])",
        "[1] | inside([1, 2])",
        ".b | sort",
        ".people | sort_by(.age)",
        ".people | group_by(.age)",
        ".people | unique_by(.age)",
        ".people | min_by(.age)",
        ".people | max_by(.n)",
        ".b | unique",
        ".b | min",
        ".b | max",
        ".b | sort | bsearch(2)",
        ".text | test(\"quick\")",
        ".text | [match(\"o\"; \"g\") | .offset]",
        ".text | capture(\"(?<first>\\\\w+)\")",
        ".text | sub(\"o\"; \"0\")",
        ".text | gsub(\"o\"; \"0\")",
        ".text | [splits(\" \")]",
        ".text | split(\" +\"; null)",
        ".text | ascii_downcase",
        ".text | explode | implode",
        ".text | ltrimstr(\"The \")",
        "[range(5)]",
        "[range(1; 10; 3)]",
        "[range(5; 0; -2)]",
        "[limit(3; repeat(1))]",
        "first(range(10; 20))",
        "[.b[] | select(. > 1)]",
        "[recurse(if . < 3 then . + 1 else empty end)]",
        "0 | [while(. < 3; . + 1)]",
        "0 | until(. > 3; . + 1)",
        ".b | add",
        ".b | any(. > 2)",
        ".b | all(. > 0)",
        ".o | getpath([\"x\", \"y\"])",
        "setpath([\"q\"]; 1) | .q",
        "delpaths([[\"a\"], [\"b\"]]) | keys",
        "del(.o) | keys",
        ".o | [paths] | length",
        "[.b[] | try error(\"x\") catch .]",
        "try error({a: 1}) catch .a",
        ".b | flatten",
        "[[1, [2]], 3] | flatten(1)",
        "reduce .b[] as $x (0; . + $x)",
        "[foreach .b[] as $x (0; . + $x)]",
        "label $out | .b[] | if . == 2 then break $out else . end",
        "def f(x): x * 2; f(.a)",
        "def fact: if . <= 1 then 1 else . * (. - 1 | fact) end; 10 | fact",
        "1700000000 | todate",
        "1700000000 | strftime(\"%Y-%m-%d\")",
        "\"2023-11-14T22:13:20Z\" | fromdate",
        "[.b[] | tostring | tonumber]",
        ".b | length",
        ".s | length",
        ".o | length",
        ".b | reverse",
        ".text | ascii_upcase | explode | length",
        "[splits(\"a\")]",
        "getpath([\"nope\", 1])",
        "[.[] | numbers]",
        "[.b[] as [$x] | $x]",
        ".b | transpose?",
        ".b | combinations? ",
        "[[1, 2], [3]] | [combinations]",
        "{} | .a.b.c = 1",
    ];
    let mut differ = Vec::new();
    for code in cases {
        let expected = plain(code, &input);
        let got = bounded(code, &input);
        let same = match (&expected, &got) {
            (Ok(e), Ok(g)) => e == g,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !same {
            differ.push(format!("{code}: jaq {expected:?}, bounded {got:?}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
