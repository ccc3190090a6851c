//! The stage's `with:` block: `run` or `command`, `env`, `input`, `workdir`.

use std::path::PathBuf;

use baton_core::FieldError;
use serde_json::{Map, Value};

/// Variables baton sets itself; a stage may not override them, or a command could be told
/// to write its outputs somewhere baton never reads.
pub const RESERVED_ENV: [&str; 5] = [
    "BATON_INPUT",
    "BATON_OUTPUT",
    "BATON_RUN_ID",
    "BATON_STAGE",
    "BATON_ATTEMPT",
];

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Program {
    /// A script for `sh -c`.
    Shell(String),
    /// An argv, run without a shell.
    Argv(Vec<String>),
}

impl Program {
    /// The argv that runs this program.
    pub(crate) fn argv(&self) -> Vec<String> {
        match self {
            // An absolute path, so that a stage `env` replacing `PATH` cannot hide the shell.
            Self::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecSpec {
    /// What to run.
    pub program: Program,
    /// Extra environment variables, values already turned into text.
    pub env: Vec<(String, String)>,
    /// The JSON handed to the command; `null` when absent.
    pub input: Value,
    /// Where to run; baton's working directory when absent.
    pub workdir: Option<PathBuf>,
}

/// Whether template strings may stand where another type is expected.
pub(crate) use baton_core::adapter::InputMode as Mode;

fn is_template(mode: Mode, text: &str) -> bool {
    mode.is_template(text)
}

/// Checks a `with:` block, returning the spec or every problem.
///
/// In [`Mode::Templates`] the returned spec may hold placeholders where templates stand; only
/// the errors are meant to be used.
pub(crate) fn parse(with: &Value, mode: Mode) -> Result<ExecSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let empty = Map::new();
    let map = match with {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => {
            return Err(vec![FieldError::new(
                "",
                "expected a table with `run` (a shell script) or `command` (an argv list)",
            )]);
        }
    };
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "run" | "command" | "env" | "input" | "workdir"
        ) {
            errors.push(FieldError::new(
                key,
                "unknown key: exec takes `run` or `command`, and `env`, `input`, `workdir`",
            ));
        }
    }

    let program = match (map.get("run"), map.get("command")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "command",
                "give `run` (a shell script) or `command` (an argv list), not both",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                "run",
                "missing: give `run` (a shell script) or `command` (an argv list)",
            ));
            None
        }
        (Some(run), None) => parse_run(run, &mut errors),
        (None, Some(command)) => parse_command(command, mode, &mut errors),
    };
    let env = map
        .get("env")
        .map(|env| parse_env(env, mode, &mut errors))
        .unwrap_or_default();
    let workdir = match map.get("workdir") {
        None | Some(Value::Null) => None,
        Some(Value::String(dir)) if !dir.is_empty() && !dir.contains('\0') => {
            Some(PathBuf::from(dir))
        }
        Some(_) => {
            errors.push(FieldError::new(
                "workdir",
                "expected a directory path as a non-empty string",
            ));
            None
        }
    };
    let input = map.get("input").cloned().unwrap_or(Value::Null);

    match program {
        Some(program) if errors.is_empty() => Ok(ExecSpec {
            program,
            env,
            input,
            workdir,
        }),
        _ => Err(errors),
    }
}

fn parse_run(run: &Value, errors: &mut Vec<FieldError>) -> Option<Program> {
    match run {
        Value::String(script) if script.trim().is_empty() => {
            errors.push(FieldError::new("run", "the script is empty"));
            None
        }
        Value::String(script) if script.contains('\0') => {
            errors.push(FieldError::new("run", "the script contains a NUL byte"));
            None
        }
        Value::String(script) => Some(Program::Shell(script.clone())),
        _ => {
            errors.push(FieldError::new(
                "run",
                "expected a shell script as a string (use `command` for an argv list)",
            ));
            None
        }
    }
}

/// Numbers and booleans are accepted as arguments because YAML turns `[sleep, 5]` into one.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_command(command: &Value, mode: Mode, errors: &mut Vec<FieldError>) -> Option<Program> {
    match command {
        // A whole-string template may render to the argv list.
        Value::String(text) if is_template(mode, text) => Some(Program::Argv(Vec::new())),
        Value::Array(items) if items.is_empty() => {
            errors.push(FieldError::new(
                "command",
                "the argv list is empty: give at least the program",
            ));
            None
        }
        Value::Array(items) => {
            let mut argv = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match scalar_text(item) {
                    Some(arg) if arg.contains('\0') => errors.push(FieldError::new(
                        format!("command[{i}]"),
                        "an argument contains a NUL byte",
                    )),
                    Some(arg) if i == 0 && arg.is_empty() => {
                        errors.push(FieldError::new("command[0]", "the program name is empty"));
                    }
                    Some(arg) => argv.push(arg),
                    None => errors.push(FieldError::new(
                        format!("command[{i}]"),
                        "expected a string, number or boolean argument",
                    )),
                }
            }
            Some(Program::Argv(argv))
        }
        _ => {
            errors.push(FieldError::new(
                "command",
                "expected an argv list such as [cargo, test] (use `run` for a shell script)",
            ));
            None
        }
    }
}

fn parse_env(env: &Value, mode: Mode, errors: &mut Vec<FieldError>) -> Vec<(String, String)> {
    let map = match env {
        Value::Object(map) => map,
        Value::Null => return Vec::new(),
        Value::String(text) if is_template(mode, text) => return Vec::new(),
        _ => {
            errors.push(FieldError::new(
                "env",
                "expected a table of variable names to strings, numbers or booleans",
            ));
            return Vec::new();
        }
    };
    let mut vars = Vec::with_capacity(map.len());
    for (name, value) in map {
        let path = format!("env.{name}");
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            errors.push(FieldError::new(
                path,
                "not a valid variable name (empty, or holds `=` or NUL)",
            ));
            continue;
        }
        if RESERVED_ENV.contains(&name.as_str()) {
            errors.push(FieldError::new(
                path,
                "this variable is set by baton itself",
            ));
            continue;
        }
        match scalar_text(value) {
            Some(text) if text.contains('\0') => {
                errors.push(FieldError::new(path, "the value contains a NUL byte"));
            }
            Some(text) => vars.push((name.clone(), text)),
            None => errors.push(FieldError::new(
                path,
                "expected a string, number or boolean",
            )),
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(with: Value, mode: Mode) -> Vec<String> {
        parse(&with, mode)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn accepts_run_or_command_with_options() {
        let spec = parse(
            &json!({"run": "echo hi", "env": {"A": "x", "N": 3, "B": true}, "input": {"k": [1]}, "workdir": "/tmp"}),
            Mode::Rendered,
        )
        .unwrap();
        assert_eq!(spec.program, Program::Shell("echo hi".into()));
        assert_eq!(
            spec.env,
            [
                ("A".into(), "x".into()),
                ("N".into(), "3".into()),
                ("B".into(), "true".into())
            ]
        );
        assert_eq!(spec.input, json!({"k": [1]}));
        assert_eq!(spec.workdir, Some(PathBuf::from("/tmp")));

        let spec = parse(&json!({"command": ["sleep", 5]}), Mode::Rendered).unwrap();
        assert_eq!(spec.program.argv(), ["sleep", "5"]);
        assert_eq!(spec.input, Value::Null);
    }

    #[test]
    fn exactly_one_program() {
        assert_eq!(paths(json!({}), Mode::Rendered), ["run"]);
        assert_eq!(paths(Value::Null, Mode::Rendered), ["run"]);
        assert_eq!(
            paths(json!({"run": "x", "command": ["x"]}), Mode::Rendered),
            ["command"]
        );
        assert_eq!(paths(json!(["x"]), Mode::Rendered), [""]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let got = paths(
            json!({"command": [["nested"], ""], "env": {"BATON_INPUT": "x", "A=B": "y", "C": null}, "workdir": 3, "extra": 1}),
            Mode::Templates,
        );
        assert_eq!(
            got,
            [
                "extra",
                "command[0]",
                "env.BATON_INPUT",
                "env.A=B",
                "env.C",
                "workdir"
            ]
        );
        assert_eq!(paths(json!({"run": "  "}), Mode::Rendered), ["run"]);
        assert_eq!(paths(json!({"run": ["ls"]}), Mode::Rendered), ["run"]);
        assert_eq!(
            paths(json!({"command": "ls -l"}), Mode::Templates),
            ["command"]
        );
        assert_eq!(paths(json!({"command": []}), Mode::Rendered), ["command"]);
    }

    #[test]
    fn templates_stand_for_any_type_only_before_rendering() {
        let with =
            json!({"command": "${{ .stages.plan.outputs.argv }}", "env": "${{ .event.env }}"});
        assert!(parse(&with, Mode::Templates).is_ok());
        assert_eq!(paths(with, Mode::Rendered), ["command", "env"]);
    }
}
