//! An HTML form's fields (`application/x-www-form-urlencoded`), read whole up to a bound.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::Response;

use crate::AppState;

use super::layout;

/// The most a form may send: the editor's workflow text is the largest field.
const MAX_FORM_BYTES: usize = 1 << 20;

/// The fields of a form, in order.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<Arc<AppState>> for Form {
    type Rejection = Response;

    async fn from_request(request: Request, _: &Arc<AppState>) -> Result<Self, Response> {
        let bytes = to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                layout::error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Form too large",
                    "The form could not be read: it is larger than 1 MiB or was cut off.",
                )
            })?;
        Ok(Self(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}
