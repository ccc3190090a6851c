//! Bounds on jq evaluation: steps, time, memory and stack.
//!
//! A jq expression is a program, and a program may not end (`def f: f; f`), may recurse
//! without end (`def f: [f]; f`), may build values without end (`[range(1e9)]`) or may ask
//! for a huge value in one operation (`"x" * 1e10`). None of that may stop the process or
//! hold a thread for good, so every evaluation runs under [`Limits`]:
//!
//! - **steps**: jaq runs a compiled term tree; the data type it carries along (`Metered`)
//!   counts a step each time jaq looks a term up or calls a defined filter, so every loop
//!   and every recursion is counted, tail calls included. Built-ins that produce or walk
//!   values without calling back into jq are charged for the work they do, one step a
//!   value (see `guard`). Past `max_steps` the evaluation stops.
//! - **time**: the clock is read every [`CLOCK_EVERY`] steps and after every
//!   [`CLOCK_EVERY_BYTES`] allocated; past `max_time` it stops.
//! - **memory**: the bytes the evaluating thread allocated and did not free, as counted by
//!   [`MeteredAlloc`] when the program declares it its global allocator, are compared with
//!   `max_memory` at every step; built-ins that could allocate a lot in one go check their
//!   estimate first. Without [`MeteredAlloc`] only those estimates bound memory.
//! - **stack**: jaq recurses on the thread's stack; at every step the depth used is
//!   compared with [`RECURSION_STACK`], and values nested deeper than [`MAX_VALUE_DEPTH`]
//!   are refused where they would be walked recursively.
//!
//! Stopping is a panic with an [`Exceeded`] payload, caught where the evaluation started and
//! turned into an [`EvalError`](crate::expr::EvalError); the panic hook stays silent for it.
//! Evaluations run on threads of their own ([`pool`]), never on the caller's, so the stack
//! size is known and a caller on an async runtime is not held up.

mod alloc;
mod guard;
mod pool;

use std::cell::Cell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Once;
use std::time::{Duration, Instant};

use jaq_core::data::{DataT, HasLut};
use jaq_json::Val;

pub use alloc::MeteredAlloc;
pub(crate) use guard::{MAIN, funs, prelude, rewrite, value_weight};
pub(crate) use pool::on_eval_thread;
pub use pool::{
    MAX_IDLE, Offload, PoolError, STACK_SIZE, default_limits, offload, run_blocking,
    set_default_limits,
};

/// The bounds every jq evaluation runs under (the gateway config's `[expressions]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Steps one evaluation may take (see the module docs for what a step is).
    pub max_steps: u64,
    /// Wall-clock time one evaluation may take.
    pub max_time: Duration,
    /// Bytes one evaluation may hold allocated at once, beyond what it started with.
    pub max_memory: usize,
}

impl Limits {
    /// The default for `max_steps`: far above what a condition or template needs (a
    /// thousand-element array mapped and filtered takes some ten thousand).
    pub const DEFAULT_MAX_STEPS: u64 = 1_000_000;
    /// The default for `max_time`.
    pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(1);
    /// The default for `max_memory`: 64 MiB.
    pub const DEFAULT_MAX_MEMORY: usize = 64 << 20;
    /// The largest `max_steps` allowed: the evaluation threads' stacks are sized so that
    /// dropping the deepest value this many steps can build fits (see [`STACK_SIZE`]).
    pub const MAX_STEPS_CEILING: u64 = 10_000_000;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: Self::DEFAULT_MAX_STEPS,
            max_time: Self::DEFAULT_MAX_TIME,
            max_memory: Self::DEFAULT_MAX_MEMORY,
        }
    }
}

/// How often (in steps) the clock is read: reading it costs about as much as a few dozen
/// steps, and a thousand steps take well under a millisecond.
pub const CLOCK_EVERY: u64 = 1024;

/// The clock is also read after every this many bytes allocated: one step that copies a
/// large string or array takes long, and copying this much takes a few milliseconds.
pub const CLOCK_EVERY_BYTES: u64 = 64 << 20;

/// Stack an evaluation may use for jaq's own recursion. The evaluation threads have more
/// (see [`pool`]): the rest is for work that recurses without taking steps, such as
/// dropping a deeply nested value.
pub const RECURSION_STACK: usize = 8 << 20;

/// The deepest nesting of arrays and objects that is walked recursively (converted to
/// text, compared, hashed, parsed). Deeper values are refused there with an error.
pub const MAX_VALUE_DEPTH: usize = 10_000;

/// Why an evaluation was stopped: the payload of the panic that stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// `max_steps` steps taken.
    Steps(u64),
    /// `max_time` passed.
    Time(Duration),
    /// More than `max_memory` bytes allocated, or about to be.
    Memory(usize),
    /// jaq's recursion used up [`RECURSION_STACK`].
    Recursion,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Steps(n) => write!(f, "stopped after {n} steps (expressions.max_steps)"),
            Self::Time(t) => write!(
                f,
                "stopped after {} (expressions.max_time)",
                crate::HumanDuration(*t)
            ),
            Self::Memory(bytes) => write!(
                f,
                "stopped: it needs more than {} of memory (expressions.max_memory)",
                Bytes(*bytes)
            ),
            Self::Recursion => write!(
                f,
                "stopped: it recursed deeper than {} of stack allows",
                Bytes(RECURSION_STACK)
            ),
        }
    }
}

/// A byte count for messages: `64 MiB`, `1536 KiB`, `100 bytes`.
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", n >> 10)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// What the evaluation running on this thread may still use. Idle (nothing running), its
/// counters are at their maximum and its floor at zero, so it never stops anything.
struct Budget {
    steps_left: Cell<u64>,
    until_clock: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    clock_at_bytes: Cell<u64>,
    memory_cap: Cell<isize>,
    stack_floor: Cell<usize>,
    limits: Cell<Option<Limits>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            steps_left: Cell::new(u64::MAX),
            until_clock: Cell::new(u64::MAX),
            deadline: Cell::new(None),
            clock_at_bytes: Cell::new(u64::MAX),
            memory_cap: Cell::new(isize::MAX),
            stack_floor: Cell::new(0),
            limits: Cell::new(None),
        }
    };
}

impl Budget {
    fn start(&self, limits: Limits) {
        self.steps_left.set(limits.max_steps);
        self.until_clock.set(CLOCK_EVERY);
        self.deadline.set(Some(Instant::now() + limits.max_time));
        self.clock_at_bytes.set(CLOCK_EVERY_BYTES);
        self.memory_cap
            .set(isize::try_from(limits.max_memory).unwrap_or(isize::MAX));
        self.stack_floor
            .set(stack_position().saturating_sub(RECURSION_STACK));
        self.limits.set(Some(limits));
        alloc::start();
    }

    fn stop(&self) {
        alloc::stop();
        self.steps_left.set(u64::MAX);
        self.until_clock.set(u64::MAX);
        self.deadline.set(None);
        self.clock_at_bytes.set(u64::MAX);
        self.memory_cap.set(isize::MAX);
        self.stack_floor.set(0);
        self.limits.set(None);
    }

    /// Stops the evaluation: makes the budget idle first, so that nothing run while the
    /// stack unwinds stops it a second time (a panic during a panic aborts).
    #[cold]
    fn exceed(&self, why: impl FnOnce(Limits) -> Exceeded) -> ! {
        let limits = self.limits.get().unwrap_or_default();
        self.stop();
        std::panic::panic_any(why(limits))
    }

    #[cold]
    fn check_clock(&self, allocated: u64) {
        self.until_clock.set(CLOCK_EVERY);
        self.clock_at_bytes
            .set(allocated.saturating_add(CLOCK_EVERY_BYTES));
        if self.deadline.get().is_some_and(|d| Instant::now() >= d) {
            self.exceed(|l| Exceeded::Time(l.max_time));
        }
    }
}

/// An address on the current stack: it decreases as the stack grows (on every platform
/// baton runs on).
#[inline(always)]
fn stack_position() -> usize {
    let marker = 0u8;
    std::ptr::addr_of!(marker) as usize
}

/// Counts `steps` steps of the running evaluation and checks every bound.
#[inline]
pub(crate) fn charge(steps: u64) {
    BUDGET.with(|b| {
        let left = b.steps_left.get();
        if left < steps {
            b.exceed(|l| Exceeded::Steps(l.max_steps));
        }
        b.steps_left.set(left - steps);
        let (net, allocated) = alloc::counts();
        let until = b.until_clock.get();
        if until <= steps || allocated >= b.clock_at_bytes.get() {
            b.check_clock(allocated);
        } else {
            b.until_clock.set(until - steps);
        }
        if net > b.memory_cap.get() {
            b.exceed(|l| Exceeded::Memory(l.max_memory));
        }
        if stack_position() < b.stack_floor.get() {
            b.exceed(|_| Exceeded::Recursion);
        }
    });
}

/// One step: every term jaq runs and every filter call.
#[inline]
fn tick() {
    charge(1);
}

/// Stops the running evaluation unless `bytes` more bytes fit under `max_memory`: for
/// built-ins that would allocate that much in one go, before they do.
pub(crate) fn reserve(bytes: usize) {
    BUDGET.with(|b| {
        let used = alloc::counts().0.max(0) as usize;
        let cap = b.memory_cap.get() as usize;
        if used.saturating_add(bytes) > cap {
            b.exceed(|l| Exceeded::Memory(l.max_memory));
        }
    });
}

/// The data jaq carries through an evaluation: the look-up table of the compiled program,
/// and the step meter. jaq clones it on every call of a defined filter (tail calls too) and
/// asks it for the table on every term it runs, which is where steps are counted.
pub(crate) struct Metered<'a>(&'a jaq_core::Lut<Bounded>);

impl Clone for Metered<'_> {
    fn clone(&self) -> Self {
        tick();
        Self(self.0)
    }
}

impl<'a> HasLut<'a, Bounded> for Metered<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Bounded> {
        tick();
        self.0
    }
}

impl<'a> Metered<'a> {
    pub(crate) fn new(lut: &'a jaq_core::Lut<Bounded>) -> Self {
        Self(lut)
    }
}

/// The kind of data baton's jq programs run on: jaq's JSON values, metered.
pub(crate) struct Bounded;

impl DataT for Bounded {
    type V<'a> = Val;
    type Data<'a> = Metered<'a>;
}

/// Runs `f` as one evaluation under `limits` on this thread: an [`Exceeded`] stop comes
/// back as `Err`, any other panic goes on unwinding.
pub(crate) fn bounded<R>(limits: Limits, f: impl FnOnce() -> R) -> Result<R, Exceeded> {
    quiet_hook();
    BUDGET.with(|b| b.start(limits));
    let result = catch_unwind(AssertUnwindSafe(f));
    BUDGET.with(Budget::stop);
    match result {
        Ok(r) => Ok(r),
        Err(payload) => match payload.downcast::<Exceeded>() {
            Ok(why) => {
                pool::retire();
                Err(*why)
            }
            Err(other) => resume_unwind(other),
        },
    }
}

/// Installs (once) a panic hook that prints nothing for an [`Exceeded`] stop, which is an
/// expected outcome, and hands every other panic to the hook that was there before.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Exceeded>().is_none() {
                previous(info);
            }
        }));
    });
}
