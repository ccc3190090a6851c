//! A stand-in for GitHub's commit status API (`POST /repos/{owner}/{repo}/statuses/{sha}`),
//! on a local port, for a `baton serve` whose github source has `api_url` pointing at it.
//! It records every status posted and answers with the status code it is set to: a 201
//! echoing the status back (as GitHub answers), or an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One status post and the code it was answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPost {
    /// The request path: `/repos/{owner}/{repo}/statuses/{sha}`.
    pub path: String,
    /// The posted JSON: `state`, `context`, `description`, `target_url`.
    pub body: Value,
    /// The HTTP status code the fake answered.
    pub answered: u16,
}

impl StatusPost {
    /// The posted `context`.
    pub fn context(&self) -> &str {
        self.body["context"].as_str().unwrap_or_default()
    }

    /// The posted `state`.
    pub fn state(&self) -> &str {
        self.body["state"].as_str().unwrap_or_default()
    }
}

/// The fake API; it stops taking connections when dropped (connections open stay served
/// until their client closes them).
pub struct FakeGithub {
    /// `http://127.0.0.1:PORT`, for `api_url`.
    pub url: String,
    answer: Arc<AtomicU16>,
    posts: Arc<Mutex<Vec<StatusPost>>>,
}

impl FakeGithub {
    /// Starts it, answering every post with `code`.
    pub fn start(code: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for the fake GitHub");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(AtomicU16::new(code));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let (answer_to, record_to) = (answer.clone(), posts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (answer, posts) = (answer_to.clone(), record_to.clone());
                std::thread::spawn(move || serve(stream, &answer, &posts));
            }
        });
        Self { url, answer, posts }
    }

    /// Answers every later post with `code`.
    pub fn answer(&self, code: u16) {
        self.answer.store(code, Ordering::SeqCst);
    }

    /// Every post so far, in the order they came.
    pub fn posts(&self) -> Vec<StatusPost> {
        self.posts.lock().unwrap().clone()
    }
}

/// Serves one connection's requests (HTTP/1.1, kept alive) until the client closes it.
fn serve(stream: TcpStream, answer: &AtomicU16, posts: &Mutex<Vec<StatusPost>>) {
    let mut writer = stream.try_clone().expect("clone the connection");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = answer.load(Ordering::SeqCst);
        posts.lock().unwrap().push(StatusPost {
            path,
            body: body.clone(),
            answered: code,
        });
        let (reason, reply) = match code {
            201 => ("Created", body.to_string()),
            _ => ("Error", r#"{"message":"Server Error"}"#.to_owned()),
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(reply.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}
