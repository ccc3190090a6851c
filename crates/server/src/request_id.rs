//! Request ids and the per-request tracing span, as one layer.
//!
//! Every request gets an `x-request-id`: the caller's, or a new one. The request runs inside
//! a `request` span that carries the id, and the answer returns the id. A 5xx answer is logged
//! as an error with its latency, any other at debug level.
//!
//! A new id goes into the request's extensions ([`GeneratedId`]), not its headers: the headers
//! stay what the sender sent, so a source whose delivery id is the `X-Request-Id` header
//! still finds it missing when the sender left it out.
//!
//! This was three tower-http layers (set the id, trace, propagate the id), added inside the
//! router: there each wrapped every route, whose boxed service axum clones per request, and
//! the trace layer also wrapped the answer's body. Around the router, as one layer, a webhook
//! costs about 5,000 instructions less (callgrind: 130,000-134,000 against 135,000-140,000
//! per request), on a path every delivery takes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// The header that carries a request's id, both ways.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id baton gave a request that came without `x-request-id`, in its extensions.
#[derive(Clone, Debug)]
pub(crate) struct GeneratedId(pub(crate) HeaderValue);

/// Ids for requests that come without one: a per-process prefix and a counter. (A random
/// UUID per request would cost a `getrandom` system call on the intake's hot path.)
#[derive(Clone)]
pub(crate) struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    /// Ids with a new random prefix, counting from 0.
    pub(crate) fn new() -> Self {
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Self {
            prefix: prefix.into(),
            next: Arc::default(),
        }
    }

    fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Hex digits, a dash and decimal digits: always a valid header value.
        HeaderValue::try_from(format!("{}-{n}", self.prefix))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestIds {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithRequestId {
            inner,
            ids: self.clone(),
        }
    }
}

/// The service [`RequestIds`] wraps around the router.
#[derive(Clone)]
pub(crate) struct WithRequestId<S> {
    inner: S,
    ids: RequestIds,
}

impl<S, B, R> Service<Request<B>> for WithRequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.make();
                request.extensions_mut().insert(GeneratedId(id.clone()));
                id
            }
        };
        // At `serve`'s default filter (`info`) the span costs about 8,000 instructions a
        // request (docs/server.md); with `BATON_LOG=warn` it is disabled and costs a check.
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %id.to_str().unwrap_or("-"),
        );
        Answer {
            inner: self.inner.call(request).instrument(span),
            id: Some(id),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a request under [`WithRequestId`]: the inner answer with the id added.
    pub struct Answer<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<HeaderValue>,
        started: Instant,
    }
}

impl<F, R, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = ready!(this.inner.as_mut().poll(cx));
        if let Ok(response) = &mut result {
            let status = response.status().as_u16();
            let _entered = this.inner.span().enter();
            let latency_ms = || this.started.elapsed().as_secs_f64() * 1e3;
            if status >= 500 {
                tracing::error!(status, latency_ms = latency_ms(), "request failed");
            } else {
                tracing::debug!(status, latency_ms = latency_ms(), "request finished");
            }
            if let Some(id) = this.id.take() {
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
        }
        Poll::Ready(result)
    }
}
