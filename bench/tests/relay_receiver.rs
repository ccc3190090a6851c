//! `relay-receiver` fed by `intake-load` (the relay benchmark's floor, as the run script
//! measures it) and by hand-written requests: every request is recorded once with its id,
//! key and arrival time, and the report is written on `GET /report`, on SIGTERM and after
//! the idle time.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A started receiver: the process, where it listens, and the rest of its stdout.
struct Receiver {
    child: Child,
    address: String,
    stdout: BufReader<ChildStdout>,
}

impl Receiver {
    fn start(out: &Path, idle: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_relay-receiver"));
        command.arg("0").arg(out).args(idle).stdout(Stdio::piped());
        let mut child = command.spawn().expect("start relay-receiver");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line}"))
            .trim()
            .to_owned();
        Self {
            child,
            address,
            stdout,
        }
    }

    /// Waits (at most 5 s) for the process to end; its exit success and the summary it
    /// printed last.
    fn wait_for_exit(mut self) -> (bool, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the receiver did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("stdout");
        let summary = serde_json::from_str(rest.trim()).expect("a JSON summary");
        (status.success(), summary)
    }
}

/// Writes `requests` on a new connection and reads until `answers` answers have come or the
/// server closed it; the text read.
fn exchange(address: &str, requests: &str, answers: usize) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.write_all(requests.as_bytes()).expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while text.matches("HTTP/1.1 ").count() < answers || !text.ends_with("\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => text.push_str(std::str::from_utf8(&chunk[..n]).unwrap()),
            Err(e) => panic!("read: {e} after {text:?}"),
        }
        if text.contains("application/json") {
            // A JSON answer: read to the end of its body.
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            let head_end = text.find("\r\n\r\n").unwrap() + 4;
            if text.len() >= head_end + length {
                break;
            }
        }
    }
    text
}

/// `POST /` carrying a relayed message's headers.
fn relayed(delivery: &str, key: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nX-Baton-Delivery: {delivery}\r\n\
         X-GitHub-Delivery: {delivery}\r\nIdempotency-Key: {key}\r\nContent-Length: 2\r\n\r\n{{}}"
    )
}

/// `GET path`'s JSON.
fn get_json(address: &str, path: &str) -> serde_json::Value {
    let text = exchange(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"),
        1,
    );
    let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The report file's lines, split in fields.
fn arrivals(out: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(out)
        .expect("the report file")
        .lines()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

#[test]
fn records_each_request_with_its_id_key_and_arrival_between_send_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("arrivals");
    let receiver = Receiver::start(&out, None);
    let trace = dir.path().join("ids");

    let load = Command::new(env!("CARGO_BIN_EXE_intake-load"))
        .args([
            &format!("http://{}/hooks/github", receiver.address),
            "200",
            "1",
            "4",
            "secret",
            "{}",
            "2",
        ])
        .env("INTAKE_LOAD_TRACE_IDS", &trace)
        .output()
        .expect("run intake-load");
    assert!(load.status.success(), "{load:?}");
    let load: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(load["ok"], 200, "{load}");

    // intake-load's trace: every 2xx request, its id and its two wall-clock times.
    let traced: HashMap<String, (u64, u64)> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_owned(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(traced.len(), 200, "one line per request, each id its own");
    assert!(traced.values().all(|(sent, answered)| sent <= answered));

    // Two messages with the same key, pipelined on one connection, are two requests.
    let both = format!("{}{}", relayed("d-1", "msg_a"), relayed("d-2", "msg_a"));
    let answers = exchange(&receiver.address, &both, 2);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    // A chunked body cannot be delimited by this receiver: refused and counted.
    let chunked = exchange(
        &receiver.address,
        "POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        1,
    );
    assert!(chunked.starts_with("HTTP/1.1 501"), "{chunked}");

    let summary = get_json(&receiver.address, "/report");
    assert_eq!(
        summary,
        serde_json::json!({"requests": 202, "relayed": 2, "direct": 200,
            "distinct_keys": 1, "duplicates": 1, "unsupported": 1})
    );
    let lines = arrivals(&out);
    assert_eq!(lines.len(), 202);
    assert_eq!(get_json(&receiver.address, "/count"), summary);

    // The relayed requests in a window of arrival times.
    let relayed_at: Vec<u64> = lines
        .iter()
        .filter(|l| l[1] == "r")
        .map(|l| l[0].parse().unwrap())
        .collect();
    let count_between = |from: u64, to: u64| {
        get_json(&receiver.address, &format!("/count?from={from}&to={to}"))["window"].clone()
    };
    assert_eq!(count_between(0, u64::MAX), 2);
    assert_eq!(count_between(relayed_at[0], relayed_at[1] + 1), 2);
    assert_eq!(count_between(relayed_at[1] + 1, u64::MAX), 0);
    assert_eq!(count_between(0, relayed_at[0]), 0);
    let direct: Vec<_> = lines.iter().filter(|l| l[1] == "d").collect();
    let ids: HashSet<&String> = direct.iter().map(|l| &l[2]).collect();
    assert_eq!(ids, traced.keys().collect(), "the same ids, each once");
    for line in &direct {
        let at: u64 = line[0].parse().unwrap();
        let (sent, answered) = traced[&line[2]];
        assert!(
            sent <= at && at <= answered,
            "{} arrived at {at}, sent {sent}, answered {answered}",
            line[2]
        );
        assert_eq!(line[3], "-", "a direct post has no key");
    }
    let relayed: Vec<_> = lines.iter().filter(|l| l[1] == "r").collect();
    assert_eq!(relayed.len(), 2);
    assert_eq!(
        (relayed[0][2].as_str(), relayed[0][3].as_str()),
        ("d-1", "msg_a")
    );
    assert_eq!(
        (relayed[1][2].as_str(), relayed[1][3].as_str()),
        ("d-2", "msg_a")
    );

    // SIGTERM: the same report once more, and the summary on stdout.
    std::fs::remove_file(&out).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(receiver.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (success, printed) = receiver.wait_for_exit();
    assert!(success);
    assert_eq!(printed, summary);
    assert_eq!(arrivals(&out), lines);
}

#[test]
fn writes_its_report_and_exits_after_the_idle_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("arrivals");
    let receiver = Receiver::start(&out, Some("0.3"));
    // No request yet: the idle clock has not started.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!out.exists());
    let answer = exchange(&receiver.address, &relayed("d-9", "msg_b"), 1);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    let (success, summary) = receiver.wait_for_exit();
    assert!(success);
    assert_eq!(summary["relayed"], 1);
    let lines = arrivals(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][1..], ["r", "d-9", "msg_b"]);
}
