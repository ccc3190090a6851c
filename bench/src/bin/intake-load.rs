//! An open-loop load generator for webhook intake: sends signed GitHub `push` deliveries at a
//! fixed rate, each with its own delivery id, and reports latency percentiles measured from
//! each request's *scheduled* time (so a stalled server cannot hide its queueing).
//!
//! `intake-load URL RATE SECONDS CONNECTIONS SECRET BODY [THREADS]`
//!
//! URL may be several, comma-separated (replicas of one server): the connections are dealt
//! out among them in turn, and each request goes out on the connection that has been idle
//! longest, so every replica takes its share; with one URL the connection freed last is
//! reused.
//!
//! Prints one line of JSON: `{"sent", "ok", "non_2xx", "errors", "rate", "measured", "p50_ms",
//! "p99_ms", "max_ms"}`, where `measured` is how many answers the percentiles are taken over.
//! With `INTAKE_LOAD_TRACE=FILE` it also writes each answered request's scheduled time from the
//! start and its latency, in microseconds, one request per line: to see *when* a run was slow.
//! With `INTAKE_LOAD_TRACE_IDS=FILE` it writes, for each request answered 2xx, its delivery id,
//! the wall-clock time it was sent and the wall-clock time its answer was read, both in
//! microseconds since the Unix epoch, one request per line (`ID SENT_US ANSWERED_US`): to
//! follow each delivery to where it went next (`bench/relay` matches them with a receiver's
//! arrivals).
//!
//! With `INTAKE_LOAD_LEAD_IN=S` it first sends at the same rate for S seconds more, on the
//! same connections, and leaves those requests' latencies out of the percentiles (their
//! answers still count, and the trace still has them). On the 2-core VMs we measure on, the
//! first second of load after the machine has been idle for a few seconds is slower, for
//! baton and the peer alike (see docs/server.md, "The first second after an idle machine"):
//! without a lead-in, a run that follows a pause measures the pause's after-effect.
//!
//! Request `k` is due at `k / RATE` seconds and goes out on a keep-alive connection that has
//! no request in flight; when every connection is busy it waits, and the wait counts in its
//! latency. Delivery ids are shaped like GitHub's (UUID version 1: the clock first, then a
//! clock sequence and a node), taken from the clock when each request is sent: ids sent close
//! in time sort close together, as GitHub's do, and each is new.
//!
//! It shares two cores with the server it measures, so it is kept lean: THREADS event loops
//! (2 by default) share the connections, each waiting in epoll on its sockets and on a timer
//! with nanosecond resolution (an async runtime's timer rounds to a millisecond, and a thread
//! per connection costs two context switches per request); one request buffer per connection
//! whose delivery id is rewritten in place; a response reader that only looks for the status
//! and `Content-Length`.

// The timer is a Linux timerfd, which neither mio nor the standard library wraps; each
// unsafe block states what makes its call sound.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use hmac::Mac;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// Length of a delivery id (a UUID in its text form).
const ID_LEN: usize = 36;
/// 100 ns intervals from the UUID epoch (1582-10-15) to the Unix epoch.
const UUID_EPOCH_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
/// Event loops when THREADS is not given: one per core of the 2-core machines we measure on.
const DEFAULT_THREADS: usize = 2;
/// The poll token of a loop's timer; connections use their index.
const TIMER: Token = Token(usize::MAX);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(6..=7).contains(&args.len()) {
        eprintln!("usage: intake-load URL RATE SECONDS CONNECTIONS SECRET BODY [THREADS]");
        std::process::exit(2);
    }
    let targets: Vec<(String, String)> = args[0].split(',').map(split_url).collect();
    let rate: f64 = args[1].parse().expect("RATE");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let connections: usize = args[3].parse().expect("CONNECTIONS");
    let body = &args[5];
    let threads = args
        .get(6)
        .map_or(DEFAULT_THREADS, |t| t.parse().expect("THREADS"))
        .clamp(1, connections.max(1));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(args[4].as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    // Per target: its address, its request (the id left blank), where the id goes.
    let requests: Vec<(String, String, usize)> = targets
        .iter()
        .map(|(address, path)| {
            let prefix = format!(
                "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                 X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={signature}\r\n\
                 Content-Length: {}\r\nX-GitHub-Delivery: ",
                body.len()
            );
            let request = format!("{prefix}{:ID_LEN$}\r\n\r\n{body}", "");
            (address.clone(), request, prefix.len())
        })
        .collect();
    let rotate = requests.len() > 1;

    let lead_in: f64 = std::env::var("INTAKE_LOAD_LEAD_IN")
        .map_or(0.0, |s| s.parse().expect("INTAKE_LOAD_LEAD_IN: seconds"));
    let total = (rate * (lead_in + seconds)) as u64;
    let begun = Instant::now() + Duration::from_millis(50);
    let pid = u64::from(std::process::id());
    let trace_ids = std::env::var_os("INTAKE_LOAD_TRACE_IDS").is_some();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            // Loop t owns connections t, t + threads, ... and requests t, t + threads, ...
            // ... and its i-th connection goes to target i mod targets, so that each loop
            // reaches every target.
            let conns: Vec<Conn> = (t..connections)
                .step_by(threads)
                .enumerate()
                .map(|(i, c)| {
                    let (address, request, id_at) = &requests[i % requests.len()];
                    Conn::new(address, request.as_bytes(), *id_at, (pid << 16) | c as u64)
                })
                .collect();
            let schedule = Schedule {
                begun,
                rate,
                first: t as u64,
                step: threads as u64,
                count: (total + (threads - 1 - t) as u64) / threads as u64,
            };
            std::thread::spawn(move || {
                EventLoop::new(conns, trace_ids, rotate)
                    .and_then(|l| l.run(&schedule))
                    .expect("event loop")
            })
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.join().expect("event loop thread"));
    }
    let elapsed = begun.elapsed().as_secs_f64();
    if let Ok(file) = std::env::var("INTAKE_LOAD_TRACE") {
        let mut out = String::new();
        for (at, latency) in tally.scheduled_us.iter().zip(&tally.latencies_us) {
            out.push_str(&format!("{at} {latency}\n"));
        }
        std::fs::write(&file, out).expect("INTAKE_LOAD_TRACE file");
    }
    if let Ok(file) = std::env::var("INTAKE_LOAD_TRACE_IDS") {
        let mut out = String::with_capacity(tally.answered_ids.len() * 64);
        for t in &tally.answered_ids {
            let id = std::str::from_utf8(&t.id).expect("ids are ASCII");
            out.push_str(&format!("{id} {} {}\n", t.sent_us, t.answered_us));
        }
        std::fs::write(&file, out).expect("INTAKE_LOAD_TRACE_IDS file");
    }
    let measured_from = (lead_in * 1e6) as u32;
    let mut l: Vec<u32> = (tally.scheduled_us.iter().zip(&tally.latencies_us))
        .filter(|&(&at, _)| at >= measured_from)
        .map(|(_, &latency)| latency)
        .collect();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |&us| us as f64 / 1e3)
    };
    println!(
        "{{\"sent\": {total}, \"ok\": {}, \"non_2xx\": {}, \"errors\": {}, \"rate\": {:.0}, \"measured\": {}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        tally.ok,
        tally.non_2xx,
        tally.errors,
        (tally.ok + tally.non_2xx) as f64 / elapsed,
        l.len(),
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

/// One event loop's share of the requests: `first`, `first + step`, ..., `count` of them.
struct Schedule {
    begun: Instant,
    rate: f64,
    first: u64,
    step: u64,
    count: u64,
}

impl Schedule {
    /// When the loop's `n`th request is due.
    fn due(&self, n: u64) -> Instant {
        self.begun + Duration::from_secs_f64((self.first + n * self.step) as f64 / self.rate)
    }
}

/// One request answered 2xx, for `INTAKE_LOAD_TRACE_IDS`.
struct AnsweredId {
    /// Its delivery id.
    id: [u8; ID_LEN],
    /// Wall-clock microseconds since the Unix epoch when it was sent.
    sent_us: u64,
    /// The same when its answer was read.
    answered_us: u64,
}

impl AnsweredId {
    /// The request `conn` has just had its answer to.
    fn of(conn: &Conn) -> Self {
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&conn.request[conn.id_at..conn.id_at + ID_LEN]);
        Self {
            id,
            sent_us: unix_micros(conn.sent_at),
            answered_us: unix_micros(SystemTime::now()),
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    non_2xx: u64,
    errors: u64,
    /// Each answered request's latency from its scheduled time, in microseconds.
    latencies_us: Vec<u32>,
    /// Each answered request's scheduled time from the start, in microseconds (same order).
    scheduled_us: Vec<u32>,
    /// The requests answered 2xx, kept only with `INTAKE_LOAD_TRACE_IDS`.
    answered_ids: Vec<AnsweredId>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.scheduled_us.extend(other.scheduled_us);
        self.answered_ids.extend(other.answered_ids);
    }
}

/// A keep-alive connection and the one request it may have in flight.
struct Conn {
    /// The `host:port` it connects to.
    address: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    /// Where the delivery id sits in `request`.
    id_at: usize,
    /// The UUID node: tells connections (and runs) apart.
    node: u64,
    /// Requests sent on this connection: the UUID clock sequence.
    sent: u64,
    /// Bytes of `request` written so far.
    written: usize,
    /// When the request in flight was due.
    in_flight: Option<Instant>,
    /// When the request in flight was sent, by the wall clock.
    sent_at: SystemTime,
    response: Vec<u8>,
}

impl Conn {
    fn new(address: &str, request: &[u8], id_at: usize, node: u64) -> Self {
        Self {
            address: address.to_owned(),
            stream: None,
            request: request.to_vec(),
            id_at,
            node,
            sent: 0,
            written: 0,
            in_flight: None,
            sent_at: SystemTime::UNIX_EPOCH,
            response: Vec::with_capacity(4096),
        }
    }

    /// Writes what is left of the request; `Ok` also when the socket is full for now.
    fn write_some(&mut self) -> std::io::Result<()> {
        let stream = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        while self.written < self.request.len() {
            match stream.write(&self.request[self.written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the socket has; once the whole response is in, its status and whether the
    /// server closes the connection after it.
    fn read_some(&mut self) -> std::io::Result<Option<(u16, bool)>> {
        let stream = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        let mut chunk = [0u8; 4096];
        // A server may close right after its answer: the answer still counts.
        let mut closed = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.response.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let incomplete = || {
            if closed {
                Err(ErrorKind::UnexpectedEof.into())
            } else {
                Ok(None)
            }
        };
        let Some(end) = self.response.windows(4).position(|w| w == b"\r\n\r\n") else {
            return incomplete();
        };
        let head =
            std::str::from_utf8(&self.response[..end]).map_err(|_| ErrorKind::InvalidData)?;
        let status = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or(ErrorKind::InvalidData)?;
        let header = |wanted: &str| {
            head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case(wanted).then(|| value.trim())
            })
        };
        let length: usize = header("content-length").map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| std::io::Error::from(ErrorKind::InvalidData))
        })?;
        let closes =
            closed || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if self.response.len() < end + 4 + length {
            return incomplete();
        }
        self.response.clear();
        Ok(Some((status, closes)))
    }
}

/// One thread's connections, polled together with a timer for the next due request.
struct EventLoop {
    poll: Poll,
    timer: OwnedFd,
    /// The due time the timer is set for, if any.
    timer_set_for: Option<Instant>,
    conns: Vec<Conn>,
    /// Connections with no request in flight, the one freed last at the back.
    idle: VecDeque<usize>,
    /// Take the connection idle longest (several targets), not the one freed last.
    rotate: bool,
    tally: Tally,
    /// Keep each 2xx request's id and wall-clock times (`INTAKE_LOAD_TRACE_IDS`).
    trace_ids: bool,
}

impl EventLoop {
    fn new(conns: Vec<Conn>, trace_ids: bool, rotate: bool) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        // SAFETY: timerfd_create has no preconditions; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let idle = (0..conns.len()).rev().collect();
        Ok(Self {
            poll,
            timer,
            timer_set_for: None,
            conns,
            idle,
            rotate,
            tally: Tally::default(),
            trace_ids,
        })
    }

    fn run(mut self, schedule: &Schedule) -> std::io::Result<Tally> {
        self.tally.latencies_us.reserve(schedule.count as usize);
        self.tally.scheduled_us.reserve(schedule.count as usize);
        let mut events = Events::with_capacity(256);
        let mut next = 0;
        loop {
            let now = Instant::now();
            while next < schedule.count && !self.idle.is_empty() {
                let due = schedule.due(next);
                if due > now {
                    break;
                }
                let c = if self.rotate {
                    self.idle.pop_front()
                } else {
                    self.idle.pop_back()
                }
                .expect("an idle connection");
                self.send(c, due);
                next += 1;
            }
            let busy = self.conns.len() - self.idle.len();
            if next == schedule.count && busy == 0 {
                return Ok(self.tally);
            }
            // Wake for the next request only if a connection is free to take it; otherwise
            // an answer wakes the loop first.
            if next < schedule.count && !self.idle.is_empty() {
                self.set_timer(schedule.due(next), now)?;
            }
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in &events {
                if event.token() == TIMER {
                    self.timer_fired();
                } else {
                    self.on_ready(event.token().0, schedule.begun);
                }
            }
        }
    }

    /// Sends a new request on idle connection `c`, connecting first if needed.
    fn send(&mut self, c: usize, due: Instant) {
        if self.conns[c].stream.is_none()
            && let Err(_) = self.connect(c)
        {
            self.tally.errors += 1;
            self.idle.push_back(c);
            return;
        }
        let conn = &mut self.conns[c];
        let id_at = conn.id_at;
        conn.sent_at = SystemTime::now();
        write_uuid_v1(
            &mut conn.request[id_at..id_at + ID_LEN],
            conn.sent_at,
            conn.node,
            conn.sent,
        );
        conn.sent += 1;
        conn.written = 0;
        conn.response.clear();
        conn.in_flight = Some(due);
        if conn.write_some().is_err() {
            self.fail(c);
        }
    }

    fn connect(&mut self, c: usize) -> std::io::Result<()> {
        let std_stream = std::net::TcpStream::connect(&self.conns[c].address)?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        self.poll.registry().register(
            &mut stream,
            Token(c),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns[c].stream = Some(stream);
        Ok(())
    }

    /// Closes connection `c`: its next request reconnects.
    fn disconnect(&mut self, c: usize) {
        if let Some(mut stream) = self.conns[c].stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
    }

    /// Connection `c` broke: a request in flight on it failed, so count it and free the
    /// connection for the next one.
    fn fail(&mut self, c: usize) {
        self.disconnect(c);
        if self.conns[c].in_flight.take().is_some() {
            self.tally.errors += 1;
            self.idle.push_back(c);
        }
    }

    fn on_ready(&mut self, c: usize, begun: Instant) {
        let conn = &mut self.conns[c];
        let Some(due) = conn.in_flight else {
            // Readiness with nothing in flight: only an unexpected close or stray bytes.
            let mut probe = [0u8; 512];
            if let Some(stream) = conn.stream.as_mut()
                && matches!(stream.read(&mut probe), Ok(0))
            {
                self.fail(c);
            }
            return;
        };
        let outcome = conn.write_some().and_then(|()| conn.read_some());
        match outcome {
            Ok(None) => {}
            Ok(Some((status, closes))) => {
                conn.in_flight = None;
                let traced =
                    (self.trace_ids && (200..300).contains(&status)).then(|| AnsweredId::of(conn));
                if closes {
                    self.disconnect(c);
                }
                if (200..300).contains(&status) {
                    self.tally.ok += 1;
                    self.tally.answered_ids.extend(traced);
                } else {
                    self.tally.non_2xx += 1;
                }
                let micros = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
                self.tally.latencies_us.push(micros(due.elapsed()));
                self.tally
                    .scheduled_us
                    .push(micros(due.saturating_duration_since(begun)));
                self.idle.push_back(c);
            }
            Err(_) => self.fail(c),
        }
    }

    /// Sets the timer to fire at `due` (at once if it is past), unless it already is.
    fn set_timer(&mut self, due: Instant, now: Instant) -> std::io::Result<()> {
        if self.timer_set_for == Some(due) {
            return Ok(());
        }
        // A zero value would disarm the timer: a due time already past fires after 1 ns.
        let wait = due
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the fd is our open timerfd and `spec` is a valid itimerspec.
        if unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        self.timer_set_for = Some(due);
        Ok(())
    }

    /// Clears a fired timer (its expiry count is of no use: the loop reads the clock).
    fn timer_fired(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from our own timerfd.
        unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        self.timer_set_for = None;
    }
}

/// Microseconds since the Unix epoch at `at`.
fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A version 1 UUID from the time `now`, `node` and a clock sequence from `i` (so two
/// requests in the same 100 ns still differ), written into `out` without allocating.
fn write_uuid_v1(out: &mut [u8], now: SystemTime, node: u64, i: u64) {
    let since_unix = now
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
