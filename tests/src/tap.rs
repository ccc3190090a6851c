//! A TCP relay between baton and a server that acts at one exact instant: when the server's
//! answer to a request containing a given text comes back, it runs a hook BEFORE passing
//! the answer on. A test uses it to freeze a replica (SIGSTOP) after an external system
//! did the work and before baton could store that it did, with no timing luck.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The hook: runs once, on the relay's thread, while the answer waits.
type Hook = Box<dyn Fn() + Send + Sync>;

/// A running relay to one upstream `host:port`; it stops accepting when dropped.
pub struct Tap {
    /// `http://127.0.0.1:PORT`: where baton is pointed instead of the upstream.
    pub url: String,
    fired: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Tap {
    /// Relays to `upstream` (`host:port`). The first answer to come back on a connection
    /// after a request containing `marker` runs `hook` before it is passed on; later ones
    /// pass straight through.
    pub fn start(upstream: &str, marker: &str, hook: impl Fn() + Send + Sync + 'static) -> Self {
        let tap = Self::disarmed(upstream, marker, hook);
        tap.arm();
        tap
    }

    /// [`Tap::start`], but requests go by unseen until [`Tap::arm`]: the hook runs for the
    /// first matching request after that.
    pub fn disarmed(upstream: &str, marker: &str, hook: impl Fn() + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
        let url = format!("http://{}", listener.local_addr().expect("tap address"));
        let fired = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            marker: marker.as_bytes().to_vec(),
            hook: Box::new(hook),
            fired: fired.clone(),
            ready: ready.clone(),
        });
        let stop = closed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || relay(&shared, client));
            }
        });
        Self {
            url,
            fired,
            ready,
            closed,
        }
    }

    /// From now on, a request containing the marker arms its connection.
    pub fn arm(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether the hook ran.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `closed`.
        if let Some(addr) = self.url.strip_prefix("http://") {
            let _ = TcpStream::connect(addr);
        }
    }
}

struct Shared {
    upstream: String,
    marker: Vec<u8>,
    hook: Hook,
    fired: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
}

/// Pumps one connection both ways until either side closes.
fn relay(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(&shared.upstream) else {
        return;
    };
    let armed = Arc::new(AtomicBool::new(false));
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let requests = {
        let (shared, armed) = (shared.clone(), armed.clone());
        std::thread::spawn(move || pump_requests(&shared, &armed, client_in, server_out))
    };
    pump_answers(shared, &armed, server, client);
    let _ = requests.join();
}

/// Client → upstream, arming the connection when the marker goes by (also across reads).
fn pump_requests(shared: &Shared, armed: &AtomicBool, mut from: TcpStream, mut to: TcpStream) {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if shared.ready.load(Ordering::SeqCst) && !shared.fired.load(Ordering::SeqCst) {
            seen.extend_from_slice(&buf[..n]);
            if seen
                .windows(shared.marker.len())
                .any(|w| w == shared.marker.as_slice())
            {
                armed.store(true, Ordering::SeqCst);
            }
            let keep = seen.len().saturating_sub(shared.marker.len());
            seen.drain(..keep);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Upstream → client, running the hook once before the first answer on an armed connection.
fn pump_answers(shared: &Shared, armed: &AtomicBool, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if armed.load(Ordering::SeqCst) && !shared.fired.swap(true, Ordering::SeqCst) {
            (shared.hook)();
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`T` when stopped), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Sends SIGSTOP to `pid` and waits (up to 5 s) until the kernel shows it stopped, so that
/// nothing the caller does afterwards can be seen by the process before it is resumed.
pub fn freeze(pid: u32) {
    assert!(
        crate::send_signal(pid, crate::Signal::SIGSTOP),
        "SIGSTOP {pid}"
    );
    let begun = Instant::now();
    while process_state(pid) != Some('T') {
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "process {pid} did not stop: state {:?}",
            process_state(pid)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends SIGCONT to `pid`.
pub fn thaw(pid: u32) {
    assert!(
        crate::send_signal(pid, crate::Signal::SIGCONT),
        "SIGCONT {pid}"
    );
}
