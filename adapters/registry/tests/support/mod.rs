//! What the registry tests share: the registries `scripts/containers.sh` starts, images
//! built with umoci and pushed with skopeo, an index written by hand, and adapters built
//! through the kind as the gateway builds them.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use baton_adapter_kit::harness::{TableSecrets, poll_to_end, start_request};
use baton_adapter_registry::RegistryKind;
use baton_core::{Adapter, AdapterKind, AttemptKey, ExternalState};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn required(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: it names {what}; run scripts/containers.sh (it starts the registries and prints the variables)")
    })
}

/// The open registry (delete enabled), `http://127.0.0.1:<port>`.
pub fn open_url() -> String {
    let url = required("BATON_REGISTRY_URL", "an open registry");
    reachable(&url);
    url
}

/// The htpasswd registry and its password for user `baton`.
pub fn auth_url_and_password() -> (String, String) {
    let url = required("BATON_REGISTRY_AUTH_URL", "a registry with htpasswd auth");
    reachable(&url);
    let password = required(
        "BATON_REGISTRY_AUTH_PASSWORD",
        "the password of user `baton`",
    );
    (url, password)
}

fn reachable(url: &str) {
    let code = http_code(&["--max-time", "5", &format!("{url}/v2/")]);
    assert!(
        code == "200" || code == "401",
        "the registry at {url} does not answer /v2/ (got `{code}`): run scripts/containers.sh"
    );
}

/// The HTTP status `curl` with `args` gets, as text (`000` when nothing answered).
pub fn http_code(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `host:port` of a registry URL.
pub fn authority(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_owned()
}

/// A repository name no other test or run uses.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("baton-test/{name}-{}-{nanos}-{n}", std::process::id())
}

pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} does not run ({e}): run scripts/containers.sh, which installs it")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An OCI layout under `dir` holding image `tag` for `os/arch`, with one layer of
/// `size` bytes that no other image has.
pub fn build_image(dir: &Path, tag: &str, os: &str, arch: &str, size: usize) -> String {
    let layout = dir.join("oci");
    let layout_s = layout.to_str().unwrap();
    if !layout.exists() {
        run("umoci", &["init", "--layout", layout_s]);
    }
    let image = format!("{layout_s}:{tag}");
    run("umoci", &["new", "--image", &image]);
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--os",
            os,
            "--architecture",
            arch,
        ],
    );
    let file = dir.join(format!("{tag}.bin"));
    let seed = unique(tag);
    let mut content = Vec::with_capacity(size);
    while content.len() < size {
        content.extend_from_slice(&Sha256::digest(format!("{seed}{}", content.len())));
    }
    content.truncate(size);
    std::fs::write(&file, content).unwrap();
    run(
        "umoci",
        &[
            "insert",
            "--image",
            &image,
            file.to_str().unwrap(),
            "/payload.bin",
        ],
    );
    run("umoci", &["gc", "--layout", layout_s]);
    format!("oci:{image}")
}

/// `skopeo copy` of `source` to `docker://<dest>`; `format` `v2s2` converts to Docker's
/// schema 2 on the way, `creds` logs in to the destination.
pub fn push(source: &str, dest: &str, format: Option<&str>, creds: Option<&str>) {
    let dest = format!("docker://{dest}");
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
    if let Some(format) = format {
        args.extend(["--format", format]);
    }
    if let Some(creds) = creds {
        args.extend(["--dest-creds", creds]);
    }
    args.extend([source, dest.as_str()]);
    run("skopeo", &args);
}

/// The manifest bytes skopeo reads for `image` (`host/repo:tag` or `@digest`).
pub fn raw(image: &str, creds: Option<&str>) -> Vec<u8> {
    let image = format!("docker://{image}");
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    if let Some(creds) = creds {
        args.extend(["--creds", creds]);
    }
    args.push(&image);
    run("skopeo", &args)
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A single-platform image pushed as `<repo>:v1` to the registry at `host`, with a layer
/// of `size` bytes; its repository, a fresh one named after `name`.
pub fn pushed_image(host: &str, name: &str, arch: &str, size: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let repo = unique(name);
    let source = build_image(dir.path(), "v1", "linux", arch, size);
    push(&source, &format!("{host}/{repo}:v1"), None, None);
    repo
}

/// An adapter on the open registry whose `destinations` hold the htpasswd one; that
/// registry's `host:port` and password.
pub fn adapter_with_destination(url: &str) -> (Arc<dyn Adapter>, String, String) {
    let (auth_url, password) = auth_url_and_password();
    let adapter = adapter(
        json!({
            "url": url,
            "destinations": [{"url": auth_url, "username": "baton", "password": {"env": "AUTH_PW"}}],
        }),
        &[("AUTH_PW", &password)],
    );
    (adapter, authority(&auth_url), password)
}

/// A child of a pushed index.
#[derive(Debug, Clone)]
pub struct Child {
    pub digest: String,
    pub size: usize,
    pub platform: &'static str,
}

/// A three-platform OCI index pushed as `<repo>:<tag>` in the registry at `url`: three
/// umoci images (linux/amd64, linux/arm64, linux/arm with variant v7 in the index), each
/// pushed under a tag of its own, then the index JSON PUT by hand. Returns the index's
/// bytes and children.
pub fn push_index(dir: &Path, url: &str, repo: &str, tag: &str) -> (Vec<u8>, Vec<Child>) {
    let host = authority(url);
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (arch, variant, label) in [
        ("amd64", None, "linux/amd64"),
        ("arm64", None, "linux/arm64"),
        ("arm", Some("v7"), "linux/arm/v7"),
    ] {
        let child_tag = format!("{tag}-{arch}");
        let source = build_image(dir, &child_tag, "linux", arch, 2048);
        push(&source, &format!("{host}/{repo}:{child_tag}"), None, None);
        let bytes = raw(&format!("{host}/{repo}:{child_tag}"), None);
        let digest = sha256(&bytes);
        let mut platform = json!({"os": "linux", "architecture": arch});
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
        }
        entries.push(json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(), "platform": platform,
        }));
        children.push(Child {
            digest,
            size: bytes.len(),
            platform: label,
        });
    }
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
    }))
    .unwrap();
    let index_file = dir.join(format!("{tag}-index.json"));
    std::fs::write(&index_file, &index).unwrap();
    let code = http_code(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_INDEX}"),
        "--data-binary",
        &format!("@{}", index_file.display()),
        &format!("{url}/v2/{repo}/manifests/{tag}"),
    ]);
    assert_eq!(code, "201", "PUT of the index");
    (index, children)
}

/// An adapter built through the kind from `config`, with `secrets`.
pub fn adapter(config: Value, secrets: &[(&str, &str)]) -> Arc<dyn Adapter> {
    let kind = RegistryKind;
    let errors = kind.validate_instance(&config);
    assert!(errors.is_empty(), "{errors:?}");
    kind.build("reg", &config, &TableSecrets::of(secrets))
        .expect("the adapter builds")
}

/// Starts `with` under a fresh key and polls it to its end; the state's outcome and the
/// outputs (empty unless it succeeded).
pub async fn run_stage(
    adapter: &dyn Adapter,
    with: Value,
) -> (baton_core::PollOutcome, Map<String, Value>) {
    let key = baton_adapter_kit::fresh_key("stage");
    let mut external = adapter
        .start(&start_request(&key, with))
        .await
        .expect("start");
    let outcome = poll_to_end(adapter, &key, &mut external).await;
    let outputs = if matches!(outcome.state, ExternalState::Succeeded { .. }) {
        adapter.outputs(&key, &external).await.expect("outputs")
    } else {
        Map::new()
    };
    (outcome, outputs)
}

/// [`run_stage`] of a stage that must succeed; its outputs.
pub async fn succeeded(adapter: &dyn Adapter, with: Value) -> Map<String, Value> {
    let (outcome, outputs) = run_stage(adapter, with.clone()).await;
    assert!(
        matches!(outcome.state, ExternalState::Succeeded { .. }),
        "{with}: {outcome:?}"
    );
    outputs
}

/// [`run_stage`] of a stage that must fail; its message.
pub async fn failed(adapter: &dyn Adapter, with: Value) -> String {
    let (outcome, _) = run_stage(adapter, with.clone()).await;
    assert_eq!(outcome.state, ExternalState::Failed, "{with}: {outcome:?}");
    outcome.message.expect("a failure says why")
}

/// The `with` of a promote.
pub fn promote(from: &str, to: &str) -> Value {
    json!({"action": "promote", "from": from, "to": to})
}

/// The `with` of an inspect.
pub fn inspect(image: &str) -> Value {
    json!({"action": "inspect", "image": image})
}

pub fn key(stage: &str) -> AttemptKey {
    baton_adapter_kit::fresh_key(stage)
}
