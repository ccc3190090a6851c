//! `baton serve` under connections that send part of a request and stop, trickle a body, or
//! sit idle: each is closed after its timeout, the cap on connections holds, and deliveries,
//! probes and the API still get through.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use baton_tests::{Sandbox, Server, eventually};
use serde_json::Value;

const VIEWER: &str = "view-token-1";
const SECRET: &str = "gh-secret";
const PUSH: &str = r#"{"ref": "refs/heads/main", "after": "abc"}"#;

/// A gateway config with a github source, a viewer token and `server` as its `[server]`.
fn config(sb: &Sandbox, server: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"
[server]
{server}

[api]
tokens = [{{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
"#
        ),
    );
    sb.path().join("baton.toml").display().to_string()
}

const ENV: &[(&str, &str)] = &[("T_VIEWER", VIEWER), ("GH_SECRET", SECRET)];

/// `baton serve` with `server` as its `[server]`, and its `host:port`.
fn serve(sb: &Sandbox, server: &str) -> (Server, String) {
    let server = sb.serve(&config(sb, server), ENV);
    let address = address(&server.url).to_owned();
    (server, address)
}

fn address(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// A connection that sent `bytes` and nothing more.
fn send(address: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.write_all(bytes).expect("write");
    stream
}

/// The start of a webhook request whose headers never end.
const PARTIAL_HEADERS: &[u8] = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n";

/// A webhook request with whole headers and a body that stops after a few bytes.
const PARTIAL_BODY: &[u8] = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: slow\r\nContent-Length: 100\r\n\r\n{\"ref\":";

/// True when the server closed `stream` (end of stream or reset); any data is read and
/// dropped. Does not wait.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0_u8; 4096];
    let mut reader = stream;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits (at most `limit`) until the server closes `stream`; returns what it sent before.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_nonblocking(false).expect("blocking");
    let begun = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let left = limit.saturating_sub(begun.elapsed());
        assert!(
            !left.is_zero(),
            "the server kept the connection open for {limit:?}; it sent: {}",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one answer of a keep-alive connection (`Content-Length` bodies only).
fn read_answer(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut byte = [0_u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("read"),
            1,
            "closed mid-answer"
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0_u8; length];
    stream.read_exact(&mut body).expect("body");
    head + &String::from_utf8_lossy(&body)
}

/// The value of the metric line that starts with `series`, or 0.
fn metric(server: &Server, series: &str) -> f64 {
    let page = server.request("GET", "/metrics", &[], None).body;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn stored_deliveries(server: &Server) -> Vec<Value> {
    server.get("/api/v1/deliveries", VIEWER).json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// This process's soft limit on open files.
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[test]
fn stalled_requests_keep_out_neither_deliveries_nor_probes() {
    let sb = Sandbox::new();
    let (server, address) = serve(
        &sb,
        "max_connections = 200\nreserved_connections = 20\nheader_timeout = \"10s\"",
    );

    // A few thousand connections that each send part of a webhook's headers and stop.
    let count = 2000.min(open_file_limit().saturating_sub(200));
    let begun = Instant::now();
    let stalled: Vec<TcpStream> = (0..count)
        .map(|_| send(&address, PARTIAL_HEADERS))
        .collect();
    let opened_in = begun.elapsed();

    // The server holds no more of them than its cap: the ones that waited longest were closed
    // to make room for the next. (Without a cap, it holds all of them.) Connections the
    // kernel queued for the server to accept look open from here until it has.
    let mut open = count;
    eventually(
        Duration::from_secs(5),
        "the server to hold no more than its cap",
        || {
            open = stalled.iter().filter(|s| !closed_by_server(s)).count();
            open <= 200
        },
    );
    assert!(
        open >= 150,
        "{open} of {count} stalled connections open (opened in {opened_in:?}); the cap is 200\n{}",
        server.log()
    );

    // At the cap, a probe and a real delivery still get through, at once.
    let asked = Instant::now();
    let health = server.request("GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    let delivery = server.github("github", SECRET, "push", "real-1", PUSH);
    assert_eq!(delivery.status, 202, "{delivery:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the probe and the delivery took {:?}",
        asked.elapsed()
    );
    let still_open = stalled.iter().filter(|s| !closed_by_server(s)).count();
    assert!(
        still_open >= 140,
        "only {still_open} stalled connections left open"
    );
    let stored = stored_deliveries(&server);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["delivery_id"], "real-1");

    // The rest are closed once the header timeout passes.
    eventually(
        Duration::from_secs(25),
        "every stalled connection closed",
        || stalled.iter().all(closed_by_server),
    );
    let evicted = metric(
        &server,
        r#"baton_connections_closed_total{reason="evicted"}"#,
    );
    let timed_out = metric(
        &server,
        r#"baton_connections_closed_total{reason="header_timeout"}"#,
    );
    assert!(
        evicted >= (count / 2) as f64,
        "{evicted} evicted of {count}"
    );
    assert!(
        timed_out >= 100.0,
        "{timed_out} closed by the header timeout"
    );
}

#[test]
fn partial_headers_partial_bodies_and_idle_connections_are_closed_after_their_timeouts() {
    let sb = Sandbox::new();
    let (server, address) = serve(
        &sb,
        "header_timeout = \"1s\"\nbody_timeout = \"3s\"\nidle_timeout = \"5s\"",
    );
    let begun = Instant::now();

    // Headers that never end, and headers that trickle in a byte at a time: the header timeout
    // counts from the first byte, so trickling does not extend it.
    let mut partial = send(&address, PARTIAL_HEADERS);
    let mut trickling = send(&address, b"P");
    let trickle = {
        let mut stream = trickling.try_clone().expect("clone");
        std::thread::spawn(move || {
            for byte in
                b"OST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                std::thread::sleep(Duration::from_millis(100));
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        })
    };
    // A body that stops: answered 408, then closed.
    let mut slow_body = send(&address, PARTIAL_BODY);
    // A keep-alive connection, answered, then idle.
    let mut idle = send(&address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();

    read_until_closed(&mut partial, Duration::from_secs(4));
    let headers_closed = begun.elapsed();
    read_until_closed(&mut trickling, Duration::from_secs(4));
    let trickle_closed = begun.elapsed();
    trickle.join().unwrap();
    let answer = read_until_closed(&mut slow_body, Duration::from_secs(6));
    let body_closed = begun.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_timeout"), "{answer}");
    read_until_closed(&mut idle, Duration::from_secs(9));
    let idle_closed = idle_since.elapsed();

    // Each closed after its own timeout: not before it, and not much after.
    for (what, took, timeout, slack) in [
        ("partial headers", headers_closed, 1.0, 2.0),
        ("trickling headers", trickle_closed, 1.0, 2.0),
        ("a partial body", body_closed, 3.0, 2.0),
        ("an idle connection", idle_closed, 5.0, 3.0),
    ] {
        let secs = took.as_secs_f64();
        assert!(
            secs >= timeout - 0.1 && secs < timeout + slack,
            "{what} closed after {took:?}, with a timeout of {timeout}s"
        );
    }

    // Between requests the header timeout does not run: a keep-alive connection that sends
    // its next request after more than the header timeout, but within the idle timeout, is
    // answered each time.
    let mut kept = send(&address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..3 {
        assert!(read_answer(&mut kept).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1500));
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("the connection is still open");
    }
    assert!(read_answer(&mut kept).starts_with("HTTP/1.1 200"));

    assert!(
        metric(
            &server,
            r#"baton_connections_closed_total{reason="header_timeout"}"#
        ) >= 2.0
    );
    assert!(
        metric(
            &server,
            r#"baton_connections_closed_total{reason="idle_timeout"}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &server,
            r#"baton_deliveries_total{source="github",result="body_timeout"}"#
        ) >= 1.0
    );
}

#[test]
fn webhooks_beyond_their_share_get_503_while_probes_and_the_api_answer() {
    let sb = Sandbox::new();
    let (server, address) = serve(
        &sb,
        "max_connections = 12\nreserved_connections = 4\nbody_timeout = \"3s\"",
    );

    // Eight webhook requests under way (12 - 4), each waiting for the rest of its body.
    let mut slow: Vec<TcpStream> = (0..8).map(|_| send(&address, PARTIAL_BODY)).collect();
    std::thread::sleep(Duration::from_millis(500));

    let refused = server.github("github", SECRET, "push", "busy-1", PUSH);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(refused.json()["error"]["code"], "busy");
    assert_eq!(server.request("GET", "/healthz", &[], None).status, 200);
    assert_eq!(server.request("GET", "/readyz", &[], None).status, 200);
    assert_eq!(server.get("/api/v1/runs", VIEWER).status, 200);
    assert_eq!(stored_deliveries(&server), Vec::<Value>::new());
    assert_eq!(metric(&server, "baton_webhooks_busy_total"), 1.0);

    // Once their bodies time out, webhooks have room again.
    for stream in &mut slow {
        let answer = read_until_closed(stream, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let accepted = server.github("github", SECRET, "push", "busy-1", PUSH);
    assert_eq!(accepted.status, 202, "{accepted:?}");
}

#[test]
fn out_of_file_descriptors_the_server_warns_once_sheds_stalled_connections_and_answers() {
    let sb = Sandbox::new();
    let config = config(&sb, "header_timeout = \"60s\"");
    let server = sb.serve_through(
        &["sh", "-c", "ulimit -n 96 && exec \"$0\" \"$@\""],
        &["-c", &config, "--listen", "127.0.0.1:0"],
        ENV,
    );
    let address = address(&server.url).to_owned();
    eventually(
        Duration::from_secs(10),
        "the warning on the file limit",
        || server.log().contains("open files"),
    );
    let log = server.log();
    assert_eq!(
        log.matches("server.max_connections needs about 1152 open files")
            .count(),
        1,
        "{log}"
    );

    // More stalled connections than the server has descriptors for, for a few seconds.
    let begun = Instant::now();
    let mut stalled = Vec::new();
    while begun.elapsed() < Duration::from_secs(3) {
        stalled.push(send(&address, PARTIAL_HEADERS));
        std::thread::sleep(Duration::from_millis(5));
    }
    // A probe still gets an answer: accepting it closes the connection that waited longest.
    let mut probe = send(
        &address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let answer = read_until_closed(&mut probe, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let log = server.log();
    assert_eq!(
        log.matches("accepting connections failed").count(),
        1,
        "the accept error is logged once, not once per attempt:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    let open = stalled.iter().filter(|s| !closed_by_server(s)).count();
    assert!(
        open < 96,
        "{open} of {} stalled connections still open under a limit of 96 files",
        stalled.len()
    );
}
