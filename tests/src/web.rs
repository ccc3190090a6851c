//! The web UI over plain HTTP, as a browser without JavaScript uses it: sign in through the
//! form, keep the session cookie, send forms as a page of this site sends them, and read a
//! page's form token. Redirects are not followed ([`Server::request`]), so a test sees each.

use crate::{Reply, Server};

/// A browser signed in with one API token.
pub struct Browser<'a> {
    server: &'a Server,
    /// `baton_session=…`, as the `Cookie` header carries it.
    pub cookie: String,
}

impl<'a> Browser<'a> {
    /// A browser that has not signed in.
    pub fn new(server: &'a Server) -> Self {
        Self {
            server,
            cookie: String::new(),
        }
    }

    /// Signs in through `POST /login` with `token`, as a person does.
    pub fn sign_in(server: &'a Server, token: &str) -> Self {
        let mut browser = Self::new(server);
        let signed_in = browser.post("/login", &[("token", token), ("next", "/runs")], &[]);
        assert_eq!(signed_in.status, 303, "{signed_in:?}");
        assert_eq!(signed_in.header("location"), Some("/runs"));
        let set = signed_in.header("set-cookie").expect("a session cookie");
        browser.cookie = set.split(';').next().unwrap_or_default().to_owned();
        assert!(browser.cookie.starts_with("baton_session="), "{set}");
        browser
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut all = headers.to_vec();
        if !self.cookie.is_empty() {
            all.push(("cookie", &self.cookie));
        }
        self.server.request(method, path, &all, Some(body))
    }

    /// `GET path`, typed into the address bar.
    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[("sec-fetch-site", "none")], &[])
    }

    /// A form with `fields` sent from a page of this site, with `headers` in place of those
    /// of the same name; a header given an empty value is left out, as a browser that does
    /// not send it.
    pub fn post(&self, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut all = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("sec-fetch-site", "same-origin"),
        ];
        all.retain(|(k, _)| !headers.iter().any(|(h, _)| h == k));
        all.extend_from_slice(headers);
        all.retain(|(_, v)| !v.is_empty());
        self.send("POST", path, &all, body.as_bytes())
    }

    /// Opens the server-sent event stream at `path` (`/ui/events?…`) as a page does, and
    /// reads it up to its first event.
    pub fn events(&self, path: &str) -> Events {
        use std::io::{BufRead, Write};
        let address = self.server.url.trim_start_matches("http://").to_owned();
        let stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .expect("read timeout");
        let mut reader = std::io::BufReader::new(stream);
        write!(
            reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.cookie
        )
        .expect("send");
        let mut status = String::new();
        reader.read_line(&mut status).expect("a status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("headers");
            if line == "\r\n" {
                break;
            }
        }
        Events { reader }
    }

    /// This session's form token, from a page's `<meta name="baton-csrf">`.
    pub fn csrf(&self) -> String {
        let page = self.get("/runs");
        between(&page.body, r#"<meta name="baton-csrf" content=""#, "\"")
            .unwrap_or_else(|| panic!("no form token in {}", page.body))
            .to_owned()
    }
}

/// An open server-sent event stream.
pub struct Events {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Events {
    /// The data of the next `change` event; panics when none comes within 15 s.
    pub fn next_change(&mut self) -> String {
        use std::io::BufRead;
        let begun = std::time::Instant::now();
        let mut change = false;
        loop {
            // Keep-alive comments arrive every 15 s: the wait is bounded here, not by them.
            assert!(
                begun.elapsed() < std::time::Duration::from_secs(15),
                "no change within 15 s"
            );
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .expect("an event within 15 s");
            assert!(!line.is_empty(), "the stream ended");
            let line = line.trim_end();
            // Chunked encoding: only the event's own lines count.
            if line == "event: change" {
                change = true;
            } else if let Some(data) = line.strip_prefix("data: ").filter(|_| change) {
                return data.to_owned();
            }
        }
    }
}

/// The text between the first `start` and the next `end`.
pub fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}
