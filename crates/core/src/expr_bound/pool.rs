//! The threads evaluations run on.
//!
//! An evaluation never runs on its caller's thread: the caller may be an async runtime's
//! worker, which must not be held for up to `max_time`, and only a thread started here has
//! a known stack, large enough to drop the deepest value an evaluation can build (work that
//! recurses without taking steps). Threads are kept for reuse once they finish a job, up
//! to [`MAX_IDLE`]; more are started when all are busy.
//!
//! [`offload`] and [`run_blocking`] run a closure on such a thread with the bounds to use;
//! every evaluation inside it (conditions, templates, trigger filters) is bounded by them.
//! An evaluation started anywhere else ([`on_eval_thread`]) hops to a pool thread and waits,
//! bounded by [`default_limits`].

use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::Limits;

/// Stack of an evaluation thread: [`RECURSION_STACK`](super::RECURSION_STACK) for jaq's
/// recursion and the rest for dropping and unwinding values up to the depth the step
/// ceiling allows. Only the pages a thread touches take memory.
pub const STACK_SIZE: usize = 512 << 20;

/// Idle evaluation threads kept for reuse.
pub const MAX_IDLE: usize = 8;

/// An evaluation thread could not run a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The operating system refused a new thread.
    #[error("could not start a thread to evaluate jq expressions: {0}")]
    Spawn(String),
    /// The job ended without an answer (it panicked: a bug, reported by the panic hook).
    #[error("the thread evaluating jq expressions stopped without an answer")]
    Lost,
}

type Job = Box<dyn FnOnce() + Send>;

static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

static DEFAULT_LIMITS: Mutex<Option<Limits>> = Mutex::new(None);

thread_local! {
    /// The bounds of the job running on this thread; `None` off the pool.
    static SCOPE: Cell<Option<Limits>> = const { Cell::new(None) };
    /// Set when an evaluation on this thread was stopped: its stack may have grown deep,
    /// so the thread ends after the job instead of staying idle with those pages.
    static RETIRE: Cell<bool> = const { Cell::new(false) };
}

/// Sets the bounds of evaluations started off the pool (see [`on_eval_thread`]): the
/// gateway's `[expressions]`, set once at startup. Default: [`Limits::default`].
pub fn set_default_limits(limits: Limits) {
    *DEFAULT_LIMITS.lock().unwrap_or_else(|e| e.into_inner()) = Some(limits);
}

/// The bounds of evaluations started off the pool.
pub fn default_limits() -> Limits {
    DEFAULT_LIMITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_default()
}

/// The bounds of the job running on this thread, if it is an evaluation thread.
pub(crate) fn current_limits() -> Option<Limits> {
    SCOPE.with(Cell::get)
}

/// Marks this thread to end after its job (see `RETIRE`).
pub(super) fn retire() {
    RETIRE.with(|r| r.set(true));
}

/// Runs `f` with the bounds that apply: inline on an evaluation thread, else on a pool
/// thread with [`default_limits`], waiting for it.
pub(crate) fn on_eval_thread<R: Send + 'static>(
    f: impl FnOnce(Limits) -> R + Send + 'static,
) -> Result<R, PoolError> {
    match current_limits() {
        Some(limits) => Ok(f(limits)),
        None => run_blocking(default_limits(), f),
    }
}

/// Runs `f` on an evaluation thread, every evaluation inside bounded by `limits`, and
/// waits for it on this thread. Inline when this already is an evaluation thread.
pub fn run_blocking<R: Send + 'static>(
    limits: Limits,
    f: impl FnOnce(Limits) -> R + Send + 'static,
) -> Result<R, PoolError> {
    if current_limits().is_some() {
        return Ok(scoped(limits, f));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    submit(Box::new(move || {
        let _ = tx.send(scoped(limits, f));
    }))?;
    rx.recv().map_err(|_| PoolError::Lost)
}

/// Runs `f` on an evaluation thread, every evaluation inside bounded by `limits`; the
/// future resolves with its result. Dropping the future does not stop `f`, which is
/// bounded anyway; its result is then dropped.
pub fn offload<R: Send + 'static>(
    limits: Limits,
    f: impl FnOnce(Limits) -> R + Send + 'static,
) -> Offload<R> {
    let shared = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    let reply = Reply(shared.clone());
    let failed = submit(Box::new(move || {
        reply.send(scoped(limits, f));
    }))
    .err();
    Offload { shared, failed }
}

/// The answer of an [`offload`]ed job.
pub struct Offload<R> {
    shared: Arc<Mutex<Slot<R>>>,
    failed: Option<PoolError>,
}

struct Slot<R> {
    value: Option<R>,
    closed: bool,
    waker: Option<Waker>,
}

impl<R> Future for Offload<R> {
    type Output = Result<R, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let mut slot = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Ok(value));
        }
        if slot.closed {
            return Poll::Ready(Err(PoolError::Lost));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The job's end of an [`Offload`]: dropped without an answer (a panic), it closes the slot
/// so that the future does not wait for good.
struct Reply<R>(Arc<Mutex<Slot<R>>>);

impl<R> Reply<R> {
    fn send(self, value: R) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn scoped<R>(limits: Limits, f: impl FnOnce(Limits) -> R) -> R {
    let outer = SCOPE.with(|s| s.replace(Some(limits)));
    // Restored on unwind too: a job that panics leaves the thread as it found it.
    struct Restore(Option<Limits>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f(limits)
}

fn submit(mut job: Job) -> Result<(), PoolError> {
    loop {
        let idle = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some(worker) = idle else {
            return spawn(job);
        };
        match worker.send(job) {
            Ok(()) => return Ok(()),
            // That thread ended; try the next.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
}

fn spawn(first: Job) -> Result<(), PoolError> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("baton-expr".to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let mut next = Some(first);
            while let Some(job) = next.take() {
                // A panicking job drops its reply, which tells the caller; the thread
                // goes on.
                let _ = catch_unwind(AssertUnwindSafe(job));
                if RETIRE.with(Cell::get) {
                    return;
                }
                {
                    let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() >= MAX_IDLE {
                        return;
                    }
                    idle.push(tx.clone());
                }
                next = rx.recv().ok();
            }
        })
        .map(drop)
        .map_err(|e| PoolError::Spawn(e.to_string()))
}
