//! Watch streams: the changes after a resourceVersion (replayed from the event log), then
//! live ones from the cluster's one broadcast feed, as chunked JSON lines; 410 as an
//! `ERROR` event when the log no longer reaches back that far.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::api::{self, Target};
use super::select::Selector;
use super::store::{Event, Feed};
use super::{Cluster, Inner};

/// How long a watch lasts without `timeoutSeconds` (the API server picks 30 to 60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which changes a stream sends.
struct Filter {
    resource: &'static str,
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    fn wants(&self, resource: &str, namespace: &str, object: &Value) -> bool {
        resource == self.resource
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.selector.matches(object)
    }
}

/// Counts a stream open while it lives.
struct Open(Arc<Inner>);

impl Open {
    fn new(inner: Arc<Inner>, resource: &str, namespace: &str) -> Self {
        let watches = &inner.watches;
        let now = watches.open.fetch_add(1, Ordering::SeqCst) + 1;
        watches.peak.fetch_max(now, Ordering::SeqCst);
        *crate::lock(&watches.opened)
            .entry((resource.to_owned(), namespace.to_owned()))
            .or_default() += 1;
        Self(inner)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.watches.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream being sent.
struct Stream {
    ready: VecDeque<Bytes>,
    feed: Option<broadcast::Receiver<Feed>>,
    filter: Filter,
    /// The last resourceVersion sent (live events at or before it were replayed).
    sent: u64,
    deadline: Instant,
    _open: Open,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Answers a watch request on `target`.
pub(super) fn respond(
    cluster: &Cluster,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Response {
    let filter = Filter {
        resource: target.resource.plural,
        namespace: target.namespace.clone(),
        selector: Selector::parse(
            query.get("labelSelector").map(String::as_str),
            query.get("fieldSelector").map(String::as_str),
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let asked = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
        .filter(|rv| *rv != 0);
    let initial = query.get("sendInitialEvents").is_some_and(|s| s == "true");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|s| s == "true");
    let open = Open::new(
        Arc::clone(&cluster.inner),
        target.resource.plural,
        target.namespace.as_deref().unwrap_or(""),
    );
    let state = cluster.state();
    let store = &state.store;
    let mut ready = VecDeque::new();
    let (feed, sent) = match asked {
        Some(rv) if rv < store.floor() && !initial => {
            let status = api::expired(rv, store.floor()).body();
            ready.push_back(line("ERROR", &status));
            (None, rv)
        }
        Some(rv) if !initial => {
            let (feed, past) = store.subscribe(rv);
            let mut sent = rv;
            for event in past
                .iter()
                .filter(|e| filter.wants(&e.resource, &e.namespace, &e.object))
            {
                ready.push_back(line(event.kind, &event.object));
                sent = event.rv;
            }
            (Some(feed), sent.max(rv))
        }
        _ => {
            let now = store.rv();
            let (feed, _) = store.subscribe(now);
            let current = store
                .list(filter.resource, filter.namespace.as_deref())
                .filter(|(k, o)| filter.wants(&k.0, &k.1, o));
            for (_, object) in current {
                ready.push_back(line("ADDED", object));
            }
            if initial && bookmarks {
                let bookmark = json!({
                    "kind": target.resource.kind, "apiVersion": target.resource.api_version(),
                    "metadata": {"resourceVersion": now.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}},
                });
                ready.push_back(line("BOOKMARK", &bookmark));
            }
            (Some(feed), now)
        }
    };
    drop(state);
    let stream = Stream {
        ready,
        feed,
        filter,
        sent,
        deadline: Instant::now() + timeout,
        _open: open,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, next));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The next chunk of a stream, or its end (timeout, a dropped feed, a lagging reader,
/// [`Cluster::drop_watches`]).
async fn next(mut stream: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    loop {
        if let Some(chunk) = stream.ready.pop_front() {
            return Some((Ok(chunk), stream));
        }
        let feed = stream.feed.as_mut()?;
        let received = tokio::time::timeout_at(stream.deadline, feed.recv()).await;
        let event: Arc<Event> = match received {
            Ok(Ok(Feed::Event(event))) => event,
            // The deadline, the cluster gone, a reader too slow to keep up (it watches
            // again from what it saw), or every watch dropped: the stream ends.
            _ => return None,
        };
        if event.rv > stream.sent
            && stream
                .filter
                .wants(&event.resource, &event.namespace, &event.object)
        {
            stream.sent = event.rv;
            stream.ready.push_back(line(event.kind, &event.object));
        }
    }
}
