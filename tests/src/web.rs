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

    /// This session's form token, from a page's `<meta name="baton-csrf">`.
    pub fn csrf(&self) -> String {
        let page = self.get("/runs");
        between(&page.body, r#"<meta name="baton-csrf" content=""#, "\"")
            .unwrap_or_else(|| panic!("no form token in {}", page.body))
            .to_owned()
    }
}

/// The text between the first `start` and the next `end`.
pub fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}
