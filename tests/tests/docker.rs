//! Kill a real `baton run` with SIGKILL while a `docker` stage's container runs, then
//! resume: the same container is adopted (the engine's own event log shows one container
//! ever created for the attempt), its outputs are read, and no container is left.
//!
//! Needs the Docker engine of `BATON_DOCKER_HOST` and the busybox image of
//! `BATON_BUSYBOX_IMAGE` (`scripts/containers.sh` starts and loads them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_tests::{Sandbox, container_service, eventually};
use serde_json::{Value, json};

/// One `GET` of the engine's API over its unix socket, read to the end (HTTP/1.0, so the
/// answer is neither chunked nor kept open); the body.
fn engine_get(socket: &str, path_and_query: &str) -> String {
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot reach the Docker engine at {socket}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: docker\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}\n{body}"
    );
    body.to_owned()
}

fn query(value: &Value) -> String {
    form_encode(&value.to_string())
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The containers (any state) whose labels match every `key=value` of `labels`.
fn containers(socket: &str, labels: &[String]) -> Vec<Value> {
    let filters = json!({ "label": labels });
    let body = engine_get(
        socket,
        &format!("/containers/json?all=1&filters={}", query(&filters)),
    );
    serde_json::from_str::<Vec<Value>>(&body).unwrap()
}

#[test]
fn a_killed_run_adopts_its_running_container_and_leaves_none() {
    let host = container_service("BATON_DOCKER_HOST");
    let image = container_service("BATON_BUSYBOX_IMAGE");
    let socket = host
        .strip_prefix("unix://")
        .expect("BATON_DOCKER_HOST is a unix:// socket")
        .to_owned();
    let sb = Sandbox::new();
    // A stage id no other test (or earlier run of this one) uses, to find its container.
    let long = format!("long-{}-{}", std::process::id(), now());
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["wf.yaml"]

[store]
url = "sqlite://state/baton.db"

[adapters.local]
kind = "docker"
host = "{host}"
stop_grace = "1s"
"#
        ),
    );
    sb.write(
        "wf.yaml",
        &format!(
            r#"
name: containered
stages:
  first:
    uses: local
    with:
      image: {image}
      command: [sh, -c, 'echo "[COUT] token = t-42"']
  {long}:
    needs: [first]
    uses: local
    with:
      image: {image}
      input: {{ token: '${{{{ .stages.first.outputs.token }}}}' }}
      command: [sh, -c, 'echo started; sleep 3; echo "[COUT] got = $(cat)"; echo "{{\"file\": $CO_DATA}}" > "$BATON_OUTPUT"']
"#
        ),
    );
    let since = now() - 1;
    let mut child = sb
        .baton(&["run", "containered", "-c", "baton.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = [format!("baton.stage={long}")];
    eventually(
        Duration::from_secs(30),
        "the long stage's container runs",
        || {
            containers(&socket, &running)
                .iter()
                .any(|c| c["State"] == "running")
        },
    );
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let before = containers(&socket, &running);
    assert_eq!(before.len(), 1, "{before:#?}");
    assert_eq!(
        before[0]["State"], "running",
        "the container outlives baton"
    );

    let resumed = sb.run(&["resume", "-c", "baton.toml", "--json"]);
    assert!(
        resumed.code == Some(0),
        "resume failed:\n{}\n{}",
        resumed.stdout,
        resumed.stderr
    );
    let runs = resumed.json();
    let run = &runs[0];
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let stage = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == long.as_str())
        .unwrap();
    assert_eq!(stage["attempt"], 1);
    assert_eq!(
        stage["outputs"]["got"],
        json!({"token": "t-42"}),
        "{stage:#}"
    );
    assert_eq!(
        stage["outputs"]["file"],
        json!({"token": "t-42"}),
        "{stage:#}"
    );
    assert_eq!(stage["outputs"]["exit_code"], 0);

    // The engine's event log: one container ever created for the long stage of this run,
    // the one that ran before the kill.
    let run_id = run["id"].as_str().unwrap();
    let filters = json!({
        "type": ["container"],
        "event": ["create"],
        "label": [format!("baton.run={run_id}"), format!("baton.stage={long}")],
    });
    let events = engine_get(
        &socket,
        &format!(
            "/events?since={since}&until={}&filters={}",
            now() + 1,
            query(&filters)
        ),
    );
    let created: Vec<Value> = events
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0]["id"], before[0]["Id"]);
    let everything = containers(&socket, &[format!("baton.run={run_id}")]);
    assert_eq!(everything, Vec::<Value>::new(), "no container is left");
}
