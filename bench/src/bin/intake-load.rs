//! An open-loop load generator for webhook intake: sends signed GitHub `push` deliveries at a
//! fixed rate, each with its own delivery id, and reports latency percentiles measured from
//! each request's *scheduled* time (so a stalled server cannot hide its queueing).
//!
//! `intake-load URL RATE SECONDS CONNECTIONS SECRET BODY`
//!
//! Prints one line of JSON: `{"sent", "ok", "non_2xx", "errors", "rate", "p50_ms", "p99_ms", "max_ms"}`.
//!
//! Delivery ids are shaped like GitHub's (UUID version 1: the clock first, then a clock
//! sequence and a node), taken from the clock when each request is sent: ids sent close in
//! time sort close together, as GitHub's do, and each is new.
//!
//! It shares two cores with the server it measures, so it is kept lean: one thread per
//! keep-alive connection with blocking sockets (a thread sleeps to its next slot with the
//! kernel's high-resolution timer, where an async timer would round to a millisecond), one
//! request buffer per connection whose delivery id is rewritten in place, and a response
//! reader that only looks for the status and `Content-Length`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::Mac;

/// Length of a delivery id (a UUID in its text form).
const ID_LEN: usize = 36;
/// 100 ns intervals from the UUID epoch (1582-10-15) to the Unix epoch.
const UUID_EPOCH_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        eprintln!("usage: intake-load URL RATE SECONDS CONNECTIONS SECRET BODY");
        std::process::exit(2);
    }
    let (address, path) = split_url(&args[0]);
    let rate: f64 = args[1].parse().expect("RATE");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let connections: usize = args[3].parse().expect("CONNECTIONS");
    let body = &args[5];
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(args[4].as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());

    let total = (rate * seconds) as u64;
    let begun = Instant::now() + Duration::from_millis(50);
    let pid = std::process::id();
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            // Connection c sends requests c, c + connections, c + 2 * connections, ...
            let count = (total + (connections - 1 - c) as u64) / connections as u64;
            let prefix = format!(
                "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                 X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={signature}\r\n\
                 Content-Length: {}\r\nX-GitHub-Delivery: ",
                body.len()
            );
            let request = format!("{prefix}{:ID_LEN$}\r\n\r\n{body}", "");
            let id_at = prefix.len();
            // The clock sequence and node tell connections (and runs) apart.
            let node = (u64::from(pid) << 16) | c as u64;
            let address = address.clone();
            std::thread::spawn(move || {
                let slot = |i: u64| {
                    begun
                        + Duration::from_secs_f64((i * connections as u64 + c as u64) as f64 / rate)
                };
                connection(&address, request.into_bytes(), id_at, node, count, slot)
            })
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.join().expect("connection thread"));
    }
    let elapsed = begun.elapsed().as_secs_f64();
    tally.latencies_us.sort_unstable();
    let l = &tally.latencies_us;
    let pct = |p: f64| {
        l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |&us| us as f64 / 1e3)
    };
    println!(
        "{{\"sent\": {total}, \"ok\": {}, \"non_2xx\": {}, \"errors\": {}, \"rate\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        tally.ok,
        tally.non_2xx,
        tally.errors,
        (tally.ok + tally.non_2xx) as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

/// `http://host:port/path` into (`host:port`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .expect("URL must start with http://");
    let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    (address.to_string(), path.to_string())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    non_2xx: u64,
    errors: u64,
    /// Each answered request's latency from its scheduled time, in microseconds.
    latencies_us: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Sends `count` requests on one keep-alive connection, request `i` at `slot(i)` (or at once
/// if the connection is behind), reconnecting after an error.
fn connection(
    address: &str,
    mut request: Vec<u8>,
    id_at: usize,
    node: u64,
    count: u64,
    slot: impl Fn(u64) -> Instant,
) -> Tally {
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(count as usize),
        ..Tally::default()
    };
    let mut stream: Option<TcpStream> = None;
    let mut response = vec![0u8; 4096];
    for i in 0..count {
        let scheduled = slot(i);
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        write_uuid_v1(&mut request[id_at..id_at + ID_LEN], node, i);
        let s = match stream.take().map_or_else(|| connect(address), Ok) {
            Ok(s) => s,
            Err(_) => {
                tally.errors += 1;
                continue;
            }
        };
        match exchange(&s, &request, &mut response) {
            Ok(status) => {
                if (200..300).contains(&status) {
                    tally.ok += 1;
                } else {
                    tally.non_2xx += 1;
                }
                tally
                    .latencies_us
                    .push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
                stream = Some(s);
            }
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

fn connect(address: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(address)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// A version 1 UUID from the current time, `node` and a clock sequence from `i` (so two
/// requests in the same 100 ns still differ), written into `out` without allocating.
fn write_uuid_v1(out: &mut [u8], node: u64, i: u64) {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = (since_unix.as_nanos() / 100) as u64 + UUID_EPOCH_OFFSET;
    let fields = [
        (ticks & 0xffff_ffff, 8),
        ((ticks >> 32) & 0xffff, 4),
        (((ticks >> 48) & 0x0fff) | 0x1000, 4),
        (0x8000 | (i & 0x3fff), 4),
        (node & 0xffff_ffff_ffff, 12),
    ];
    let mut at = 0;
    for (n, (value, digits)) in fields.into_iter().enumerate() {
        if n > 0 {
            out[at] = b'-';
            at += 1;
        }
        for k in 0..digits {
            let nibble = (value >> (4 * (digits - 1 - k))) & 0xf;
            out[at + k] = b"0123456789abcdef"[nibble as usize];
        }
        at += digits;
    }
}

/// Writes one request and reads its whole response; returns the status code.
fn exchange(mut s: &TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<u16> {
    s.write_all(request)?;
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            if filled == buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| std::io::ErrorKind::InvalidData)?;
        let status = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut left = (end + 4 + length).saturating_sub(filled);
        while left > 0 {
            let room = left.min(buf.len());
            let n = s.read(&mut buf[..room])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n;
        }
        return Ok(status);
    }
}
