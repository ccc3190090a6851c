//! The web UI, served by `baton serve` itself: pages rendered on the server that read without
//! JavaScript, and a small script that adds live updates, confirmations and the editor.
//!
//! | address | page |
//! |---|---|
//! | `/` | redirects to `/runs` |
//! | `/login`, `/logout` | signing in with an API token ([`session`]) |
//! | `/runs`, `/runs/{id}` | runs, and one run's graph and stages |
//! | `/deliveries`, `/deliveries/{id}` | webhook deliveries |
//! | `/relays` | where deliveries are forwarded, and how each message fared |
//! | `/workflows`, `/workflows/{name}`, `/workflows/new`, `/workflows/{name}/edit` | workflows and the editor ([`editor`]) |
//! | `/ui/assets/{name}` | the stylesheet, scripts and icon ([`assets`]) |
//! | `/ui/events` | server-sent events that tell a page something changed ([`live`]) |
//!
//! Every page needs a session; actions also need the role the REST API asks for the same
//! call, a form token of the session, and a request from this site.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::api::find_token;

mod assets;
mod deliveries;
mod editor;
mod form;
mod layout;
mod list;
mod live;
mod relays;
mod run;
mod runs;
mod session;
mod workflows;

use form::Form;
use layout::Nav;
use session::Session;

/// The UI's routes.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .route("/ui/events", get(live::events))
        .merge(runs::routes())
        .merge(deliveries::routes())
        .merge(relays::routes())
        .merge(run::routes())
        .merge(workflows::routes())
        .merge(editor::routes())
}

/// `?next=` of the sign-in page.
#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// `GET /login`.
async fn login_page(Query(q): Query<Next>) -> Response {
    login_form(StatusCode::OK, session::safe_next(q.next.as_deref()), None)
}

fn login_form(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    let body = html! {
        section.login {
            h1 { "Sign in" }
            p.muted { "Use an API token from the config's " code { "[api] tokens" } ". It stays on the server: the browser keeps only a session cookie." }
            @if let Some(problem) = problem {
                p.notice.error role="alert" { (problem) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label {
                    "API token"
                    input type="password" name="token" autocomplete="current-password" required autofocus;
                }
                " "
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    let mut response = layout::page("Sign in", None, Nav::None, body);
    *response.status_mut() = status;
    response
}

/// `POST /login`: `token` and `next`.
async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, form: Form) -> Response {
    let next = session::safe_next(form.get("next")).to_owned();
    if !session::same_site(&headers) {
        return session::Refusal::CrossSite.into_response();
    }
    let given = form.get("token").unwrap_or_default().trim();
    let Some(token) = find_token(&state.tokens, given.as_bytes()) else {
        tracing::warn!("sign-in with an unknown token");
        return login_form(StatusCode::UNAUTHORIZED, &next, Some("Unknown token."));
    };
    let value = session::seal(token, session::unix_now() + session::LIFETIME_SECS);
    tracing::info!(token = %token.name, "signed in to the web UI");
    let mut response = Redirect::to(&next).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&value, &headers));
    response
}

/// `POST /logout`.
async fn logout(session: Session, headers: HeaderMap, form: Form) -> Response {
    if let Err(refusal) = session.check_action(&headers, form.get("csrf"), crate::api::VIEWER) {
        return refusal.into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}
