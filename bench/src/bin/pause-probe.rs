//! Does the machine pause? Sleeps 200 µs at a time and counts the wakeups that came late by
//! more than a threshold, and where in a 100 ms period of the wall clock each one fell.
//!
//! `pause-probe [SECONDS] [THRESHOLD_MS]` (5 s and 2 ms by default)
//!
//! Run it beside a benchmark. A process that does next to nothing should wake on time; when it
//! does not, something outside it held the CPU. Late wakeups bunched in one part of the period
//! point at the host: a VM whose host pauses it once it has used its share of a period shows
//! them at the same phase every 100 ms (see docs/server.md, "What limits baton").
//!
//! Prints one line of JSON: `{"seconds", "wakeups", "late", "late_ms_total", "worst_ms",
//! "late_by_phase"}`, the last counting late wakeups by the 10 ms of the period they fell in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long each sleep asks for.
const NAP: Duration = Duration::from_micros(200);
/// The period whose phase is reported, and its buckets.
const PERIOD_MS: u128 = 100;
const BUCKETS: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: f64| -> f64 {
        args.get(i).map_or(default, |a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("usage: pause-probe [SECONDS] [THRESHOLD_MS]");
                std::process::exit(2)
            })
        })
    };
    let seconds = number(0, 5.0);
    let threshold = Duration::from_secs_f64(number(1, 2.0) / 1000.0);

    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut wakeups, mut late) = (0u64, 0u64);
    let (mut late_total, mut worst) = (Duration::ZERO, Duration::ZERO);
    let mut by_phase = [0u64; BUCKETS];
    loop {
        let asleep = Instant::now();
        if asleep >= end {
            break;
        }
        std::thread::sleep(NAP);
        let over = asleep.elapsed().saturating_sub(NAP);
        wakeups += 1;
        if over > threshold {
            late += 1;
            late_total += over;
            worst = worst.max(over);
            by_phase[phase_bucket(SystemTime::now())] += 1;
        }
    }
    let by_phase: Vec<String> = by_phase.iter().map(u64::to_string).collect();
    println!(
        "{{\"seconds\": {seconds}, \"wakeups\": {wakeups}, \"late\": {late}, \
         \"late_ms_total\": {:.1}, \"worst_ms\": {:.2}, \"late_by_phase\": [{}]}}",
        late_total.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        by_phase.join(", ")
    );
}

/// Which tenth of its 100 ms period of the wall clock `at` falls in.
fn phase_bucket(at: SystemTime) -> usize {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    ((ms % PERIOD_MS) * BUCKETS as u128 / PERIOD_MS) as usize
}
