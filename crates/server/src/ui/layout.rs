//! The frame every page shares: head, navigation, who is signed in, and the headers that
//! keep a page from being framed, sniffed or made to run another site's script.
//!
//! Pages are written with maud, which escapes every value it interpolates: a payload that
//! holds `<script>` shows as text. Only [`PreEscaped`] bypasses that, and it is used for
//! markup baton itself produced (the graph's SVG) and nothing from a request or a store.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::assets;
use super::session::Session;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    /// `/runs` and one run.
    Runs,
    /// `/deliveries`.
    Deliveries,
    /// `/workflows` and the editor.
    Workflows,
    /// None (sign-in, errors).
    None,
}

/// Scripts and styles come from this server only; nothing inline, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A whole page with status 200.
pub(crate) fn page(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Response {
    respond(StatusCode::OK, document(title, session, nav, body))
}

/// A page that says why something could not be shown or done.
pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        section.notice.error role="alert" {
            h1 { (title) }
            p { (message) }
            p { a href="/runs" { "Back to runs" } }
        }
    };
    respond(status, document(title, None, Nav::None, body))
}

/// A fragment of a page (for live updates), with the same headers as a page.
pub(crate) fn fragment(markup: Markup) -> Response {
    respond(StatusCode::OK, markup)
}

fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages show live state and who is signed in: never from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn document(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · baton" }
                link rel="stylesheet" href=(assets::url("baton.css"));
                link rel="icon" href=(assets::url("icon.svg")) type="image/svg+xml";
                script src=(assets::url("baton.js")) defer {}
                @if let Some(session) = session {
                    meta name="baton-csrf" content=(session.csrf);
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/runs" { (PreEscaped(assets::LOGO)) span { "baton" } }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            (nav_link("/runs", "Runs", nav == Nav::Runs))
                            (nav_link("/deliveries", "Deliveries", nav == Nav::Deliveries))
                            (nav_link("/workflows", "Workflows", nav == Nav::Workflows))
                        }
                        form.who method="post" action="/logout" {
                            span { (session.name) " · " (session.role_name()) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

fn nav_link(href: &str, text: &str, current: bool) -> Markup {
    html! {
        @if current {
            a href=(href) aria-current="page" { (text) }
        } @else {
            a href=(href) { (text) }
        }
    }
}

/// A status as an icon and its word, so that it never depends on colour alone.
pub(crate) fn status_badge(status: &str) -> Markup {
    html! {
        span class={ "badge status-" (status) } {
            span.icon aria-hidden="true" { (status_icon(status)) }
            " " (status)
        }
    }
}

/// The glyph drawn beside a status: the run graph's boxes draw the same ones.
pub(crate) use baton_core::graph::status_icon;

/// Milliseconds since the epoch as `2026-12-06 07:42:10 UTC`.
pub(crate) fn when(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The `datetime` attribute of a `<time>` element.
pub(crate) fn iso(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(String::new, |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    })
}

/// A duration in milliseconds as `1 h 02 min`, `3 min 04 s`, `5.2 s` or `120 ms`.
pub(crate) fn duration(millis: i64) -> String {
    let millis = millis.max(0);
    let secs = millis / 1000;
    match secs {
        0 => format!("{millis} ms"),
        1..60 => format!("{:.1} s", millis as f64 / 1000.0),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(120), "120 ms");
        assert_eq!(duration(5_240), "5.2 s");
        assert_eq!(duration(184_000), "3 min 04 s");
        assert_eq!(duration(3_720_000), "1 h 02 min");
        assert_eq!(duration(-5), "0 ms");
    }

    #[test]
    fn values_are_escaped() {
        let markup = html! { p { ("<script>alert(1)</script>") } }.into_string();
        assert_eq!(markup, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
    }

    #[test]
    fn pages_carry_the_security_headers() {
        let response = error_page(StatusCode::FORBIDDEN, "Refused", "no");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
