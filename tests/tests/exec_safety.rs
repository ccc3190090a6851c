//! What event data and baton's environment can do to `exec` commands, end to end: a signed
//! push whose branch name is a shell command substitution reaches the script as text, and
//! commands never see the variables the config reads secrets from.

use baton_tests::Sandbox;
use serde_json::{Value, json};

const GH_SECRET: &str = "gh-secret-value-1";
const OPS_TOKEN: &str = "ops-token-value-2";
const VIEWER_TOKEN: &str = "viewer-token-value-3";
const HOSTILE_REF: &str = "refs/heads/$(echo${IFS}x:$GH_SECRET:$OPS_TOKEN)";
const HOSTILE_MESSAGE: &str = "it's \"fixed\"\n$(cat /etc/hostname) `id`; touch pwned #";

fn gateway(sb: &Sandbox) -> String {
    sb.write("viewer.token", VIEWER_TOKEN);
    sb.write(
        "baton.toml",
        r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [
  { name = "ops", token = { env = "OPS_TOKEN" }, role = "operator" },
  { name = "vera", token = { file = "viewer.token" }, role = "viewer" },
]

[sources.github]
kind = "github"
secret = { env = "GH_SECRET" }

[adapters.exec]
kind = "exec"
inherit_env = ["EXTRA_VISIBLE", "GH_SECRET"]

[adapters.wide]
kind = "exec"
inherit_env = true
"#,
    );
    sb.write(
        "workflows/push.yaml",
        r#"
name: pushes
on: [{ source: github, event: push }]
stages:
  show:
    uses: exec
    with:
      run: |
        echo "[COUT] ref = ${{ .event.ref }}"
        echo [COUT] bare = ${{ .event.ref }}
        echo '[COUT] single = ${{ .event.ref }}'
        printf '%s' ${{ .event.head_commit.message }} > message.txt
        # the message was ${{ .event.head_commit.message }}
        echo "[COUT] via_env = $REF"
      env: { REF: '${{ .event.ref }}' }
  listed:
    uses: exec
    with: { run: 'env > env-listed.txt' }
  everything:
    uses: wide
    with: { run: 'env > env-all.txt' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

const ENV: &[(&str, &str)] = &[
    ("GH_SECRET", GH_SECRET),
    ("OPS_TOKEN", OPS_TOKEN),
    ("EXTRA_VISIBLE", "yes-visible"),
    ("NOT_LISTED", "not-listed"),
];

fn names(env_file: &str) -> Vec<&str> {
    env_file
        .lines()
        .filter_map(|l| l.split_once('=').map(|(name, _)| name))
        .collect()
}

#[test]
fn a_hostile_push_reaches_the_script_as_text_and_commands_never_see_secrets() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let push = json!({
        "ref": HOSTILE_REF,
        "head_commit": { "message": HOSTILE_MESSAGE },
    })
    .to_string();
    assert_eq!(
        server
            .github("github", GH_SECRET, "push", "d-1", &push)
            .status,
        202
    );

    let runs = server.wait_for(
        "/api/v1/runs?workflow=pushes",
        VIEWER_TOKEN,
        "the push's run to finish",
        |r| r["runs"][0]["status"] == "succeeded" || r["runs"][0]["status"] == "failed",
    );
    let id = runs["runs"][0]["id"].as_str().unwrap().to_owned();
    let reply = server.get(&format!("/api/v1/runs/{id}"), VIEWER_TOKEN);
    let run = reply.json();
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    let show = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "show")
        .cloned()
        .unwrap_or(Value::Null);
    for key in ["ref", "bare", "single", "via_env"] {
        assert_eq!(show["outputs"][key], HOSTILE_REF, "{key}: {show:#}");
    }
    assert_eq!(sb.read("message.txt"), HOSTILE_MESSAGE);
    assert!(!sb.path().join("pwned").exists());
    // Any viewer can read a run: no secret may be in it.
    for secret in [GH_SECRET, OPS_TOKEN, VIEWER_TOKEN] {
        assert!(!reply.body.contains(secret), "{secret} in {}", reply.body);
    }

    let listed = sb.read("env-listed.txt");
    assert!(listed.contains("EXTRA_VISIBLE=yes-visible\n"), "{listed}");
    assert!(listed.contains("PATH="), "{listed}");
    assert!(listed.contains("BATON_RUN_ID="), "{listed}");
    let all = sb.read("env-all.txt");
    assert!(all.contains("NOT_LISTED=not-listed\n"), "{all}");
    assert!(all.contains("EXTRA_VISIBLE=yes-visible\n"), "{all}");
    for (file, text) in [("env-listed.txt", &listed), ("env-all.txt", &all)] {
        let names = names(text);
        for hidden in ["GH_SECRET", "OPS_TOKEN"] {
            assert!(!names.contains(&hidden), "{hidden} in {file}:\n{text}");
        }
        for secret in [GH_SECRET, OPS_TOKEN] {
            assert!(!text.contains(secret), "{secret} in {file}:\n{text}");
        }
    }
    assert!(
        !names(&listed).contains(&"NOT_LISTED"),
        "an unlisted variable passed:\n{listed}"
    );
    assert!(
        server
            .log()
            .contains("inherit_env names a variable the config reads a secret from"),
        "{}",
        server.log()
    );
}

#[test]
fn a_lone_run_quotes_too_and_an_override_widens_its_environment() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        r#"
name: lone
stages:
  show:
    uses: exec
    with:
      run: |
        echo "[COUT] ref = ${{ .event.ref }}"
        env > env.txt
"#,
    );
    sb.write("event.json", &json!({ "ref": HOSTILE_REF }).to_string());
    let out = sb.run(&["run", "wf.yaml", "--event", "event.json", "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stage("show")["outputs"]["ref"], HOSTILE_REF);
    // `SANDBOX` is set for baton by the harness; without a config it stays out.
    assert!(!names(&sb.read("env.txt")).contains(&"SANDBOX"));

    let out = sb
        .baton(&["run", "wf.yaml", "--event", "event.json", "--json"])
        .env("BATON_ADAPTERS__EXEC__KIND", "exec")
        .env("BATON_ADAPTERS__EXEC__INHERIT_ENV", "[\"SANDBOX\"]")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(names(&sb.read("env.txt")).contains(&"SANDBOX"));
}

#[test]
fn a_template_where_no_quoting_is_safe_is_refused_when_the_workflow_loads() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        "name: heredoc\nstages:\n  s:\n    uses: exec\n    with:\n      run: |\n        cat <<EOF\n        ${{ .event.ref }}\n        EOF\n",
    );
    let out = sb.run(&["validate", "wf.yaml"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("stages.s.with.run")
            && out.stdout.contains("here-document")
            && out.stdout.contains("env:"),
        "{}",
        out.stdout
    );
}
