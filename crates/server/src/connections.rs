//! The listener: accepts connections up to `server.max_connections`, enforces the header,
//! body and idle timeouts, keeps connections for everything but webhooks, and shuts down
//! gracefully.
//!
//! Every connection is in one phase at a time, recorded with the millisecond it began:
//!
//! - *headers*: from its start, or from the first byte after an answer, until hyper hands a
//!   whole request head to the service; closed after `header_timeout`;
//! - *busy*: a request is under way; its body is bounded by `body_timeout` ([`TimedBody`]),
//!   the rest by the handler;
//! - *idle*: answered, waiting for a next request; closed after `idle_timeout`.
//!
//! hyper has a header-read timeout of its own, but it starts again as soon as a connection
//! goes idle, so idle keep-alive connections would be held to the header timeout; it has no
//! idle timeout. Here the phase costs two stores to an atomic per request, and each
//! connection's task has one sleep, pushed back only when it fires early.
//!
//! At the cap the connection that waited longest without a request under way (headers not
//! complete, or idle) is closed to make room, so connections that send a partial request and
//! stop cannot keep new ones out; only when every connection has a request under way does the
//! loop stop accepting until one closes. At most `max_connections - reserved_connections`
//! webhook requests are served at once; beyond that a webhook gets 503 with `Retry-After`,
//! so the probes, the metrics and the API always have connections left.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use baton_config::ServerConfig;
use baton_core::HumanDuration;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower::util::Oneshot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// File descriptors kept beside the connections: the store, logs, adapters' outbound
/// connections and the pipes of `exec` commands.
const FD_HEADROOM: u64 = 128;

/// The first wait after an accept error; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest wait between two accepts that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long accepting must work without a failure before it is logged as working again: a
/// listener out of file descriptors fails and succeeds by turns, and each turn is no news.
const ACCEPT_QUIET: Duration = Duration::from_secs(5);

/// `Retry-After` of the 503 a webhook gets when its share of connections is in use.
const RETRY_AFTER_SECS: &str = "5";

/// The body of that 503.
const BUSY_BODY: &str = r#"{"error":{"code":"busy","message":"every connection for webhooks has a request under way (server.max_connections - server.reserved_connections); retry later"}}"#;

/// `[server]`'s connection settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header: Duration,
    body: Duration,
    idle: Duration,
    max: usize,
    hooks: usize,
}

impl Limits {
    /// The limits of `server`.
    pub(crate) fn new(server: &ServerConfig) -> Self {
        let max = server.max_connections.max(1);
        Self {
            header: server.header_timeout.0,
            body: server.body_timeout.0,
            idle: server.idle_timeout.0,
            max,
            hooks: max.saturating_sub(server.reserved_connections).max(1),
        }
    }
}

/// A connection's phase, in the low bits of [`Conn::state`].
const HEADERS: u64 = 0;
const BUSY: u64 = 1;
const IDLE: u64 = 2;
const PHASE: u64 = 3;

/// What the accept loop asks of a connection, in [`Conn::ask`].
const ASK_NOTHING: u8 = 0;
const ASK_FINISH: u8 = 1;
const ASK_CLOSE: u8 = 2;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The peer closed it, or hyper did (after `Connection: close`, an error, a shutdown).
    Closed,
    /// Its headers took longer than `header_timeout`.
    HeaderTimeout,
    /// It was idle longer than `idle_timeout`.
    IdleTimeout,
    /// Closed to make room at the cap.
    Evicted,
}

/// One open connection, shared by its task, its I/O and its service.
struct Conn {
    shared: Arc<Shared>,
    /// The phase (low two bits) and the millisecond since [`Shared::epoch`] it began.
    state: AtomicU64,
    ask: AtomicU8,
    wake: Notify,
    slot: usize,
}

impl Conn {
    fn millis(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    fn enter(&self, phase: u64) {
        let since = if phase == BUSY { 0 } else { self.millis() };
        self.state.store(since << 2 | phase, Ordering::Relaxed);
    }

    /// A read returned bytes: an idle connection starts a request.
    fn on_bytes(&self) {
        if self.state.load(Ordering::Relaxed) & PHASE == IDLE {
            self.enter(HEADERS);
        }
    }

    /// Since when this connection waits without a request under way, if it does.
    fn waiting_since(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Relaxed);
        (state & PHASE != BUSY).then_some(state >> 2)
    }

    /// The reason to close it now, or when to look again.
    fn overdue(&self, limits: &Limits) -> Result<Ended, Instant> {
        let state = self.state.load(Ordering::Relaxed);
        let (limit, reason) = match state & PHASE {
            HEADERS => (limits.header, Ended::HeaderTimeout),
            IDLE => (limits.idle, Ended::IdleTimeout),
            _ => return Err(Instant::now() + limits.header),
        };
        let deadline = self.shared.epoch + Duration::from_millis(state >> 2) + limit;
        if deadline <= Instant::now() {
            Ok(reason)
        } else {
            Err(deadline)
        }
    }
}

/// The open connections.
#[derive(Default)]
struct Open {
    slots: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
    count: usize,
    /// Asked to close to make room, and not gone yet.
    evicting: usize,
}

/// What every connection shares.
struct Shared {
    limits: Limits,
    epoch: Instant,
    http: http1::Builder,
    open: Mutex<Open>,
    /// Wakes the accept loop when a connection closed.
    closed: Notify,
    /// Webhook requests under way.
    hooks: AtomicUsize,
    open_gauge: metrics::Gauge,
    header_timeouts: metrics::Counter,
    idle_timeouts: metrics::Counter,
    evictions: metrics::Counter,
    busy_hooks: metrics::Counter,
}

impl Shared {
    fn new(limits: Limits) -> Arc<Self> {
        let mut http = http1::Builder::new();
        // The phases below time headers and idle connections; hyper's own header timer
        // would also cut idle connections at the header timeout.
        http.header_read_timeout(None);
        let closed = |reason: &'static str| metrics::counter!("baton_connections_closed_total", "reason" => reason);
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            http,
            open: Mutex::default(),
            closed: Notify::new(),
            hooks: AtomicUsize::new(0),
            open_gauge: metrics::gauge!("baton_connections_open"),
            header_timeouts: closed("header_timeout"),
            idle_timeouts: closed("idle_timeout"),
            evictions: closed("evicted"),
            busy_hooks: metrics::counter!("baton_webhooks_busy_total"),
        })
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent list.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(self: &Arc<Self>) -> Arc<Conn> {
        let mut open = self.open();
        let slot = open.free.pop().unwrap_or(open.slots.len());
        let conn = Arc::new(Conn {
            shared: self.clone(),
            state: AtomicU64::new(0),
            ask: AtomicU8::new(ASK_NOTHING),
            wake: Notify::new(),
            slot,
        });
        conn.enter(HEADERS);
        if slot == open.slots.len() {
            open.slots.push(Some(conn.clone()));
        } else {
            open.slots[slot] = Some(conn.clone());
        }
        open.count += 1;
        drop(open);
        self.open_gauge.increment(1.0);
        conn
    }

    fn unregister(&self, conn: &Conn, ended: Ended) {
        let mut open = self.open();
        open.slots[conn.slot] = None;
        open.free.push(conn.slot);
        open.count -= 1;
        if conn.ask.load(Ordering::Relaxed) == ASK_CLOSE {
            open.evicting -= 1;
        }
        drop(open);
        self.open_gauge.decrement(1.0);
        match ended {
            Ended::HeaderTimeout => self.header_timeouts.increment(1),
            Ended::IdleTimeout => self.idle_timeouts.increment(1),
            Ended::Evicted => self.evictions.increment(1),
            Ended::Closed => {}
        }
        self.closed.notify_one();
    }

    /// True when one more connection fits. At the cap, asks the connection that waited
    /// longest without a request to close, unless one is closing already.
    fn make_room(&self) -> Room {
        let mut open = self.open();
        if open.count < self.limits.max {
            return Room::Free(open.count);
        }
        if open.evicting > 0 {
            return Room::Evicting;
        }
        match Self::longest_waiting(&open) {
            Some(conn) => {
                Self::evict(&mut open, &conn);
                Room::Evicting
            }
            None => Room::Full,
        }
    }

    /// Closes the connection that waited longest without a request, if there is one: file
    /// descriptors ran out, and a closed connection gives one back.
    fn shed_one(&self) -> bool {
        let mut open = self.open();
        let Some(conn) = Self::longest_waiting(&open) else {
            return false;
        };
        Self::evict(&mut open, &conn);
        true
    }

    fn evict(open: &mut Open, conn: &Conn) {
        conn.ask.store(ASK_CLOSE, Ordering::Relaxed);
        conn.wake.notify_one();
        open.evicting += 1;
    }

    /// A connection asked to close for room had started a request by the time it looked:
    /// it stays, and the accept loop looks for another.
    fn spare(&self, conn: &Conn) {
        let mut open = self.open();
        if conn
            .ask
            .compare_exchange(ASK_CLOSE, ASK_NOTHING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            open.evicting -= 1;
        }
        drop(open);
        self.closed.notify_one();
    }

    fn longest_waiting(open: &Open) -> Option<Arc<Conn>> {
        open.slots
            .iter()
            .flatten()
            .filter(|c| c.ask.load(Ordering::Relaxed) == ASK_NOTHING)
            .filter_map(|c| Some((c.waiting_since()?, c)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, c)| c.clone())
    }

    /// Asks every connection to finish its request under way and close.
    fn finish_all(&self) -> usize {
        let open = self.open();
        for conn in open.slots.iter().flatten() {
            let _ = conn.ask.compare_exchange(
                ASK_NOTHING,
                ASK_FINISH,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            conn.wake.notify_one();
        }
        open.count
    }

    fn take_hook(&self) -> bool {
        if self.hooks.fetch_add(1, Ordering::Relaxed) < self.limits.hooks {
            true
        } else {
            self.hooks.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

enum Room {
    /// Room for one more; this many are open.
    Free(usize),
    /// A connection was asked to close to make room.
    Evicting,
    /// Every connection has a request under way.
    Full,
}

/// The accept loop's trouble, logged once when it begins and once when it ends.
#[derive(Default)]
struct Trouble {
    at_cap: bool,
    /// The kind of the failing accepts, and when the last one failed.
    accept_failing: Option<((io::ErrorKind, Option<i32>), Instant)>,
}

impl Trouble {
    fn at_cap(&mut self, limits: &Limits, full: bool) {
        if !self.at_cap {
            self.at_cap = true;
            tracing::warn!(
                max_connections = limits.max,
                all_busy = full,
                "connection cap reached: closing the connections that waited longest without a request to make room, or, while every connection has one under way, waiting for one to close"
            );
        }
    }

    fn below_cap(&mut self, limits: &Limits, open: usize) {
        // Some room before saying so, so that a cap that is reached again at once is not
        // logged for every connection.
        if self.at_cap && open < limits.max - limits.max / 4 {
            self.at_cap = false;
            tracing::info!(open, "below the connection cap again");
        }
    }

    fn accept_failed(&mut self, error: &io::Error) {
        let key = (error.kind(), error.raw_os_error());
        let known = self.accept_failing.is_some_and(|(k, _)| k == key);
        self.accept_failing = Some((key, Instant::now()));
        if !known {
            tracing::error!(
                error = error as &dyn std::error::Error,
                "accepting connections failed; retrying until it works (out of file descriptors: closing the connections that waited longest without a request)"
            );
        }
    }

    fn accepted(&mut self) {
        if let Some((_, last)) = self.accept_failing
            && last.elapsed() >= ACCEPT_QUIET
        {
            self.accept_failing = None;
            tracing::info!("accepting connections again");
        }
    }
}

/// An accept error that concerns one connection, not the listener: go on at once.
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// `EMFILE` or `ENFILE`: no file descriptor left for the new connection.
fn out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        error
            .raw_os_error()
            .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Raises the soft limit on open files to what `limits` needs (at most the hard limit), and
/// warns when even that is too low. Only up to what is needed: commands baton starts inherit
/// the limit, and some programs close every descriptor up to it when they start.
fn fit_open_files(limits: &Limits) {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let needed = limits.max as u64 + FD_HEADROOM;
        let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                return;
            }
        };
        let mut allowed = soft;
        if soft < needed {
            let target = needed.min(hard);
            match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                Ok(()) => allowed = target,
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
        if allowed < needed {
            tracing::warn!(
                max_connections = limits.max,
                open_file_limit = allowed,
                hard_limit = hard,
                "server.max_connections needs about {needed} open files (the connections and {FD_HEADROOM} for the store, logs and commands), more than the limit of {allowed}: accepting fails with \"Too many open files\" before the cap is reached; raise the limit (`ulimit -n`, systemd's LimitNOFILE=) or lower server.max_connections"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = limits;
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests under way
/// finish and returns once every connection is closed.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<TimedBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    fit_open_files(&limits);
    let shared = Shared::new(limits);
    let mut shutdown = pin!(shutdown);
    let mut trouble = Trouble::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    'accepting: loop {
        loop {
            match shared.make_room() {
                Room::Free(open) => {
                    trouble.below_cap(&limits, open);
                    break;
                }
                room => trouble.at_cap(&limits, matches!(room, Room::Full)),
            }
            tokio::select! {
                () = &mut shutdown => break 'accepting,
                () = shared.closed.notified() => {}
            }
        }
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                trouble.accepted();
                backoff = ACCEPT_BACKOFF_MIN;
                // A server-sent event is a small write after a pause: with Nagle's algorithm
                // it waited for the client's delayed acknowledgement, up to 40 ms (bench/ui).
                let _ = stream.set_nodelay(true);
                let conn = shared.register();
                tokio::spawn(run(conn, stream, app.clone()));
            }
            Err(e) if concerns_one_connection(&e) => {}
            Err(e) => {
                trouble.accept_failed(&e);
                // A connection closed for it gives a descriptor back; the pause grows only
                // while there is none to close.
                let shed = out_of_descriptors(&e) && shared.shed_one();
                tokio::select! {
                    () = &mut shutdown => break,
                    () = shared.closed.notified(), if shed => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                if !shed {
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
    // New connections are refused from here on; those open finish what they have under way.
    drop(listener);
    while shared.finish_all() > 0 {
        shared.closed.notified().await;
    }
}

/// Serves one connection until it closes, times out or is asked to close.
async fn run<S>(conn: Arc<Conn>, stream: TcpStream, app: S)
where
    S: tower::Service<Request<TimedBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let limits = conn.shared.limits;
    let ended = {
        let io = TokioIo::new(Watched {
            stream,
            conn: conn.clone(),
        });
        let service = Tracked {
            app,
            conn: conn.clone(),
        };
        let mut http = pin!(conn.shared.http.serve_connection(io, service));
        let mut timer = pin!(tokio::time::sleep(limits.header));
        loop {
            tokio::select! {
                biased;
                result = http.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = &e as &dyn std::error::Error, "connection ended with an error");
                    }
                    break Ended::Closed;
                }
                () = conn.wake.notified() => match conn.ask.load(Ordering::Relaxed) {
                    // Its phase only changes while `http` is polled, so it cannot start a
                    // request between this check and the close.
                    ASK_CLOSE if conn.waiting_since().is_some() => break Ended::Evicted,
                    ASK_CLOSE => conn.shared.spare(&conn),
                    _ => http.as_mut().graceful_shutdown(),
                },
                () = &mut timer => match conn.overdue(&limits) {
                    Ok(ended) => break ended,
                    Err(next) => timer.as_mut().reset(next),
                },
            }
        }
        // The connection (and its socket) is dropped here, before its slot is given back.
    };
    conn.shared.unregister(&conn, ended);
}

/// A connection's socket, which notes when an idle connection starts a request.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.on_bytes();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The service hyper calls for each request of one connection: notes the phase, keeps
/// webhooks to their share of connections, and bounds the body.
struct Tracked<S> {
    app: S,
    conn: Arc<Conn>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<TimedBody>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer<Oneshot<S, Request<TimedBody>>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.conn.enter(BUSY);
        let shared = &self.conn.shared;
        let hook = request.uri().path().starts_with("/hooks/");
        if hook && !shared.take_hook() {
            shared.busy_hooks.increment(1);
            return Answer::Refused {
                response: Some(busy()),
                _done: Done {
                    conn: self.conn.clone(),
                    hook: false,
                },
            };
        }
        let limit = shared.limits.body;
        let request = request.map(|body| TimedBody {
            inner: body,
            limit,
            deadline: None,
        });
        Answer::Served {
            inner: self.app.clone().oneshot(request),
            _done: Done {
                conn: self.conn.clone(),
                hook,
            },
        }
    }
}

/// 503 for a webhook over its share of connections. The connection closes after it, which
/// gives the connection back.
fn busy() -> Response<Body> {
    let mut response = Response::new(Body::from(BUSY_BODY));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Marks the end of a request when dropped (answered or abandoned): the connection is idle
/// again and a webhook's share is given back.
struct Done {
    conn: Arc<Conn>,
    hook: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.hook {
            self.conn.shared.hooks.fetch_sub(1, Ordering::Relaxed);
        }
        self.conn.enter(IDLE);
    }
}

pin_project_lite::pin_project! {
    /// The answer to one request.
    #[project = AnswerProj]
    pub(crate) enum Answer<F> {
        /// The app answers.
        Served { #[pin] inner: F, _done: Done },
        /// Refused before the app saw it.
        Refused { response: Option<Response<Body>>, _done: Done },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Served { inner, .. } => inner.poll(cx),
            AnswerProj::Refused { response, .. } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(busy)))
            }
        }
    }
}

/// A request body took longer than `server.body_timeout` to arrive.
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {0} (server.body_timeout)")]
pub(crate) struct BodyTimedOut(HumanDuration);

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] once it has waited `server.body_timeout`
    /// for data, counted from the first wait: a body that arrives with its headers, as
    /// webhooks do, never arms a timer.
    pub(crate) struct TimedBody {
        #[pin]
        inner: Incoming,
        limit: Duration,
        deadline: Option<Pin<Box<Sleep>>>,
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = *this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(HumanDuration(limit)).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
