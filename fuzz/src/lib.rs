//! What the fuzz targets share: the input formats, a gateway to send requests to, and the
//! checks each target makes beyond "does not panic". See README.md for the targets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_core::secret::SecretError;
use baton_core::{Kinds, Secret, SecretRef, SecretResolver};

pub mod intake;
pub mod jq;
pub mod load;

/// Every kind of source and adapter, as TOML tables (no top-level key may follow). Secrets
/// are their own names (see [`Named`]); the adapters' URLs answer nothing.
pub const GATEWAY: &str = r#"
[sources.github]
kind = "github"
secret = { env = "GITHUB_SECRET" }

[sources.gitlab]
kind = "gitlab"
token = { env = "GITLAB_TOKEN" }

[sources.deploy]
kind = "generic"
hmac = { secret = { env = "DEPLOY_SECRET" }, header = "X-Signature-256", prefix = "sha256=" }
event = { expr = ".type" }
delivery_id = { header = "X-Request-Id" }

[sources.relay]
kind = "generic"
bearer = { token = { env = "RELAY_TOKEN" } }
event = { header = "X-Event" }

[sources.registry]
kind = "registry"
token = { env = "REGISTRY_TOKEN" }

[sources.registry-basic]
kind = "registry"
username = "notifier"
password = { env = "REGISTRY_PASSWORD" }

[adapters.jenkins]
kind = "jenkins"
url = "http://127.0.0.1:9/"

[adapters.buildbot]
kind = "buildbot"
url = "http://127.0.0.1:9/"
webhook_token = { env = "BUILDBOT_TOKEN" }

[adapters.gl]
kind = "gitlab-ci"
url = "http://127.0.0.1:9/"
project = "group/app"
token = { env = "GITLAB_API_TOKEN" }

[adapters.gha]
kind = "github-actions"
url = "http://127.0.0.1:9/"
repo = "octo-org/app"
token = { env = "GITHUB_TOKEN" }
correlation_input = "baton_attempt"
"#;

/// Resolves every secret reference to its own name (`{ env = "X" }` is the secret `X`), so
/// a target knows each secret from the config text alone and never reads the environment
/// or the file system for one.
pub struct Named;

impl SecretResolver for Named {
    fn resolve(&self, r: &SecretRef) -> Result<Secret, SecretError> {
        Ok(Secret::new(match r {
            SecretRef::Env(n) | SecretRef::File(n) => n.clone(),
        }))
    }
}

/// Every adapter kind `baton` has, as `baton-cli` registers them; exec instances keep their
/// state under `state_dir`.
pub fn kinds(state_dir: &Path) -> Kinds {
    let mut kinds = Kinds::new();
    kinds.register(Arc::new(baton_adapter_exec::ExecKind::new(state_dir)));
    kinds.register(Arc::new(baton_adapter_approval::ApprovalKind));
    kinds.register(Arc::new(baton_adapter_jenkins::JenkinsKind::default()));
    kinds.register(Arc::new(baton_adapter_buildbot::BuildbotKind));
    kinds.register(Arc::new(baton_adapter_gitlab_ci::GitLabKind::default()));
    kinds.register(Arc::new(baton_adapter_travis::TravisKind::default()));
    kinds.register(Arc::new(
        baton_adapter_github_actions::GithubActionsKind::default(),
    ));
    kinds
}

/// A folder of this process's own (`baton-fuzz/<what>-<pid>` under /dev/shm, or the temp
/// folder when there is none), made empty. libFuzzer ends a process with `exit`, which
/// runs no destructor, so the folders of processes that are gone are removed here instead.
pub fn scratch(what: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.join("baton-fuzz")
    } else {
        std::env::temp_dir().join("baton-fuzz")
    };
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.rsplit('-').next());
            let gone = pid
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| !Path::new("/proc").join(p.to_string()).exists());
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Splits `data` at its first NUL byte into two texts; the second is empty when there is
/// no NUL. None when the first is longer than `max_first` bytes or either is not UTF-8.
pub fn split_nul(data: &[u8], max_first: usize) -> Option<(&str, &str)> {
    let (first, second) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if first.len() > max_first {
        return None;
    }
    Some((
        std::str::from_utf8(first).ok()?,
        std::str::from_utf8(second).ok()?,
    ))
}
