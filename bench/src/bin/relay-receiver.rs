//! A lean HTTP/1.1 receiver for the relay benchmark: answers every `POST` with an empty 200
//! at once, on keep-alive connections, and records when each one arrived.
//!
//! `relay-receiver PORT OUT_FILE [IDLE_SECONDS]`
//!
//! It listens on `127.0.0.1:PORT` (0 picks a free port) and prints `listening on ADDRESS` on
//! stdout once it does. For each `POST` it keeps the wall-clock time its last byte was read,
//! in microseconds since the Unix epoch, the delivery id it carries (`X-Baton-Delivery` on
//! a message relayed by baton, else `X-GitHub-Delivery` on a delivery posted straight to
//! it) and its `Idempotency-Key`.
//!
//! - `GET /count` answers a summary in JSON: `{"requests", "relayed", "direct",
//!   "distinct_keys", "duplicates", "unsupported"}`, where `relayed` counts the requests
//!   with `X-Baton-Delivery`, `duplicates` the requests whose key came before, and
//!   `unsupported` the requests it could not read (a chunked body: answered 501, connection
//!   closed). `GET /count?from=US&to=US` adds `"window"`: the relayed requests that arrived
//!   from `from` (included) to `to` (excluded), wall-clock microseconds as above, which is
//!   how the run script measures the relayed rate while its load runs.
//! - `GET /report` also writes OUT_FILE, one request a line in arrival order:
//!   `ARRIVAL_US KIND DELIVERY_ID KEY`, KIND `r` (relayed) or `d` (direct), `-` for a
//!   missing id or key. The file is written whole under another name and renamed, so a
//!   reader never sees half of it.
//! - On SIGTERM or SIGINT, or once IDLE_SECONDS pass without a request after the first one,
//!   it writes OUT_FILE, prints the summary on stdout and exits.
//!
//! It shares two cores with baton and the load generator, so, like `intake-load`, it is one
//! thread waiting in epoll on all its sockets: a thread per connection would cost two
//! context switches per request. A request's head is read only for the few headers above.

// The signal handler is installed with libc's `signal`, which neither mio nor the standard
// library wraps; the unsafe block states what makes the call sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// The poll token of the listening socket; connections use their slot's index.
const LISTENER: Token = Token(usize::MAX);
/// How often the loop looks at the stop flag and the idle clock when no socket is ready.
const TICK: Duration = Duration::from_millis(100);
/// The answer to every relayed or direct `POST`.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

/// Set by the signal handler; the loop exits when it sees it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(2..=3).contains(&args.len()) {
        eprintln!("usage: relay-receiver PORT OUT_FILE [IDLE_SECONDS]");
        std::process::exit(2);
    }
    let port: u16 = args[0].parse().expect("PORT");
    let idle = args
        .get(2)
        .map(|s| Duration::from_secs_f64(s.parse().expect("IDLE_SECONDS")));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(address).expect("bind");
    println!("listening on {}", listener.local_addr().expect("address"));
    let mut server = Server::new(listener, PathBuf::from(&args[1])).expect("poll");
    let summary = server.run(idle).expect("event loop");
    println!("{summary}");
}

/// What one `POST` carried, as the report writes it.
struct Arrival {
    /// Wall-clock microseconds since the Unix epoch when its last byte was read.
    at_us: u64,
    /// It carried `X-Baton-Delivery`: baton relayed it.
    relayed: bool,
    /// The delivery id, if any.
    delivery: Option<String>,
    /// The `Idempotency-Key`, if any.
    key: Option<String>,
}

/// Everything the receiver has seen.
#[derive(Default)]
struct Record {
    arrivals: Vec<Arrival>,
    /// How many requests carried each key.
    per_key: HashMap<String, u32>,
    /// Requests it could not read.
    unsupported: u64,
}

impl Record {
    fn add(&mut self, arrival: Arrival) {
        if let Some(key) = &arrival.key {
            *self.per_key.entry(key.clone()).or_default() += 1;
        }
        self.arrivals.push(arrival);
    }

    /// Relayed requests that arrived in `[from, to)`.
    fn relayed_between(&self, from: u64, to: u64) -> usize {
        // Arrivals are in the order they were read, so nearly in time order: the search
        // finds the span and the filter drops the few a clock step put out of order.
        let start = self
            .arrivals
            .partition_point(|a| a.at_us < from.saturating_sub(1_000));
        let end = self
            .arrivals
            .partition_point(|a| a.at_us < to.saturating_add(1_000));
        self.arrivals[start..end.max(start)]
            .iter()
            .filter(|a| a.relayed && (from..to).contains(&a.at_us))
            .count()
    }

    fn summary(&self) -> String {
        let relayed = self.arrivals.iter().filter(|a| a.relayed).count();
        let keyed = self.arrivals.iter().filter(|a| a.key.is_some()).count();
        format!(
            "{{\"requests\": {}, \"relayed\": {relayed}, \"direct\": {}, \"distinct_keys\": {}, \"duplicates\": {}, \"unsupported\": {}}}",
            self.arrivals.len(),
            self.arrivals.len() - relayed,
            self.per_key.len(),
            keyed - self.per_key.len(),
            self.unsupported
        )
    }

    /// Writes every arrival to `path` (through a temporary name, then a rename).
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::with_capacity(self.arrivals.len() * 96);
        for a in &self.arrivals {
            text.push_str(&format!(
                "{} {} {} {}\n",
                a.at_us,
                if a.relayed { 'r' } else { 'd' },
                a.delivery.as_deref().unwrap_or("-"),
                a.key.as_deref().unwrap_or("-")
            ));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, path)
    }
}

/// What a request asks, once its head and body are in.
enum Request {
    /// A `POST`: a delivery to record.
    Post(Arrival),
    /// `GET /count`, with the window `?from=US&to=US` if given.
    Count(Option<(u64, u64)>),
    /// `GET /report`.
    Report,
    /// Anything else that could be read.
    Other,
    /// A body it cannot delimit (chunked): the connection must close.
    Unsupported,
}

/// A connection and the bytes it has read but not yet parsed, or not yet written.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// Where the search for the end of the head resumes, so a head arriving in pieces is
    /// not searched from its start again.
    scanned: usize,
    output: Vec<u8>,
    /// Close once `output` is written.
    closing: bool,
}

impl Conn {
    /// The next whole request in `input`, removed from it; `None` until one is whole.
    fn next_request(&mut self) -> Option<Request> {
        let from = self.scanned.saturating_sub(3);
        let Some(end) = self.input[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p)
        else {
            self.scanned = self.input.len();
            return None;
        };
        let head = String::from_utf8_lossy(&self.input[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or("").split(' ');
        let (method, path) = (start.next().unwrap_or(""), start.next().unwrap_or(""));
        let mut length = 0;
        let mut chunked = false;
        let (mut baton_id, mut github_id, mut key) = (None, None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "x-baton-delivery" => baton_id = Some(value.to_owned()),
                "x-github-delivery" => github_id = Some(value.to_owned()),
                "idempotency-key" => key = Some(value.to_owned()),
                "connection" if value.eq_ignore_ascii_case("close") => self.closing = true,
                _ => {}
            }
        }
        if chunked {
            self.input.clear();
            self.scanned = 0;
            return Some(Request::Unsupported);
        }
        if self.input.len() < end + 4 + length {
            self.scanned = end;
            return None;
        }
        self.input.drain(..end + 4 + length);
        self.scanned = 0;
        Some(match (method, path) {
            ("POST", _) => Request::Post(Arrival {
                at_us: wall_clock_us(),
                relayed: baton_id.is_some(),
                delivery: baton_id.or(github_id),
                key,
            }),
            ("GET", "/count") => Request::Count(None),
            ("GET", p) if p.starts_with("/count?") => Request::Count(window(p)),
            ("GET", "/report") => Request::Report,
            _ => Request::Other,
        })
    }

    /// Writes what it can of `output`.
    fn flush(&mut self) -> std::io::Result<()> {
        let mut written = 0;
        while written < self.output.len() {
            match self.stream.write(&self.output[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.drain(..written);
        Ok(())
    }
}

/// Microseconds since the Unix epoch, by the wall clock (the load generator's clock too).
fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The window `from=US&to=US` of a `/count?…` path.
fn window(path: &str) -> Option<(u64, u64)> {
    let (mut from, mut to) = (None, None);
    for pair in path.split_once('?')?.1.split('&') {
        match pair.split_once('=')? {
            ("from", v) => from = v.parse().ok(),
            ("to", v) => to = v.parse().ok(),
            _ => {}
        }
    }
    from.zip(to)
}

/// A JSON answer.
fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The listener, its connections and what they brought.
struct Server {
    poll: Poll,
    listener: TcpListener,
    /// Connections by token; a closed one leaves its slot empty for the next.
    conns: Vec<Option<Conn>>,
    record: Record,
    out: PathBuf,
    last_request: Option<Instant>,
}

impl Server {
    fn new(mut listener: TcpListener, out: PathBuf) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            poll,
            listener,
            conns: Vec::new(),
            record: Record::default(),
            out,
            last_request: None,
        })
    }

    /// Serves until a stop signal or the idle time; writes the report and returns the
    /// summary.
    fn run(&mut self, idle: Option<Duration>) -> std::io::Result<String> {
        let mut events = Events::with_capacity(256);
        loop {
            if STOP.load(Ordering::Relaxed)
                || idle
                    .zip(self.last_request)
                    .is_some_and(|(i, l)| l.elapsed() >= i)
            {
                self.record.write(&self.out)?;
                return Ok(self.record.summary());
            }
            match self.poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in &events {
                if event.token() == LISTENER {
                    self.accept()?;
                } else {
                    self.serve(event.token().0)?;
                }
            }
        }
    }

    fn accept(&mut self) -> std::io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stream.set_nodelay(true)?;
            let slot = match self.conns.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns[slot] = Some(Conn {
                stream,
                input: Vec::with_capacity(4096),
                scanned: 0,
                output: Vec::new(),
                closing: false,
            });
        }
    }

    /// Reads what connection `slot` has, answers every whole request in it, and closes it
    /// when the peer did or asked to. Errors of one connection close it and nothing else;
    /// only a failure to write the report is returned.
    fn serve(&mut self, slot: usize) -> std::io::Result<()> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut chunk = [0u8; 16384];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while !conn.closing
            && let Some(request) = conn.next_request()
        {
            let answer = match request {
                Request::Post(arrival) => {
                    self.record.add(arrival);
                    self.last_request = Some(Instant::now());
                    OK.to_vec()
                }
                Request::Count(None) => json_answer(&self.record.summary()),
                Request::Count(Some((from, to))) => {
                    let summary = self.record.summary();
                    let window = self.record.relayed_between(from, to);
                    json_answer(&format!(
                        "{}, \"window\": {window}}}",
                        summary.trim_end_matches('}')
                    ))
                }
                Request::Report => {
                    self.record.write(&self.out)?;
                    json_answer(&self.record.summary())
                }
                Request::Other => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
                Request::Unsupported => {
                    self.record.unsupported += 1;
                    conn.closing = true;
                    b"HTTP/1.1 501 Not Implemented\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                        .to_vec()
                }
            };
            conn.output.extend_from_slice(&answer);
        }
        let broken = conn.flush().is_err();
        if (closed || broken || (conn.closing && conn.output.is_empty()))
            && let Some(mut conn) = self.conns[slot].take()
        {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        Ok(())
    }
}
