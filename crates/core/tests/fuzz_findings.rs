//! Inputs that break a check of the jq fuzz targets (`fuzz/`, see its README), kept as tests.

use std::process::Command;

use baton_core::Expr;
use serde_json::json;

/// Set in the child process that [`halt_is_an_error_of_its_expression_not_an_exit`] starts.
const CHILD: &str = "BATON_TEST_HALT_CHILD";

/// `halt` and `halt_error` are jq's way to end the jq program. Evaluated the way jaq's own
/// command line does it, they end the process instead: one `if: halt` stops `baton serve`,
/// and the delivery that matched it stops the next start again. The expressions run in a
/// child process, so that an exit cannot pass for a success.
#[test]
#[ignore = "issue 19 item 1: a jq expression ends the process with `halt`"]
fn halt_is_an_error_of_its_expression_not_an_exit() {
    let programs = [
        "halt",
        "halt_error",
        "halt_error(3)",
        ".a | if . then halt else . end",
    ];
    if std::env::var_os(CHILD).is_some() {
        for program in programs {
            let expr = Expr::compile(program).unwrap();
            let failed = expr.eval_all(&json!({"a": true})).unwrap_err();
            assert!(!failed.message.is_empty());
            let failed = expr
                .is_true_val(baton_core::expr::to_val(&json!({"a": true})))
                .unwrap_err();
            println!("survived `{program}`: {}", failed.message);
        }
        return;
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "halt_is_an_error_of_its_expression_not_an_exit",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    for program in programs {
        assert!(
            out.contains(&format!("survived `{program}`")),
            "`{program}` ended the process ({}):\n{out}{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
    }
}
