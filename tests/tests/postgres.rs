//! `baton serve` and `baton run` on PostgreSQL: deliveries stored and matched, a redelivery
//! to a second replica refused as a duplicate, and the database going away under a running
//! replica (503, unready, still up, back by itself) or missing at its start (a one-line
//! error naming the host). Each test has a database of its own on the server at
//! `$BATON_TEST_POSTGRES` (127.0.0.1:5432 by default), so they run in parallel.

use std::time::{Duration, Instant};

use baton_tests::postgres::{Database, Proxy};
use baton_tests::{Sandbox, Server, alive, eventually};
use serde_json::Value;

const OPERATOR: &str = "oper-token-2";
const SECRET: &str = "hook-secret";
const ENV: &[(&str, &str)] = &[("T_OPERATOR", OPERATOR), ("GH_SECRET", SECRET)];
const PUSH: &str = r#"{"ref": "refs/heads/main", "after": "abc"}"#;

/// A gateway on `store_url` with a github source whose pushes run one exec stage.
fn gateway(sb: &Sandbox, store_url: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"workflows = ["workflows/*.yaml"]

[store]
url = "{store_url}"
lease = "5s"

[api]
tokens = [{{ name = "otto", token = {{ env = "T_OPERATOR" }}, role = "operator" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
"#
        ),
    );
    sb.write(
        "workflows/build.yaml",
        r#"
name: build
on: [{ source: github, event: push }]
stages:
  build:
    uses: exec
    with:
      run: 'echo "[COUT] ref = $REF"'
      env: { REF: '${{ .event.ref }}' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// Sends a push with delivery id `delivery`, expects `status`, and returns the stored id.
fn push(server: &Server, delivery: &str, status: u16) -> i64 {
    let reply = server.github("github", SECRET, "push", delivery, PUSH);
    assert_eq!(reply.status, status, "{reply:?}\n{}", server.log());
    reply.json()["delivery"]
        .as_i64()
        .unwrap_or_else(|| panic!("no delivery id in {reply:?}"))
}

/// Waits until delivery `id` was processed and the one run it started succeeded.
fn processed_and_built(server: &Server, id: i64) -> Value {
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        OPERATOR,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    );
    let runs = stored["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "one run: {stored:#}");
    let run = server.run_ended(runs[0].as_str().expect("a run id"), OPERATOR);
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    assert_eq!(run["stages"][0]["outputs"]["ref"], "refs/heads/main");
    run
}

fn runs(server: &Server) -> Vec<Value> {
    let reply = server.get("/api/v1/runs?workflow=build", OPERATOR);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["runs"].as_array().cloned().unwrap_or_default()
}

fn ready(server: &Server) -> u16 {
    server.request("GET", "/readyz", &[], None).status
}

#[test]
fn a_webhook_is_stored_and_its_run_finishes() {
    let db = Database::new();
    let sb = Sandbox::new();
    let config = gateway(&sb, &db.url());
    let server = sb.serve(&config, ENV);
    assert_eq!(ready(&server), 200, "{}", server.log());

    let id = push(&server, "d-1", 202);
    processed_and_built(&server, id);
    // The same delivery again is a duplicate, under the id it was stored with.
    assert_eq!(push(&server, "d-1", 200), id);
    let count = db
        .client()
        .query("SELECT count(*) FROM deliveries")
        .remove(0)
        .remove(0);
    assert_eq!(count.as_deref(), Some("1"), "one stored row");
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn a_redelivery_to_a_second_replica_is_a_duplicate() {
    let db = Database::new();
    let (one, two) = (Sandbox::new(), Sandbox::new());
    let first = one.serve(&gateway(&one, &db.url()), ENV);
    let second = two.serve(&gateway(&two, &db.url()), ENV);

    let id = push(&first, "d-1", 202);
    let reply = second.github("github", SECRET, "push", "d-1", PUSH);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", second.log());
    assert_eq!(reply.json()["status"], "duplicate");
    assert_eq!(reply.json()["delivery"], id);

    // Either replica may match it; it starts one run, which both see.
    processed_and_built(&second, id);
    processed_and_built(&first, id);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(&first).len(), 1, "{:#?}", runs(&first));

    // A delivery each replica takes is matched once too.
    let a = push(&first, "d-2", 202);
    let b = push(&second, "d-3", 202);
    processed_and_built(&second, a);
    processed_and_built(&first, b);
    assert_eq!(runs(&second).len(), 3, "{:#?}", runs(&second));
}

#[test]
fn the_database_going_away_makes_webhooks_wait_and_the_replica_unready_until_it_returns() {
    let db = Database::new();
    let proxy = Proxy::new(db.address());
    let sb = Sandbox::new();
    let config = gateway(&sb, &db.url_at(&proxy.address.to_string()));
    let server = sb.serve(&config, ENV);
    let id = push(&server, "before", 202);
    processed_and_built(&server, id);

    proxy.cut();
    let cut = Instant::now();
    eventually(Duration::from_secs(5), "/readyz to answer 503", || {
        ready(&server) == 503
    });
    let unready_after = cut.elapsed();
    let refused = server.github("github", SECRET, "push", "during", PUSH);
    assert_eq!(
        refused.status,
        503,
        "never 202: {refused:?}\n{}",
        server.log()
    );
    assert_eq!(refused.header("retry-after"), Some("5"), "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], "store_unavailable");
    let readyz = server.request("GET", "/readyz", &[], None);
    assert_eq!(readyz.status, 503);
    assert!(readyz.body.contains("store"), "{readyz:?}");
    // A few seconds without the database: the process stays up.
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(server.pid() as i32), "{}", server.log());
    assert_eq!(ready(&server), 503);

    proxy.restore();
    eventually(
        Duration::from_secs(20),
        "/readyz to answer 200 again",
        || ready(&server) == 200,
    );
    // The sender retries what was refused; it is stored now, and matched.
    let id = push(&server, "during", 202);
    processed_and_built(&server, id);
    let id = push(&server, "after", 202);
    processed_and_built(&server, id);
    assert!(
        unready_after < Duration::from_secs(5),
        "unready after {unready_after:?}"
    );
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn serve_started_while_the_database_is_down_exits_with_one_line_naming_the_host() {
    let db = Database::new();
    let proxy = Proxy::cut_from_start(db.address());
    let sb = Sandbox::new();
    let address = proxy.address.to_string();
    // A password in the URL, to see that it is never shown.
    let url = db
        .url_at(&address)
        .replacen("postgres@", "postgres:hunter2@", 1);
    let config = gateway(&sb, &url);
    let begun = Instant::now();
    let out = sb.run(&["serve", "-c", &config, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(begun.elapsed() < Duration::from_secs(60), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("baton:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains(&format!("the database at {address} cannot be reached")),
        "{}",
        errors[0]
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    assert!(!out.stderr.contains("listening on"), "{}", out.stderr);

    // Once the database is back, the same command serves.
    proxy.restore();
    let server = sb.serve(&config, ENV);
    assert_eq!(ready(&server), 200, "{}", server.log());
    assert!(!server.log().contains("hunter2"), "{}", server.log());
}

#[test]
fn baton_run_works_on_postgres_and_its_run_is_served() {
    let db = Database::new();
    let sb = Sandbox::new();
    let config = gateway(&sb, &db.url());
    sb.write("event.json", PUSH);
    let out = sb.run(&[
        "run",
        "-c",
        &config,
        "build",
        "--event",
        "event.json",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let run = out.json();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["stages"][0]["outputs"]["ref"], "refs/heads/main");
    let id = run["id"].as_str().expect("a run id").to_owned();

    let server = sb.serve(&config, ENV);
    let served = server.run_ended(&id, OPERATOR);
    assert_eq!(served["status"], "succeeded");
    assert_eq!(runs(&server).len(), 1);
}

#[test]
fn validate_prints_the_store_without_its_password() {
    let sb = Sandbox::new();
    let config = gateway(&sb, "postgres://baton:hunter2@db.example.com:5433/baton");
    let out = sb.run(&["validate", "--secrets-elsewhere", "-c", &config]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "store: postgres://baton:<redacted>@db.example.com:5433/baton (shared by replicas, lease 5s)\n"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
}

/// The harness itself: the proxy passes queries, refuses and resets when cut, and passes
/// them again on the same port when restored.
#[test]
fn the_proxy_cuts_the_database_off_and_restores_it() {
    use baton_tests::postgres::Client;
    let db = Database::new();
    let proxy = Proxy::new(db.address());
    let address = proxy.address.to_string();
    let mut open = Client::connect(&address, "postgres", &db.name);
    assert_eq!(open.query("SELECT 1")[0][0].as_deref(), Some("1"));

    proxy.cut();
    assert!(
        std::net::TcpStream::connect(proxy.address).is_err(),
        "refused while cut"
    );
    let reset = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open.query("SELECT 1")));
    assert!(reset.is_err(), "an open connection is reset");

    proxy.restore();
    let mut again = Client::connect(&address, "postgres", &db.name);
    assert_eq!(again.query("SELECT 2")[0][0].as_deref(), Some("2"));
}

#[test]
fn deliveries_sent_to_two_replicas_at_once_each_start_one_run() {
    let db = Database::new();
    let (one, two) = (Sandbox::new(), Sandbox::new());
    let replicas = [
        one.serve(&gateway(&one, &db.url()), ENV),
        two.serve(&gateway(&two, &db.url()), ENV),
    ];
    const SENDERS: usize = 4;
    const EACH: usize = 15;
    std::thread::scope(|scope| {
        for sender in 0..SENDERS {
            let replicas = &replicas;
            scope.spawn(move || {
                for n in 0..EACH {
                    let server = &replicas[(sender + n) % 2];
                    push(server, &format!("burst-{sender}-{n}"), 202);
                }
            });
        }
    });
    let total = SENDERS * EACH;
    let begun = Instant::now();
    loop {
        let reply = replicas[0].get("/api/v1/deliveries?limit=1000", OPERATOR);
        let deliveries = reply.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = deliveries
            .iter()
            .filter(|d| d["status"] == "processed")
            .count();
        if done == total {
            for d in &deliveries {
                assert_eq!(d["runs"].as_array().map(Vec::len), Some(1), "{d:#}");
            }
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "{done} of {total} processed:\n{}\n{}",
            replicas[0].log(),
            replicas[1].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reply = replicas[1].get("/api/v1/runs?workflow=build&limit=1000", OPERATOR);
    let runs = reply.json()["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), total, "one run per delivery");
}
