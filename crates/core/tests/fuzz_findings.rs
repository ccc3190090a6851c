//! Inputs that break a check of the jq fuzz targets (`fuzz/`, see its README), kept as tests.
//!
//! Each of these inputs, evaluated as baton evaluates jq today, ends the process (an exit or a
//! stack overflow), so each test runs its inputs in a child process, which prints a line per
//! input it survived: a process that ends early cannot pass for a success.

use std::process::Command;

use baton_core::{Expr, TemplatedValue};
use serde_json::{Value, json};

/// Set in the child process a test starts.
const CHILD: &str = "BATON_TEST_FUZZ_CHILD";

/// True in the child process; in the parent, runs `test` again in a child and checks that it
/// printed `survived <label>` for every one of `labels`.
fn in_child(test: &str, labels: &[String]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--include-ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    for label in labels {
        assert!(
            out.contains(&format!("survived {label}\n")),
            "{label} ended the process ({}):\n{out}{err}",
            child.status
        );
    }
    false
}

/// Runs `program` on `input` on a thread with the 2 MiB stack of a tokio worker, where
/// `baton serve` evaluates triggers, `if:` and templates; an error is fine, an end of the
/// process is not.
fn evaluate_on_a_worker_stack(program: String, input: Value) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            if let Ok(expr) = Expr::compile(&program) {
                let _ = expr.eval_all(&input);
                let _ = expr.is_true_val(baton_core::expr::to_val(&input));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// `halt` and `halt_error` are jq's way to end the jq program. Evaluated the way jaq's own
/// command line does it, they end the process instead: one `if: halt` stops `baton serve`,
/// and the delivery that matched it stops the next start again.
#[test]
fn halt_is_an_error_of_its_expression_not_an_exit() {
    let programs = [
        "halt",
        "halt_error",
        "halt_error(3)",
        ".a | if . then halt else . end",
    ];
    let mut labels: Vec<String> = programs.iter().map(|p| format!("`{p}`")).collect();
    labels.push("the template".to_owned());
    if !in_child("halt_is_an_error_of_its_expression_not_an_exit", &labels) {
        return;
    }
    for (program, label) in programs.iter().zip(&labels) {
        let expr = Expr::compile(program).unwrap();
        let failed = expr.eval_all(&json!({"a": true})).unwrap_err();
        assert!(!failed.message.is_empty());
        let failed = expr
            .is_true_val(baton_core::expr::to_val(&json!({"a": true})))
            .unwrap_err();
        assert!(!failed.message.is_empty());
        println!("survived {label}");
    }
    // As template_render found it: a template in a stage's `with:`.
    let template = TemplatedValue::compile(&json!("Publish ba6 ${{halt_error}} (s")).unwrap();
    assert!(
        template
            .render(&baton_core::expr::to_val(&json!({})))
            .is_err()
    );
    println!("survived the template");
}

/// Long flat programs pass the compile-time nesting estimate, which counts neither path
/// steps, object fields nor string interpolations, but jaq evaluates each of them one stack
/// frame deeper than the last: a few thousand path steps, or a few hundred fields, overflow
/// a worker's stack and abort the process. Each must be refused when it loads or evaluate.
#[test]
fn long_flat_programs_are_refused_or_run_without_overflow() {
    let fields = |n: usize| (0..n).map(|i| format!("a{i}: 1")).collect::<Vec<_>>();
    let cases = [
        ("5000 path steps", ".a".repeat(5000), json!({"a": {"a": 1}})),
        (
            "5000 indexes",
            format!(".{}", "[0]".repeat(5000)),
            json!([[0]]),
        ),
        (
            "5000 slices",
            format!(".{}", "[1:]".repeat(5000)),
            json!([1, 2, 3]),
        ),
        (
            "1000 fields",
            format!("{{{}}}", fields(1000).join(", ")),
            json!({}),
        ),
        (
            "1000 interpolations",
            format!("\"{}\"", "x\\(.)".repeat(1000)),
            json!(1),
        ),
    ];
    let labels: Vec<String> = cases.iter().map(|(l, ..)| (*l).to_owned()).collect();
    if !in_child(
        "long_flat_programs_are_refused_or_run_without_overflow",
        &labels,
    ) {
        return;
    }
    for (label, program, input) in cases {
        evaluate_on_a_worker_stack(program, input);
        println!("survived {label}");
    }
}
