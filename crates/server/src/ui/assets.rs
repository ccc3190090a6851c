//! The stylesheet, the script and the icon, compiled into the binary and served at
//! `/ui/assets/<name>?v=<hash>`. The hash of the content is in every address, so a
//! browser may keep them for a year and still never runs an old script after an upgrade.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The brand mark drawn in the header (inline, so it follows the text colour).
pub(crate) const LOGO: &str = r#"<svg class="logo" viewBox="0 0 24 24" width="22" height="22" aria-hidden="true"><path d="M4 20 20 4" stroke="currentColor" stroke-width="3" stroke-linecap="round"/><circle cx="19" cy="5" r="3" fill="currentColor"/></svg>"#;

/// Every asset: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "baton.css",
        "text/css; charset=utf-8",
        include_str!("assets/baton.css"),
    ),
    (
        "baton.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/baton.js"),
    ),
    (
        "editor.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/editor.js"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

/// The first 12 hex digits of SHA-256 over every asset.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    for (name, _, content) in ASSETS {
        hash.update(name.as_bytes());
        hash.update(content.as_bytes());
    }
    hex::encode(&hash.finalize()[..6])
});

/// The address of asset `name`, with the version that makes it cacheable.
pub(crate) fn url(name: &str) -> String {
    format!("/ui/assets/{name}?v={}", *VERSION)
}

/// `GET /ui/assets/{name}`.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    let Some((_, kind, content)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let mut response = (*content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
