//! A full disk under `baton serve`, for real: the store lives on a small tmpfs that a filler
//! file fills to the last block, so SQLite gets `ENOSPC` from the kernel.
//!
//! The tmpfs is mounted in a mount namespace of baton's own (`unshare` with a user
//! namespace, so no privilege is needed where user namespaces are allowed, and nothing is
//! left mounted when baton ends). The test reaches that filesystem through
//! `/proc/<pid>/root`, which shows baton's mounts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_tests::{Reply, Sandbox, Server};

const OPERATOR: &str = "oper-token-2";
const SECRET: &str = "gh-secret";

/// The store's filesystem: room for the store, then the filler takes the rest.
const DISK: &str = "size=16m";

fn config(sb: &Sandbox, disk: &Path) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["workflows/*.yaml"]

[store]
url = "sqlite://{disk}/baton.db"

[engine]
exec_state_dir = "{exec}"

[server]
max_body_bytes = 1048576

[api]
tokens = [{{ name = "otto", token = {{ env = "T_OPERATOR" }}, role = "operator" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
"#,
            disk = disk.display(),
            exec = sb.path().join("exec").display(),
        ),
    );
    // The stage waits for the test's go, then leaves outputs far larger than any room the
    // WAL has left: committing its end needs the disk.
    sb.write(
        "workflows/wait.yaml",
        r#"
name: wait
on: [{ source: manual }]
stages:
  wait:
    uses: exec
    with:
      run: |
        while [ ! -e go ]; do sleep 0.05; done
        printf '{"big": "%s"}' "$(head -c 2000000 /dev/zero | tr '\0' x)" > "$BATON_OUTPUT"
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// `unshare`'s arguments for a mount namespace of its own, in a user namespace that maps
/// the caller to root there (so mounting needs no privilege outside).
const NAMESPACE: [&str; 6] = [
    "--user",
    "--map-root-user",
    "--mount",
    "--propagation",
    "private",
    "--",
];

/// Starts `baton serve` with its store on a tmpfs of its own, mounted at `disk`.
fn serve_on_tmpfs(sb: &Sandbox, disk: &Path) -> Server {
    let probe = std::process::Command::new("unshare")
        .args(NAMESPACE)
        .args(["sh", "-c", "mount -t tmpfs -o size=1m t \"$0\""])
        .arg(sb.path())
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs `unshare` (util-linux) and user namespaces, to mount a small tmpfs \
         for baton alone: {probe:?}"
    );
    std::fs::create_dir_all(disk).unwrap();
    let config = config(sb, disk);
    let mount = format!("mount -t tmpfs -o {DISK} baton-test-disk \"$0\" && exec \"$@\"");
    let disk = disk.display().to_string();
    let wrapper: Vec<&str> = std::iter::once("unshare")
        .chain(NAMESPACE)
        .chain(["sh", "-c", &mount, &disk])
        .collect();
    sb.serve_through(
        &wrapper,
        &["-c", &config, "--listen", "127.0.0.1:0"],
        &[("T_OPERATOR", OPERATOR), ("GH_SECRET", SECRET)],
    )
}

/// Adds zeros to the file at `path` until the filesystem is full to the last page, then
/// gives `spare` bytes back.
fn fill(path: &Path, spare: u64) {
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the filler");
    let block = vec![0u8; 64 << 10];
    let mut written = file.metadata().unwrap().len();
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(28),
                    "the filler stopped with {e}, not ENOSPC"
                );
                break;
            }
        }
    }
    file.set_len(written.saturating_sub(spare)).unwrap();
}

fn push(server: &Server, n: usize) -> Reply {
    let body = format!(
        r#"{{"ref": "refs/heads/topic", "pad": "{}"}}"#,
        "y".repeat(32 << 10)
    );
    server.github("github", SECRET, "push", &format!("delivery-{n}"), &body)
}

fn readyz(server: &Server) -> Reply {
    server.request("GET", "/readyz", &[], None)
}

/// The lines of `log` that hold `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_full_disk_makes_baton_unready_and_it_recovers_within_seconds_once_space_returns() {
    let sb = Sandbox::new();
    let disk: PathBuf = sb.path().join("disk");
    let server = serve_on_tmpfs(&sb, &disk);
    // The tmpfs as baton sees it.
    let seen = PathBuf::from(format!("/proc/{}/root{}", server.pid(), disk.display()));
    assert!(
        seen.join("baton.db").is_file(),
        "the store is not on the tmpfs:\n{}",
        server.log()
    );
    assert_eq!(readyz(&server).status, 200);
    assert_eq!(push(&server, 0).status, 202);

    let run = server.post("/api/v1/workflows/wait/runs", OPERATOR, "{}");
    assert_eq!(run.status, 201, "{}", run.body);
    let id = run.json()["run"].as_str().unwrap().to_owned();
    server.wait_for(
        &format!("/api/v1/runs/{id}"),
        OPERATOR,
        "the stage running",
        |r| r["stages"][0]["status"] == "running",
    );

    // The disk fills but for a little room: enough for the small commits that claim the
    // stage's poll, not for the end of the stage, whose outputs are larger.
    fill(&seen.join("filler"), 512 << 10);
    std::fs::write(sb.path().join("go"), "").unwrap();
    let begun = Instant::now();
    while lines_with(&server.log(), "engine step failed") == 0 {
        assert!(
            begun.elapsed() < Duration::from_secs(10),
            "the end of the stage was not tried:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The disk fills up: deliveries get 500.
    fill(&seen.join("filler"), 0);
    let mut failed = None;
    for n in 1..=300 {
        let reply = push(&server, n);
        if reply.status == 500 {
            failed = Some(n);
            break;
        }
        assert_eq!(reply.status, 202, "delivery {n}: {reply:?}");
    }
    assert!(
        failed.is_some(),
        "300 deliveries of 32 KiB were stored on a full disk:\n{}",
        server.log()
    );
    // Asked as a kubelet asks, every second or so, readiness says why for as long as the
    // disk stays full.
    for _ in 0..4 {
        let ready = readyz(&server);
        assert_eq!(ready.status, 503, "{ready:?}\n{}", server.log());
        assert!(
            ready.body.starts_with("store cannot write: disk full"),
            "{}",
            ready.body
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    let run_now = server.get(&format!("/api/v1/runs/{id}"), OPERATOR).json();
    assert_eq!(run_now["status"], "running", "{run_now:#}");

    // Space returns.
    std::fs::remove_file(seen.join("filler")).unwrap();
    let freed = Instant::now();
    while readyz(&server).status != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(2),
            "/readyz still says {:?} 2 s after space returned",
            readyz(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = server.wait_for(
        &format!("/api/v1/runs/{id}"),
        OPERATOR,
        "the run done",
        |r| r["status"] == "succeeded",
    );
    assert!(
        freed.elapsed() < Duration::from_secs(10),
        "the run took {:?} after space returned",
        freed.elapsed()
    );
    assert_eq!(
        done["stages"][0]["outputs"]["big"].as_str().map(str::len),
        Some(2_000_000)
    );
    assert_eq!(push(&server, 1000).status, 202);

    // Each recurring failure is logged when it starts and when it ends, not on every try
    // (the checkpoint is tried ten times a second, the stage's end every few seconds).
    let log = server.log();
    for (starts, ends) in [
        ("the store cannot write", "the store writes again"),
        ("WAL checkpoint failed", "WAL checkpoint works again"),
    ] {
        let (started, ended) = (lines_with(&log, starts), lines_with(&log, ends));
        assert!(
            (1..=3).contains(&started),
            "{started} lines `{starts}`:\n{log}"
        );
        assert_eq!(
            started, ended,
            "every `{starts}` ends with `{ends}`:\n{log}"
        );
    }
    // The matcher fails only if a pass fell in the full spell; if it did, the same rule.
    let (started, ended) = (
        lines_with(&log, "matching deliveries failed"),
        lines_with(&log, "matching deliveries works again"),
    );
    assert!(started <= 3 && started == ended, "{log}");
    assert!(!log.contains("no transaction is active"), "{log}");
}
