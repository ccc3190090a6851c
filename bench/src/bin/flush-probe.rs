//! How long does this disk take to flush? Writes one 4 KiB page at a time into a file, the way
//! a write-ahead log grows, and times the `fdatasync` after each, at a fixed rate.
//!
//! `flush-probe [DIR] [SECONDS] [RATE]` (the current folder, 5 s and 1,000 flushes a second by
//! default; a rate of 0 flushes as fast as the disk answers)
//!
//! Run it on the disk that holds the store. A durable server answers a webhook only after its
//! commit is flushed, so no server on this disk can have a p99 below the flush's own tail at
//! that rate: one flush of 80 ms holds up every delivery that arrives meanwhile (see
//! docs/server.md, "What limits baton"). Nothing else should run beside it, or it measures the
//! contention too.
//!
//! Prints one line of JSON: `{"seconds", "flushes", "rate", "p50_ms", "p99_ms", "p999_ms",
//! "max_ms", "over_5ms"}`. The file is removed afterwards.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One page, as SQLite writes a WAL frame's page.
const PAGE: usize = 4096;
/// The file is written round and round within this size, as a WAL restarts.
const FILE_PAGES: u64 = 4096;

fn usage() -> ! {
    eprintln!("usage: flush-probe [DIR] [SECONDS] [RATE]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > 3 {
        usage();
    }
    let dir = args
        .first()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let number = |i: usize, default: f64| -> f64 {
        args.get(i).map_or(default, |a| match a.parse::<f64>() {
            Ok(n) if n >= 0.0 && n.is_finite() => n,
            _ => usage(),
        })
    };
    let seconds = number(1, 5.0);
    let rate = number(2, 1000.0);

    let file = tempfile::tempfile_in(&dir).unwrap_or_else(|e| {
        eprintln!("flush-probe: cannot make a file in {}: {e}", dir.display());
        std::process::exit(1)
    });
    let page = [0x5au8; PAGE];
    // Written and flushed once ahead, so the timed flushes find their blocks allocated, as a
    // WAL's do once it has started over.
    for n in 0..FILE_PAGES {
        write_page(&file, n, &page);
    }
    file.sync_all().unwrap_or_else(|e| fail(e));

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    // Room for the flushes expected, within reason (a long run grows it as it goes).
    let expected = (seconds * rate.max(1000.0)).min(1e7) as usize;
    let mut took: Vec<Duration> = Vec::with_capacity(expected);
    let mut n: u64 = 0;
    while Instant::now() < end {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        write_page(&file, n % FILE_PAGES, &page);
        let before = Instant::now();
        file.sync_data().unwrap_or_else(|e| fail(e));
        took.push(before.elapsed());
        n += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    took.sort_unstable();
    let ms = |q: f64| -> f64 {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let over = took.len() - took.partition_point(|d| *d <= Duration::from_millis(5));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{{\"seconds\": {seconds}, \"flushes\": {}, \"rate\": {:.0}, \"p50_ms\": {:.3}, \
         \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}, \"over_5ms\": {over}}}",
        took.len(),
        took.len() as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        ms(1.0),
    );
}

fn write_page(file: &std::fs::File, n: u64, page: &[u8; PAGE]) {
    file.write_all_at(page, n * PAGE as u64)
        .unwrap_or_else(|e| fail(e));
}

fn fail(e: std::io::Error) -> ! {
    eprintln!("flush-probe: {e}");
    std::process::exit(1)
}
