//! `intake-load` against a small HTTP server of the test's own: every request is sent once,
//! at its rate, with its own GitHub-style delivery id, and every answer is counted by kind.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the server saw: each request's delivery id and arrival time.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    arrivals: Vec<Instant>,
}

/// Serves keep-alive connections: every 25th request gets a 500, and every connection is
/// closed after its 7th answer (the generator must reconnect without losing a request).
fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let seen = seen.clone();
        std::thread::spawn(move || serve_connection(stream, &seen));
    }
}

/// Reads one request (headers and body) and returns its delivery id, if it has one; `None`
/// once the client has closed the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Option<String>> {
    let mut id = None;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "x-github-delivery" => id = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().expect("length"),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    Some(id)
}

fn serve_connection(stream: TcpStream, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    for answered in 1.. {
        let Some(id) = read_request(&mut reader) else {
            return;
        };
        let number = {
            let mut seen = seen.lock().unwrap();
            seen.ids.push(id.expect("a delivery id"));
            seen.arrivals.push(Instant::now());
            seen.ids.len()
        };
        let status = if number % 25 == 0 {
            "500 Internal Server Error"
        } else {
            "202 Accepted"
        };
        let close = answered == 7;
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Length: 2\r\n{}\r\nok",
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(answer.as_bytes()).is_err() || close {
            return;
        }
    }
}

#[test]
fn sends_every_request_once_at_its_rate_with_its_own_id() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/github", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = seen.clone();
    std::thread::spawn(move || serve(listener, server_seen));

    let output = Command::new(env!("CARGO_BIN_EXE_intake-load"))
        .args([
            &url,
            "400",
            "1",
            "4",
            "secret",
            r#"{"ref":"refs/heads/main"}"#,
            "2",
        ])
        .output()
        .expect("run intake-load");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");

    assert_eq!(report["sent"], 400);
    assert_eq!(report["ok"], 384, "{report}");
    assert_eq!(
        report["non_2xx"], 16,
        "every 25th answer was a 500: {report}"
    );
    assert_eq!(
        report["errors"], 0,
        "closed connections are reopened: {report}"
    );
    let seen = seen.lock().unwrap();
    let distinct: HashSet<_> = seen.ids.iter().collect();
    assert_eq!(distinct.len(), 400, "each request has its own delivery id");
    for id in &seen.ids {
        let parts: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id} is a UUID");
        assert!(id.as_bytes()[14] == b'1', "{id} is version 1");
    }
    // Open loop at 400/s: spread over the second, not sent in a burst.
    let first = seen.arrivals.iter().min().unwrap();
    let last = seen.arrivals.iter().max().unwrap();
    let spread = last.duration_since(*first).as_secs_f64();
    assert!((0.9..1.5).contains(&spread), "sent over {spread:.3} s");
}

/// Serves keep-alive connections whose first answer each comes `delay` late.
fn serve_slow_first_answers(listener: TcpListener, delay: std::time::Duration) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            for answered in 0.. {
                if read_request(&mut reader).is_none() {
                    return;
                }
                if answered == 0 {
                    std::thread::sleep(delay);
                }
                let answer = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok";
                if writer.write_all(answer).is_err() {
                    return;
                }
            }
        });
    }
}

/// Runs intake-load at 400/s for 1 s on 4 connections, with `lead_in` if given.
fn report_with_lead_in(url: &str, lead_in: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_intake-load"));
    command.args([url, "400", "1", "4", "secret", "{}", "2"]);
    if let Some(seconds) = lead_in {
        command.env("INTAKE_LOAD_LEAD_IN", seconds);
    }
    let output = command.output().expect("run intake-load");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[test]
fn a_lead_in_is_sent_and_answered_but_left_out_of_the_percentiles() {
    // Each connection's first answer is 300 ms late: the requests queued behind them are late
    // too, all of them due in the first ~0.3 s.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/github", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        serve_slow_first_answers(listener, std::time::Duration::from_millis(300));
    });

    let plain = report_with_lead_in(&url, None);
    assert_eq!(plain["sent"], 400);
    assert_eq!(plain["measured"], 400);
    assert!(plain["max_ms"].as_f64().unwrap() >= 300.0, "{plain}");

    let led_in = report_with_lead_in(&url, Some("1"));
    assert_eq!(led_in["sent"], 800, "the lead-in's second is sent too");
    assert_eq!(led_in["ok"], 800, "and its answers are counted");
    let measured = led_in["measured"].as_u64().unwrap();
    assert!((395..=400).contains(&measured), "{led_in}");
    assert!(
        led_in["max_ms"].as_f64().unwrap() < 150.0,
        "the slow start is left out: {led_in}"
    );
}
