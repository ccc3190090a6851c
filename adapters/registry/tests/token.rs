//! The bearer token flow against the real registry configured with `auth: token`: the
//! test plays the token server, issuing RS256 JWTs whose `x5c` certificate is the
//! registry's `rootcertbundle` (key and certificate made with the `openssl` CLI, each
//! token signed with `openssl dgst`), and counts the tokens asked for per scope set.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;

const ISSUER: &str = "baton-test-issuer";
const SERVICE: &str = "baton-test-registry";
const PASSWORD: &str = "token-s3cret";

/// Token requests by their sorted scope set.
type Counts = Arc<Mutex<BTreeMap<String, u32>>>;

/// A registry process with token auth, killed when dropped.
struct TokenRegistry {
    process: Process,
    url: String,
    counts: Counts,
    _dir: tempfile::TempDir,
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// Starts the token server and a `docker-registry` trusting its certificate.
fn start() -> TokenRegistry {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=baton-test-token",
        ],
        &path,
    );
    let pem = std::fs::read_to_string(path.join("cert.pem")).unwrap();
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let counts: Counts = Arc::default();
    {
        let (counts, path) = (Arc::clone(&counts), path.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_token(stream, &counts, &path, &der_b64);
            }
        });
    }

    let port = free_port();
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {root}}}\n  delete: {{enabled: true}}\n\
         http: {{addr: 127.0.0.1:{port}, secret: token-test}}\n\
         auth:\n  token: {{realm: http://127.0.0.1:{token_port}/token, service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {cert}}}\n",
        root = path.join("data").display(),
        cert = path.join("cert.pem").display(),
    );
    std::fs::write(path.join("config.yml"), config).unwrap();
    let process = Command::new("docker-registry")
        .args(["serve", "config.yml"])
        .current_dir(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(path.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry runs: run scripts/containers.sh, which installs it");
    let url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "the token registry did not listen: {}",
            path.join("registry.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TokenRegistry {
        process,
        url,
        counts,
        _dir: dir,
    }
}

/// Answers one `GET /token?service=…&scope=…` with a JWT granting what was asked, to
/// user `baton` with the right password only.
fn serve_token(stream: TcpStream, counts: &Counts, dir: &Path, x5c: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = value.trim().to_owned();
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut scopes = Vec::new();
    let mut service = String::new();
    for (name, value) in form_pairs(query) {
        match name.as_str() {
            "scope" => scopes.push(value),
            "service" => service = value,
            _ => {}
        }
    }
    let expected = format!("Basic {}", STANDARD.encode(format!("baton:{PASSWORD}")));
    let (status, body) = if authorization != expected {
        (
            "401 Unauthorized",
            json!({"details": "wrong user or password"}).to_string(),
        )
    } else {
        scopes.sort();
        *counts.lock().unwrap().entry(scopes.join(" ")).or_default() += 1;
        let token = sign(dir, x5c, &service, &scopes);
        (
            "200 OK",
            json!({"token": token, "expires_in": 300}).to_string(),
        )
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// An RS256 JWT for `scopes` (`repository:<name>:<actions>`), signed by `openssl dgst`.
fn sign(dir: &Path, x5c: &str, service: &str, scopes: &[String]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = json!({
        "iss": ISSUER, "sub": "baton", "aud": service, "exp": now + 300, "nbf": now - 10,
        "iat": now, "jti": format!("{now}-{}", scopes.join(",")), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let input_file: PathBuf = dir.join(format!("input-{}", unique("jwt").replace('/', "-")));
    std::fs::write(&input_file, &signing_input).unwrap();
    let signature = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", "key.pem"])
        .arg(&input_file)
        .current_dir(dir)
        .output()
        .expect("openssl signs");
    assert!(signature.status.success());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.stdout)
    )
}

#[tokio::test]
async fn the_token_flow_asks_once_per_scope_set_and_mounts_with_one_token() {
    let registry = start();
    let host = authority(&registry.url);
    let dir = tempfile::tempdir().unwrap();
    let repo = unique("token");
    let source = build_image(dir.path(), "v1", "linux", "amd64", 1024);
    push(
        &source,
        &format!("{host}/{repo}:v1"),
        None,
        Some(&format!("baton:{PASSWORD}")),
    );
    let manifest = raw(
        &format!("{host}/{repo}:v1"),
        Some(&format!("baton:{PASSWORD}")),
    );
    registry.counts.lock().unwrap().clear();

    let adapter = adapter(
        json!({"url": registry.url, "username": "baton", "password": {"env": "PW"}}),
        &[("PW", PASSWORD)],
    );
    for _ in 0..3 {
        let outputs = succeeded(adapter.as_ref(), inspect(&format!("{repo}:v1"))).await;
        assert_eq!(outputs["digest"], json!(sha256(&manifest)));
    }
    let other = unique("token-prod");
    let outputs = succeeded(
        adapter.as_ref(),
        promote(&format!("{repo}:v1"), &format!("{other}:stable")),
    )
    .await;
    // The mount's token carries pull on the source too, so the registry mounts.
    assert_eq!(outputs["blobs_mounted"], json!(2), "{outputs:?}");
    assert_eq!(outputs["bytes_uploaded"], json!(0), "{outputs:?}");
    // Counted before skopeo, below, asks for tokens of its own.
    let counts = registry.counts.lock().unwrap().clone();
    assert_eq!(
        raw(
            &format!("{host}/{other}:stable"),
            Some(&format!("baton:{PASSWORD}"))
        ),
        manifest
    );
    let pull = format!("repository:{repo}:pull");
    let mount = format!("repository:{repo}:pull repository:{other}:pull,push");
    assert_eq!(counts.get(&pull), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&mount), Some(&1), "{counts:?}");
    // Three inspects and a promote (a HEAD and a mount per blob, the manifest's PUT, the
    // outputs' reads) asked for four scope sets, each once.
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "a scope set was asked for twice: {counts:?}"
    );

    // A wrong password: the token server refuses, and the stage says so.
    let wrong = support::adapter(
        json!({"url": registry.url, "username": "baton", "password": {"env": "PW"}}),
        &[("PW", "wrong")],
    );
    let message = failed(wrong.as_ref(), inspect(&format!("{repo}:v1"))).await;
    assert!(
        message.contains("token server")
            && message.contains("user `baton`")
            && message.contains("401"),
        "{message}"
    );
}
