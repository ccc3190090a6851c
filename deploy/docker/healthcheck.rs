//! `baton-healthcheck [URL]`: exits 0 when `GET URL` answers 200 within a few seconds, 1
//! otherwise (with the reason on standard error). Without an argument the URL is
//! `$BATON_HEALTHCHECK_URL`, else `http://127.0.0.1:8080/healthz`, so a gateway on another
//! port needs only that variable set on the container. The image's `HEALTHCHECK` runs it: the
//! runtime image has neither a shell nor an HTTP client, and Docker runs the check inside the
//! container. Only plain `http://host:port/path` URLs: the probe talks to the gateway on the
//! loopback interface. Standard library only, so the builder compiles it with `rustc` alone.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// The longest each of connecting, sending and reading may take. Docker's own `--timeout`
/// (5 s in the Dockerfile) bounds the whole probe; this keeps one stuck step from using it up.
const STEP_LIMIT: Duration = Duration::from_secs(3);

/// What is probed when neither an argument nor `$BATON_HEALTHCHECK_URL` names a URL: the
/// gateway's liveness endpoint on the image's port.
const DEFAULT_URL: &str = "http://127.0.0.1:8080/healthz";

fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BATON_HEALTHCHECK_URL").ok())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    match probe(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("baton-healthcheck: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// One `GET` over HTTP/1.0, so the server closes the connection after its answer and only the
/// status line needs reading.
fn probe(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are probed")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("bad address {authority:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority:?} resolves to no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&address, STEP_LIMIT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(STEP_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(STEP_LIMIT)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: baton-healthcheck\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    // The status line fits well within this; the body is not needed.
    let mut answer = Vec::new();
    stream
        .take(512)
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("answered {status_line:?}")),
    }
}
