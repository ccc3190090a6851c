//! The repository's `Dockerfile`: its runtime stage, built here around the `baton` binary
//! this test run built, runs the gateway on PostgreSQL with a read-only root file system as
//! uid 10001, and its `HEALTHCHECK` turns healthy.
//!
//! No image can be pulled on this machine, so the runtime stage's base is made here: a root
//! file system holding only the host's own copies of the shared libraries the two binaries
//! need (`ldd` names them, the dynamic loader included) and of `/bin/sh` and `/bin/mv` (the
//! `exec` adapter's wrapper runs them; `debian:bookworm-slim` has both), loaded with
//! `docker import`. The
//! Dockerfile's builder stage (a Rust image) cannot run here either: the image is built from
//! the Dockerfile's global `ARG`s and its `runtime` stage as written, behind a stand-in
//! `builder` stage that holds what the real one leaves (`/out/bin/baton`,
//! `/out/bin/baton-healthcheck` compiled from `deploy/docker/healthcheck.rs`, `/out/state/`,
//! the CA bundle), with the legacy builder (`DOCKER_BUILDKIT=0`). The builder stage itself is
//! checked as text, and the build context it compiles (the repository less `.dockerignore`)
//! by copying it into the busybox image of `BATON_BUSYBOX_IMAGE` and listing it.
//!
//! Needs the Docker engine of `BATON_DOCKER_HOST` (`scripts/containers.sh` starts it) and the
//! PostgreSQL server of `BATON_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use baton_tests::postgres::Database;
use baton_tests::{Sandbox, baton_bin, container_service, repo_root};
use serde_json::Value;

const DEPLOY_TOKEN: &str = "deploy-token-in-the-container";
const VIEWER_TOKEN: &str = "viewer-token-in-the-container";
/// The uid the image runs as.
const UID: &str = "10001";

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("Dockerfile")).expect("the repository's Dockerfile")
}

/// A `docker` command against the test engine.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", container_service("BATON_DOCKER_HOST"))
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("the docker command")
}

/// `docker ARGS`, which must succeed; its standard output, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The Dockerfile's stages: the text before the first `FROM`, then each stage's lines with
/// its name (`AS name`, lower case).
fn stages(text: &str) -> (String, Vec<(String, String)>) {
    let mut head = String::new();
    let mut stages: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let name = match words.as_slice() {
                [_, _, as_, name] if as_.eq_ignore_ascii_case("AS") => name.to_lowercase(),
                _ => String::new(),
            };
            stages.push((name, String::new()));
        }
        let target = match stages.last_mut() {
            Some((_, body)) => body,
            None => &mut head,
        };
        target.push_str(line);
        target.push('\n');
    }
    (head, stages)
}

/// The Dockerfile to build here: its global `ARG`s, the stand-in builder (labelled `label`,
/// to find its image, which the legacy builder keeps untagged), its runtime stage.
fn runtime_only(text: &str, label: &str) -> String {
    let (head, stages) = stages(text);
    let (last, runtime) = stages.last().expect("a stage");
    assert_eq!(
        last, "runtime",
        "the last stage is `AS runtime`, so a plain `docker build` makes the runtime image"
    );
    let args: String = head
        .lines()
        .filter(|l| l.trim_start().starts_with("ARG "))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "{args}FROM scratch AS builder\n\
         LABEL {label}\n\
         COPY baton baton-healthcheck /out/bin/\n\
         COPY state/ /out/state/\n\
         COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n\n{runtime}"
    )
}

#[test]
fn the_dockerfile_builds_baton_in_a_rust_stage_and_runs_it_as_a_non_root_user() {
    let text = dockerfile();
    let (head, stages) = stages(&text);
    assert!(head.contains("ARG RUNTIME_BASE="), "{head}");
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["builder", "runtime"]);
    let builder = &stages[0].1;
    assert!(
        builder.contains("FROM ${RUST_IMAGE} AS builder"),
        "{builder}"
    );
    assert!(head.contains("ARG RUST_IMAGE=rust:") && head.contains("-bookworm"));
    assert!(
        builder.contains("cargo build --release --locked -p baton-cli"),
        "{builder}"
    );
    assert!(
        builder.contains("deploy/docker/healthcheck.rs"),
        "{builder}"
    );
    let runtime = &stages[1].1;
    assert!(
        runtime.contains("FROM ${RUNTIME_BASE} AS runtime"),
        "{runtime}"
    );
    for line in [
        &format!("USER {UID}:{UID}"),
        "EXPOSE 8080",
        "ENTRYPOINT [\"baton\"]",
        "CMD [\"serve\", \"--config\", \"/etc/baton/baton.toml\"]",
    ] {
        assert!(
            runtime.lines().any(|l| l == line),
            "no `{line}` in:\n{runtime}"
        );
    }
    assert!(runtime.contains("HEALTHCHECK "), "{runtime}");
    // Nothing runs while the runtime stage is built, so a shell-less base will do.
    assert!(!runtime.lines().any(|l| l.starts_with("RUN ")), "{runtime}");
    // The flags CMD passes are the real ones.
    let help = Sandbox::new().run(&["serve", "--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    assert!(help.stdout.contains("--config <CONFIG>"), "{}", help.stdout);
}

#[test]
fn the_runtime_stage_is_what_the_test_builds() {
    let spliced = runtime_only(&dockerfile(), "test=1");
    let (_, stages) = stages(&spliced);
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["builder", "runtime"]);
    assert!(stages[1].1.contains("HEALTHCHECK"));
    // A Dockerfile whose last stage is another is refused rather than built half.
    let reordered = "ARG RUNTIME_BASE=x\nFROM x AS runtime\nUSER 1\nFROM y AS extra\n";
    let refused = std::panic::catch_unwind(|| runtime_only(reordered, "test=1"));
    assert!(refused.is_err());
}

/// The absolute paths of the shared libraries `binary` loads, its dynamic loader included.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Imports a base image holding the host's `/bin/sh` and `/bin/mv` and its copies of what
/// they and `binaries` load, plus the folders a process expects (`/tmp`, `/etc`), and
/// returns its tag.
fn import_base(scratch: &Path, binaries: &[&Path], tag: &str) -> String {
    let root = scratch.join("rootfs");
    for dir in ["tmp", "etc", "bin", "usr/local/bin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let tools = [Path::new("/bin/sh"), Path::new("/bin/mv")];
    let mut files: Vec<PathBuf> = binaries
        .iter()
        .copied()
        .chain(tools)
        .flat_map(libraries)
        .collect();
    assert!(
        files
            .iter()
            .any(|l| l.to_string_lossy().contains("libc.so")),
        "{files:?}"
    );
    files.extend(tools.map(Path::to_path_buf));
    files.sort();
    files.dedup();
    for lib in &files {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Follows the host's symbolic links: the image gets the files under the names asked.
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    let tarball = scratch.join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("tar");
    assert!(tar.success());
    docker_ok(&["import", tarball.to_str().unwrap(), tag]);
    tag.to_owned()
}

/// Copies `from` to `to` without its debug information when `strip` is at hand: a debug
/// build's is three quarters of its size, and the build context and the image each hold a
/// copy.
fn copy_binary(from: &Path, to: &Path) {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(from, to).unwrap();
    }
}

/// Compiles the image's health probe with the toolchain that builds this test.
fn compile_probe(to: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .args(["--edition", "2024", "-O", "-o"])
        .arg(to)
        .arg(repo_root().join("deploy/docker/healthcheck.rs"))
        .output()
        .expect("rustc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the container (with its anonymous volume) and the images when the test ends.
struct Cleanup {
    container: String,
    images: Vec<String>,
    /// The label of the stand-in builder stage's image.
    label: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = docker(&["logs", &self.container]);
            eprintln!(
                "container log:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        docker(&["rm", "-f", "-v", &self.container]);
        for image in &self.images {
            docker(&["rmi", "-f", image]);
        }
        let label = format!("label={}", self.label);
        docker(&["image", "prune", "-f", "--filter", &label]);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    match agent.run(request.body(body.as_bytes().to_vec()).unwrap()) {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits up to `limit` for `check`, then fails with `what` and the last value seen.
fn wait<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> (bool, T),
) -> T {
    let begun = Instant::now();
    loop {
        let (done, seen) = check();
        if done {
            return seen;
        }
        assert!(
            begun.elapsed() < limit,
            "timed out waiting for {what}; last: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The container's configuration folder: the gateway config (PostgreSQL store, a generic
/// source, an API token) and a workflow whose stage runs `baton --version` in the container.
fn write_config(sb: &Sandbox, port: u16, store: &str) -> PathBuf {
    sb.write(
        "etc/baton.toml",
        &format!(
            r#"workflows = ["workflows/*.yaml"]

[server]
listen = "0.0.0.0:{port}"

[store]
url = "{store}"

[engine]
exec_state_dir = "/var/lib/baton/exec"

[api]
tokens = [{{ name = "viewer", token = {{ env = "VIEWER_TOKEN" }}, role = "viewer" }}]

[sources.deploy]
kind = "generic"
bearer = {{ token = {{ env = "DEPLOY_TOKEN" }} }}
event = {{ expr = ".type" }}
"#
        ),
    );
    sb.write(
        "etc/workflows/release.yaml",
        r#"name: release
on: [{ source: deploy, event: release }]
stages:
  version:
    uses: exec
    timeout: 1m
    with: { command: [baton, --version] }
"#,
    );
    let dir = sb.path().join("etc");
    // Readable by the container's user, which is not the test's.
    for path in [sb.path(), &dir, &dir.join("workflows")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// The real and effective user and group ids of process `pid` (`/proc/PID/status`).
fn ids(pid: &str) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn the_runtime_image_serves_webhooks_on_postgres_read_only_as_a_non_root_user() {
    let database = Database::new();
    let sb = Sandbox::new();
    let unique = database.name.replace('_', "-");
    let cleanup = Cleanup {
        container: unique.clone(),
        images: vec![
            format!("baton-test/runtime-base:{unique}"),
            format!("baton-test/baton:{unique}"),
        ],
        label: format!("baton-test-build={unique}"),
    };

    // The build context: the spliced Dockerfile and what the stand-in builder copies.
    let context = sb.path().join("context");
    std::fs::create_dir_all(context.join("state")).unwrap();
    copy_binary(&baton_bin(), &context.join("baton"));
    compile_probe(&context.join("baton-healthcheck"));
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        context.join("ca-certificates.crt"),
    )
    .expect("the host's CA bundle (ca-certificates)");
    std::fs::write(
        context.join("Dockerfile"),
        runtime_only(&dockerfile(), &cleanup.label),
    )
    .unwrap();
    let base = import_base(
        sb.path(),
        &[&context.join("baton"), &context.join("baton-healthcheck")],
        &cleanup.images[0],
    );
    let image = &cleanup.images[1];
    docker_ok(&[
        "build",
        "-q",
        "--target",
        "runtime",
        "--build-arg",
        &format!("RUNTIME_BASE={base}"),
        "-t",
        image,
        context.to_str().unwrap(),
    ]);
    let config: Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        image,
    ]))
    .unwrap();
    assert_eq!(config["User"], format!("{UID}:{UID}"), "{config:#}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["baton"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "baton-healthcheck"])
    );

    // Host networking: PostgreSQL listens on the host's loopback only.
    let port = free_port();
    let config_dir = write_config(&sb, port, &database.url());
    let base_url = format!("http://127.0.0.1:{port}");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &cleanup.container,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--user",
        &format!("{UID}:{UID}"),
        "--volume",
        &format!("{}:/etc/baton:ro", config_dir.display()),
        "--env",
        &format!("DEPLOY_TOKEN={DEPLOY_TOKEN}"),
        "--env",
        &format!("VIEWER_TOKEN={VIEWER_TOKEN}"),
        "--env",
        &format!("BATON_HEALTHCHECK_URL={base_url}/healthz"),
        // The image's probe, asked more often than its 10 s so the test ends sooner.
        "--health-interval",
        "1s",
        image,
    ]);

    let limit = Duration::from_secs(60);
    wait(limit, "/healthz", || {
        let running = docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Running}}",
            &cleanup.container,
        ]);
        assert_eq!(running, "true", "the container stopped");
        let (status, body) = http("GET", &format!("{base_url}/healthz"), &[], "");
        (status == 200, (status, body))
    });
    wait(limit, "/readyz", || {
        let (status, body) = http("GET", &format!("{base_url}/readyz"), &[], "");
        (status == 200, (status, body))
    });

    let bearer = format!("Bearer {DEPLOY_TOKEN}");
    let (status, body) = http(
        "POST",
        &format!("{base_url}/hooks/deploy"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        r#"{"type": "release", "tag": "v1"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let delivery = serde_json::from_str::<Value>(&body).unwrap()["delivery"]
        .as_i64()
        .unwrap_or_else(|| panic!("no delivery id in {body}"));
    let api = |path: &str| {
        let viewer = format!("Bearer {VIEWER_TOKEN}");
        let (_, body) = http(
            "GET",
            &format!("{base_url}{path}"),
            &[("authorization", &viewer)],
            "",
        );
        serde_json::from_str::<Value>(&body).unwrap_or_default()
    };
    let stored = wait(limit, "the delivery to be processed", || {
        let value = api(&format!("/api/v1/deliveries/{delivery}"));
        (value["status"] == "processed", value)
    });
    let run = stored["runs"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no run started by {stored:#}"))
        .to_owned();
    let ended = wait(limit, "the run to end", || {
        let value = api(&format!("/api/v1/runs/{run}"));
        (
            value["status"] == "succeeded" || value["status"] == "failed",
            value,
        )
    });
    assert_eq!(ended["status"], "succeeded", "{ended:#}");

    wait(limit, "the HEALTHCHECK to report healthy", || {
        let health = docker_ok(&[
            "inspect",
            "--format",
            "{{json .State.Health}}",
            &cleanup.container,
        ]);
        let value: Value = serde_json::from_str(&health).unwrap_or_default();
        (value["Status"] == "healthy", value)
    });
    // The probe fails when nothing answers, so healthy means it reached the gateway.
    let refused = docker(&[
        "exec",
        &cleanup.container,
        "baton-healthcheck",
        "http://127.0.0.1:1/healthz",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");

    let pid = docker_ok(&["inspect", "--format", "{{.State.Pid}}", &cleanup.container]);
    let (uids, gids) = ids(&pid);
    assert_eq!(
        uids,
        [UID; 4].join(" "),
        "real, effective, saved, file system uids"
    );
    assert_eq!(gids, [UID; 4].join(" "));
    let read_only = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
        &cleanup.container,
    ]);
    assert_eq!(read_only, "true");
    drop(cleanup);
}

#[test]
fn the_build_context_is_the_source_tree_without_build_outputs() {
    let image = container_service("BATON_BUSYBOX_IMAGE");
    let sb = Sandbox::new();
    let tag = format!(
        "baton-test/context:{}-{}",
        std::process::id(),
        sb.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
    );
    // The repository is the context, as for `docker build .`; only the Dockerfile differs.
    let dockerfile = sb.write("Dockerfile", &format!("FROM {image}\nCOPY . /src\n"));
    let root = repo_root();
    docker_ok(&[
        "build",
        "-q",
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        &tag,
        root.to_str().unwrap(),
    ]);
    let listing = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "find",
        "/src",
        "-maxdepth",
        "3",
    ]);
    docker(&["rmi", "-f", &tag]);
    assert!(listing.status.success(), "{listing:?}");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let present: BTreeSet<&str> = listing.lines().collect();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    // What `cargo build --locked` reads: the workspace, its lock file and settings.
    let needed = [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "deploy/docker",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        members
            .iter()
            .map(|m| format!("{}/Cargo.toml", m.as_str().unwrap())),
    );
    for path in needed {
        let inside = format!("/src/{path}");
        assert!(
            present.contains(inside.as_str()),
            "{inside} missing from the build context"
        );
    }
    for ignored in [
        "/src/target",
        "/src/.git",
        "/src/.containers",
        "/src/Dockerfile",
    ] {
        assert!(
            !present.contains(ignored),
            "{ignored} is in the build context"
        );
    }
}
