//! Expressions that never end, recurse without end, or ask for huge values stop with an
//! error naming the bound, within their bounds, and the process goes on.

use std::time::{Duration, Instant};

use baton_core::Expr;
use baton_core::expr_bound::{Limits, MeteredAlloc, run_blocking};
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: MeteredAlloc = MeteredAlloc::new(std::alloc::System);

/// Runs `code` on `null` under `limits`; the error message, and how long it took.
fn fail_with(code: &str, limits: Limits) -> (String, Duration) {
    let expr = Expr::compile(code).unwrap_or_else(|e| panic!("{code}: {e}"));
    let started = Instant::now();
    let result = run_blocking(limits, move |_| expr.eval_all(&Value::Null)).unwrap();
    let took = started.elapsed();
    match result {
        Ok(out) => panic!("`{code}` gave {out:?}, expected an error"),
        Err(e) => {
            assert_eq!(e.source_text, code);
            (e.message, took)
        }
    }
}

/// The error of `code` under the default bounds, but for time: debug builds run jaq some
/// ten times slower than release ones, so a million steps may take longer than a second.
fn fails(code: &str) -> String {
    let limits = Limits {
        max_time: Duration::from_secs(60),
        ..Limits::default()
    };
    let (message, took) = fail_with(code, limits);
    assert!(took < Duration::from_secs(30), "`{code}` took {took:?}");
    format!("`{code}`: {message}")
}

fn assert_contains(message: &str, part: &str) {
    assert!(message.contains(part), "expected `{part}` in {message}");
}

const STEPS: &str = "stopped after 1000000 steps (expressions.max_steps)";
const MEMORY: &str = "needs more than 64 MiB of memory (expressions.max_memory)";

#[test]
fn endless_loops_stop_after_max_steps() {
    for code in [
        "def f: f; f",
        "def f(x): f(x + 1); f(0)",
        "[limit(1e9; repeat(1))]",
        "reduce range(1e9) as $x (0; .+1)",
        "last(range(1e9))",
        "[range(1e9)] | length > 0",
        "until(false; .)",
        "[recurse(. + 1)] | length",
        "first(range(1e9) | select(. < 0))",
    ] {
        assert_contains(&fails(code), STEPS);
    }
}

#[test]
fn endless_recursion_stops_before_the_stack_runs_out() {
    for code in [
        "def f: [f]; f",
        "def f: {a: f}; f",
        "def f: 1 + f; f",
        "def f: (f | .); [f]",
    ] {
        let message = fails(code);
        assert!(
            message.contains("recursed deeper than 8 MiB of stack allows")
                || message.contains(STEPS),
            "{code}: {message}"
        );
    }
}

#[test]
fn time_is_bounded_on_its_own() {
    let limits = Limits {
        max_steps: u64::MAX,
        max_time: Duration::from_millis(200),
        ..Limits::default()
    };
    let (message, took) = fail_with("def f: f; f", limits);
    assert_contains(&message, "stopped after 200ms (expressions.max_time)");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn growing_values_stop_at_max_memory() {
    let limits = Limits {
        max_steps: u64::MAX,
        max_time: Duration::from_secs(120),
        ..Limits::default()
    };
    for code in [
        "[range(1e9)] | length > 0",
        "[limit(1e9; repeat(\"x\"))] | length",
        "reduce range(40) as $x (\"x\"; . + .)",
    ] {
        let (message, _) = fail_with(code, limits);
        assert_contains(&message, MEMORY);
    }
}

#[test]
fn one_operation_that_would_need_huge_memory_is_refused_before_it_runs() {
    for code in [
        r#""x" * 10000000000"#,
        r#"10000000000 * "ab""#,
        r#""x" * 100000000000000000000000"#,
        r#"{a: "x"} | .a *= 10000000000"#,
        r#""x" * 10000000 | . / """#,
        r#""x" * 10000000 | explode"#,
        r#""x" * 10000000 | [match(""; "g")]"#,
        r#""x" * 10000000 | gsub(""; "y")"#,
        r#""<" * 20000000 | @html"#,
        r#""[1]," * 3000000 | "[\(.)1]" | fromjson"#,
    ] {
        assert_contains(&fails(code), MEMORY);
    }
}

#[test]
fn indexes_far_out_of_range_are_errors() {
    for code in [
        ".[1e9] = 1",
        "[] | .[1000000000] = 1",
        "null | setpath([1e9]; 1)",
        "[] | setpath([1000000000]; 1)",
        "[1] | .[-1000000000] = 1",
    ] {
        let message = fails(code);
        assert!(!message.contains("stopped"), "{code}: {message}");
    }
}

/// `[., .]` repeated shares its halves: 60 rounds are a few hundred bytes in memory and
/// 2^60 values when walked.
const SHARED: &str = "(reduce range(60) as $x (0; [., .]))";

#[test]
fn values_that_are_huge_when_walked_stop_after_max_steps() {
    for code in [
        format!("{SHARED} | tostring"),
        format!("{SHARED} | tojson"),
        format!("\"\\({SHARED})\""),
        format!("{SHARED} | @json"),
        format!("{SHARED} | @base64"),
        format!("{SHARED} | [..] | length"),
        format!("{SHARED} | [paths] | length"),
        format!("{SHARED} | flatten | length"),
        format!("{SHARED} as $a | {SHARED} as $b | $a == $b"),
        format!("{SHARED} as $a | [$a, $a] | sort | length"),
        format!("{SHARED} as $a | [$a] | unique | length"),
        format!("{SHARED} as $a | [$a] | contains([$a])"),
        format!("{SHARED} | {{(.): 1}}"),
        format!("{{}} | .[{SHARED}]"),
        format!("{SHARED} | walk(.)"),
        "[range(100000)] as $a | $a - $a".to_owned(),
        SHARED.to_owned(),
    ] {
        assert_contains(&fails(&code), STEPS);
    }
}

#[test]
fn errors_that_show_a_huge_value_are_cut() {
    let message = fails(&format!("{SHARED} | error"));
    assert!(message.len() < 1100, "{} bytes", message.len());
    assert!(message.ends_with('…'), "{message}");
}

#[test]
fn deeply_nested_values_are_refused_where_they_would_be_walked() {
    let deep = "(reduce range(20000) as $x (null; [.]))";
    for code in [
        format!("{deep} | tostring"),
        format!("{deep} | tojson"),
        format!("{deep} == {deep}"),
        format!("{deep} | [..] | length"),
        deep.to_owned(),
        "\"[\" * 100000 | fromjson".to_owned(),
    ] {
        assert_contains(&fails(&code), "deeper than the 10000 levels");
    }
    // As deep as the steps allow: built, then dropped, without overflowing the stack.
    let code = "reduce range(1e9) as $x (null; [.]) | length";
    assert_contains(&fails(code), STEPS);
    let code = "reduce range(1e9) as $x (null; {a: .}) | length";
    assert_contains(&fails(code), STEPS);
}

#[test]
fn halt_ends_the_expression_not_the_process() {
    for code in ["halt", "halt_error", "\"bye\" | halt_error(1)", "[1, halt]"] {
        assert_contains(&fails(code), "called `halt`");
    }
}

#[test]
fn expressions_cannot_read_batons_environment() {
    // The process's environment holds the secrets `{ env = … }` references name.
    assert!(std::env::var_os("PATH").is_some());
    for code in ["env", "env.PATH", "env | keys", "[env] | length"] {
        assert_contains(&fails(code), "`env` is not available");
    }
}

#[test]
fn a_stopped_evaluation_leaves_the_next_one_unharmed() {
    fails("def f: f; f");
    fails(r#""x" * 10000000000"#);
    let expr = Expr::compile("[range(10)] | add").unwrap();
    assert_eq!(expr.eval_all(&json!(null)).unwrap(), vec![json!(45)]);
}
