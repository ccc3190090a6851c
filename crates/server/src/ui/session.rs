//! Signing in: an API token becomes a session cookie, and every form carries a token that
//! ties it to that session.
//!
//! The cookie is `<name>.<expiry>.<mac>`: the token's name (base64url), the Unix second it
//! expires at, and an HMAC-SHA256 of both keyed with the token's own secret. Nothing is kept
//! on the server, so every replica with the same config accepts it, and changing or removing
//! a token ends its sessions. The form token is a second HMAC under the same key, so a page
//! of one session cannot act for another.
//!
//! Cross-site requests are refused three ways: the cookie is `SameSite=Strict`, a browser's
//! `Sec-Fetch-Site` or `Origin` must name this site, and the form token must match.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_config::Role;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::api::{ROLE_NAMES, Token, rank};

use super::layout;

/// The cookie's name.
pub(crate) const COOKIE: &str = "baton_session";
/// How long a session lasts: a working day.
pub(crate) const LIFETIME_SECS: u64 = 12 * 60 * 60;

/// A signed-in person: the token they signed in with, its role, and the form token of
/// this session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
    /// The form token every form of this session carries as `csrf`.
    pub csrf: String,
}

impl Session {
    /// Whether the role reaches `min` ([`crate::api::OPERATOR`], …).
    pub(crate) fn may(&self, min: u8) -> bool {
        rank(self.role) >= min
    }

    /// The role's name.
    pub(crate) fn role_name(&self) -> &'static str {
        ROLE_NAMES[usize::from(rank(self.role))]
    }

    /// Refuses a form sent from another site, without this session's form token, or by a
    /// role below `min`.
    pub(crate) fn check_action(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
        min: u8,
    ) -> Result<(), Refusal> {
        if !same_site(headers) {
            return Err(Refusal::CrossSite);
        }
        let given = csrf.unwrap_or_default().as_bytes();
        if !bool::from(given.ct_eq(self.csrf.as_bytes())) {
            return Err(Refusal::FormToken);
        }
        if !self.may(min) {
            return Err(Refusal::Role {
                held: self.role_name(),
                needed: ROLE_NAMES[usize::from(min)],
            });
        }
        Ok(())
    }
}

/// Why a page or an action was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No valid session: pages send the browser to `/login`.
    SignIn {
        /// Where to come back to.
        next: String,
    },
    /// The request came from another site.
    CrossSite,
    /// The form's token is missing or belongs to another session.
    FormToken,
    /// The role is too low for the action.
    Role {
        /// The session's role.
        held: &'static str,
        /// The role the action needs.
        needed: &'static str,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::SignIn { next } => {
                return Redirect::to(&format!("/login?next={}", encode_query(&next)))
                    .into_response();
            }
            Refusal::CrossSite => (
                StatusCode::FORBIDDEN,
                "This request came from another site and was refused.".to_owned(),
            ),
            Refusal::FormToken => (
                StatusCode::FORBIDDEN,
                "The form is out of date or from another session. Reload the page and try again."
                    .to_owned(),
            ),
            Refusal::Role { held, needed } => (
                StatusCode::FORBIDDEN,
                format!("Your role is {held}; this action needs {needed} or above."),
            ),
        };
        layout::error_page(status, "Refused", &message)
    }
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Refusal> {
        let now = unix_now();
        cookie(&parts.headers, COOKIE)
            .and_then(|value| open(&state.tokens, value, now))
            .ok_or_else(|| Refusal::SignIn {
                next: if parts.method == Method::GET {
                    parts
                        .uri
                        .path_and_query()
                        .map_or("/runs", |p| p.as_str())
                        .to_owned()
                } else {
                    "/runs".to_owned()
                },
            })
    }
}

/// The session a cookie value stands for, if it is genuine and not expired.
pub(crate) fn open(tokens: &[Token], value: &str, now: u64) -> Option<Session> {
    let mut parts = value.split('.');
    let (name, expires, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
    let expires: u64 = expires.parse().ok()?;
    if expires <= now {
        return None;
    }
    let token = tokens.iter().find(|t| t.name == name)?;
    let expected = sign(&token.secret, b"session", &name, expires);
    if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
        return None;
    }
    Some(Session {
        csrf: sign(&token.secret, b"csrf", &name, expires),
        name,
        role: token.role,
    })
}

/// The cookie value for `token`, valid until `expires` (Unix seconds).
pub(crate) fn seal(token: &Token, expires: u64) -> String {
    format!(
        "{}.{expires}.{}",
        URL_SAFE_NO_PAD.encode(token.name.as_bytes()),
        sign(&token.secret, b"session", &token.name, expires)
    )
}

/// `Set-Cookie` for a new session, `Secure` when the request came through HTTPS.
pub(crate) fn set_cookie(value: &str, headers: &HeaderMap) -> HeaderValue {
    let secure = if forwarded_https(headers) {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that ends the session.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("baton_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn sign(secret: &[u8], purpose: &[u8], name: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"baton-ui\0");
    mac.update(purpose);
    mac.update(b"\0");
    mac.update(name.as_bytes());
    mac.update(b"\0");
    mac.update(expires.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// True unless a browser says the request comes from another site: `Sec-Fetch-Site` must be
/// `same-origin` or `none` (typed by the person), else `Origin` must be this host. A client
/// that sends neither (curl, an old browser) is judged by the form token alone.
pub(crate) fn same_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where to go after signing in: only a path on this site, never `//elsewhere`.
pub(crate) fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/runs",
    }
}

/// Percent-encodes `text` for a query string.
pub(crate) fn encode_query(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role) -> Token {
        Token {
            name: name.into(),
            secret: secret.as_bytes().to_vec(),
            role,
        }
    }

    #[test]
    fn a_sealed_session_opens_until_it_expires() {
        let tokens = [
            token("ops", "s3cret", Role::Operator),
            token("view", "other", Role::Viewer),
        ];
        let value = seal(&tokens[0], 1_000);
        let session = open(&tokens, &value, 999).expect("genuine");
        assert_eq!(session.name, "ops");
        assert_eq!(session.role, Role::Operator);
        assert!(open(&tokens, &value, 1_000).is_none(), "expired");
        assert!(!value.contains("s3cret"));
    }

    #[test]
    fn a_forged_or_foreign_cookie_does_not_open() {
        let tokens = [
            token("ops", "s3cret", Role::Operator),
            token("view", "other", Role::Viewer),
        ];
        let viewer = seal(&tokens[1], 1_000);
        // Claiming the operator's name with the viewer's MAC.
        let (_, rest) = viewer.split_once('.').unwrap();
        let forged = format!("{}.{rest}", URL_SAFE_NO_PAD.encode("ops"));
        assert!(open(&tokens, &forged, 1).is_none());
        // A later expiry under the same MAC.
        let stretched = viewer.replacen(".1000.", ".9000.", 1);
        assert!(open(&tokens, &stretched, 1).is_none());
        // A token whose secret changed.
        let rotated = [token("view", "new", Role::Viewer)];
        assert!(open(&rotated, &viewer, 1).is_none());
        for garbage in ["", "a.b", "a.1.c.d", "!!.1.x", "dmlldw.x.y"] {
            assert!(open(&tokens, garbage, 1).is_none(), "{garbage}");
        }
    }

    #[test]
    fn each_session_has_its_own_form_token() {
        let tokens = [token("ops", "s3cret", Role::Operator)];
        let a = open(&tokens, &seal(&tokens[0], 1_000), 1).unwrap();
        let b = open(&tokens, &seal(&tokens[0], 2_000), 1).unwrap();
        assert_ne!(a.csrf, b.csrf);
        let mut headers = HeaderMap::new();
        assert!(a.check_action(&headers, Some(&a.csrf), 1).is_ok());
        assert!(matches!(
            a.check_action(&headers, Some(&b.csrf), 1),
            Err(Refusal::FormToken)
        ));
        assert!(matches!(
            a.check_action(&headers, None, 1),
            Err(Refusal::FormToken)
        ));
        assert!(matches!(
            a.check_action(&headers, Some(&a.csrf), 2),
            Err(Refusal::Role { .. })
        ));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(matches!(
            a.check_action(&headers, Some(&a.csrf), 1),
            Err(Refusal::CrossSite)
        ));
    }

    #[test]
    fn origin_must_be_this_host_when_sent() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("baton.example:8080"));
        assert!(same_site(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://baton.example:8080"),
        );
        assert!(same_site(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_site(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_site(&headers), "Sec-Fetch-Site decides when sent");
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/runs/abc?x=1")), "/runs/abc?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/runs");
        assert_eq!(safe_next(Some("/\\evil.example")), "/runs");
        assert_eq!(safe_next(Some("https://evil.example/")), "/runs");
        assert_eq!(safe_next(None), "/runs");
    }

    #[test]
    fn the_cookie_lasts_a_working_day_and_is_secure_behind_https() {
        let plain = set_cookie("v", &HeaderMap::new());
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("Max-Age=43200"), "{plain}");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"), "{plain}");
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(
            set_cookie("v", &proxied)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        proxied.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(
            !set_cookie("v", &proxied)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }

    #[test]
    fn refusals_send_the_browser_to_sign_in_or_say_why() {
        let sign_in = Refusal::SignIn {
            next: "/runs/a b?x=1".into(),
        }
        .into_response();
        assert_eq!(sign_in.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            sign_in.headers()[header::LOCATION],
            "/login?next=%2Fruns%2Fa+b%3Fx%3D1"
        );
        for refusal in [
            Refusal::CrossSite,
            Refusal::FormToken,
            Refusal::Role {
                held: "viewer",
                needed: "operator",
            },
        ] {
            assert_eq!(refusal.into_response().status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn a_session_names_its_role() {
        let tokens = [
            token("v", "1", Role::Viewer),
            token("o", "2", Role::Operator),
            token("a", "3", Role::Approver),
        ];
        let names: Vec<_> = tokens
            .iter()
            .map(|t| open(&tokens, &seal(t, 10), 1).unwrap().role_name())
            .collect();
        assert_eq!(names, ["viewer", "operator", "approver"]);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie(&headers, COOKIE), None);
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; baton_session=abc.1.x; baton_session2=no"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc.1.x"));
        assert_eq!(cookie(&headers, "theme"), Some("dark"));
        assert_eq!(cookie(&headers, "baton"), None);
    }

    #[test]
    fn now_is_after_the_epoch() {
        // 2020-09-13: a clock this far behind would open every expired session.
        assert!(unix_now() > 1_600_000_000);
    }
}
