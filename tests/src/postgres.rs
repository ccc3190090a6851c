//! PostgreSQL for end-to-end tests: a database of its own per test on the server at
//! `$BATON_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`, trust
//! authentication), made and dropped through tokio-postgres, and a TCP
//! proxy a test can cut to make the database go away under a running baton.
//!
//! A server that cannot be reached fails the test, never skips it.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server the tests use: `host:port`, user and maintenance database.
struct Server {
    address: String,
    user: String,
    database: String,
}

fn server() -> Server {
    let url = std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let (authority, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let database = database.split('?').next().unwrap_or("postgres");
    let (user, address) = authority
        .rsplit_once('@')
        .unwrap_or(("postgres", authority));
    // Trust authentication: a password in the URL is not needed here.
    let user = user.split(':').next().unwrap_or("postgres");
    Server {
        address: address.to_owned(),
        user: user.to_owned(),
        database: database.to_owned(),
    }
}

/// A simple-query connection (tokio-postgres on a runtime of its own, so the synchronous
/// tests can use it): enough to make and drop databases and count rows.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Client {
    /// Connects to `address` as `user` to `database`; the server must trust the user.
    pub fn connect(address: &str, user: &str, database: &str) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let url = format!("postgres://{user}@{address}/{database}?connect_timeout=10");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {address} cannot be reached ({e}); the tests need it running"
                    )
                });
            tokio::spawn(connection);
            client
        });
        Client { runtime, client }
    }

    /// Runs `sql` (one or more statements) and returns the rows of its results as text.
    pub fn query(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let messages = self
            .runtime
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"));
        messages
            .iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }
}

/// A database made for one test, dropped (with its connections) when this is dropped.
pub struct Database {
    /// Its name, `t_<random hex>`.
    pub name: String,
    server: Server,
}

impl Database {
    /// Makes a new empty database on the test server.
    pub fn new() -> Database {
        let server = server();
        let mut random = [0_u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .expect("random bytes");
        let name = format!("t_{}", hex::encode(random));
        Client::connect(&server.address, &server.user, &server.database)
            .query(&format!("CREATE DATABASE {name}"));
        Database { name, server }
    }

    /// `host:port` of the server.
    pub fn address(&self) -> &str {
        &self.server.address
    }

    /// The URL baton opens it with, at `address` (the server's, or a proxy's).
    pub fn url_at(&self, address: &str) -> String {
        format!("postgres://{}@{address}/{}", self.server.user, self.name)
    }

    /// The URL baton opens it with.
    pub fn url(&self) -> String {
        self.url_at(&self.server.address)
    }

    /// A connection to it.
    pub fn client(&self) -> Client {
        Client::connect(&self.server.address, &self.server.user, &self.name)
    }
}

impl Default for Database {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // A test that failed may leave baton running on it: FORCE ends its connections.
        let mut client = Client::connect(
            &self.server.address,
            &self.server.user,
            &self.server.database,
        );
        client.query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A TCP proxy on a port of its own in front of `target`, which a test cuts (the database
/// goes away: open connections are reset and new ones refused) and restores (on the same
/// port).
pub struct Proxy {
    /// `127.0.0.1:PORT`, for a URL.
    pub address: SocketAddr,
    target: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// While true, the acceptor stops and drops its listener.
    cut: AtomicBool,
    /// Both ends of every connection under way, to shut down when cut.
    open: Mutex<Vec<TcpStream>>,
    /// Set by the acceptor when its listener is gone.
    closed: AtomicBool,
}

impl Proxy {
    /// A proxy to `target` (`host:port`), accepting at once.
    pub fn new(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let proxy = Proxy {
            address,
            target: target.to_owned(),
            shared: Arc::new(Shared::default()),
        };
        proxy.accept_on(listener);
        proxy
    }

    /// A proxy that refuses connections until [`Proxy::restore`].
    pub fn cut_from_start(target: &str) -> Proxy {
        let proxy = Proxy::new(target);
        proxy.cut();
        proxy
    }

    /// The database goes away: every connection through the proxy is reset, and new ones
    /// are refused (nothing listens on the port).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        while !self.shared.closed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The database comes back on the same port.
    pub fn restore(&self) {
        let listener = TcpListener::bind(self.address).expect("bind the proxy again");
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.closed.store(false, Ordering::SeqCst);
        self.accept_on(listener);
    }

    fn accept_on(&self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = self.shared.clone();
        let target = self.target.clone();
        std::thread::spawn(move || {
            while !shared.cut.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => forward(client, &target, &shared),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(listener);
            shared.closed.store(true, Ordering::SeqCst);
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Joins `client` to a new connection to `target`, one thread per direction.
fn forward(client: TcpStream, target: &str, shared: &Shared) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    {
        let mut open = shared.open.lock().unwrap();
        open.push(client);
        open.push(server);
    }
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    }
}
