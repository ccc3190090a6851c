//! A global allocator that counts what a thread running a jq evaluation allocates.

// A global allocator is an `unsafe` trait: this module implements it by handing every call
// to the allocator it wraps, unchanged, and only counts sizes on the side.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts, per thread, the bytes allocated and not yet freed while a jq evaluation runs on
/// it; the evaluation's step check compares the count with `max_memory`
/// (see [`expr_bound`](super)). Everything else passes straight through to `A`.
///
/// Declare it in a program's `main.rs` for the memory bound to apply:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: baton_core::expr_bound::MeteredAlloc<std::alloc::System> =
///     baton_core::expr_bound::MeteredAlloc::new(std::alloc::System);
/// ```
///
/// What it counts: the net bytes the evaluating thread asked for since the evaluation
/// started (memory it frees that was allocated before, such as parts of its input, counts
/// as room). What it does not: memory allocated by other threads, and one allocation that
/// happens between two steps, which is seen at the next step; built-ins that could make
/// one large allocation check their estimate first instead. Outside an evaluation the cost
/// is one thread-local flag read per allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct MeteredAlloc<A = System> {
    inner: A,
}

impl<A> MeteredAlloc<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

struct Meter {
    active: Cell<bool>,
    net: Cell<isize>,
    allocated: Cell<u64>,
}

thread_local! {
    // Const-initialised with no destructor: reading it never allocates or registers
    // anything, which an allocator requires.
    static METER: Meter = const {
        Meter {
            active: Cell::new(false),
            net: Cell::new(0),
            allocated: Cell::new(0),
        }
    };
}

#[inline]
fn record(delta: isize) {
    let _ = METER.try_with(|m| {
        if m.active.get() {
            m.net.set(m.net.get().saturating_add(delta));
            if delta > 0 {
                m.allocated.set(
                    m.allocated
                        .get()
                        .saturating_add(delta.unsigned_abs() as u64),
                );
            }
        }
    });
}

/// Starts counting on this thread, from zero.
pub(super) fn start() {
    METER.with(|m| {
        m.net.set(0);
        m.allocated.set(0);
        m.active.set(true);
    });
}

/// Stops counting on this thread.
pub(super) fn stop() {
    METER.with(|m| {
        m.active.set(false);
        m.net.set(0);
        m.allocated.set(0);
    });
}

/// Since [`start`] on this thread: the bytes allocated and not freed, and all bytes
/// allocated.
#[inline]
pub(super) fn counts() -> (isize, u64) {
    METER.with(|m| (m.net.get(), m.allocated.get()))
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

// SAFETY: every method calls the same method of `inner` with the caller's arguments and
// returns its result; the counting touches only a thread-local `Cell`, never the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MeteredAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            record(size(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(size(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { self.inner.dealloc(ptr, layout) };
        record(-size(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(size(new_size) - size(layout.size()));
        }
        new
    }
}
