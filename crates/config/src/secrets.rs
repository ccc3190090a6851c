//! Reading secret references from the environment and from files, and finding every
//! reference a config holds.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use baton_core::secret::{SecretError, check_secret_value};
use baton_core::{Secret, SecretRef, SecretResolver};
use serde_json::Value;

use crate::diagnostic::join;

/// The largest secret file read, 64 KiB: no key or token is near that long, and a bigger
/// file (or a device such as `/dev/zero`) is a mistake that would fill memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// One secret reference in the gateway config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// Its key path (`sources.github.secret`, `api.tokens[0].token`).
    pub path: String,
    /// The reference.
    pub reference: SecretRef,
}

/// Every secret reference inside `value` (found at key path `at`), in document order: each
/// `{ env = "…" }` or `{ file = "…" }` table, wherever it stands.
pub(crate) fn find_references(value: &Value, at: &str, found: &mut Vec<SecretUse>) {
    match value {
        Value::Object(map) => match check_secret_value(value) {
            Ok(reference) => found.push(SecretUse {
                path: at.to_owned(),
                reference,
            }),
            Err(_) => {
                for (key, child) in map {
                    find_references(child, &join(at, key), found);
                }
            }
        },
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_references(child, &join(at, &format!("[{i}]")), found);
            }
        }
        _ => {}
    }
}

/// Resolves `{ env = "NAME" }` from environment variables and `{ file = "PATH" }` from files
/// (content with trailing newlines trimmed; a relative path is relative to `base_dir`).
///
/// An empty variable or file counts as missing: an empty webhook secret would accept
/// anyone's signature.
#[derive(Debug, Clone)]
pub struct EnvFileResolver {
    base_dir: PathBuf,
    vars: Option<HashMap<String, String>>,
}

impl EnvFileResolver {
    /// Reads the process's environment; relative files are resolved against `base_dir`
    /// (usually [`GatewayConfig::base_dir`](crate::GatewayConfig::base_dir)).
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: base_dir.into(),
            vars: None,
        }
    }

    /// Reads the given variables instead of the process's environment (for tests and tools).
    pub fn with_vars(
        base_dir: impl Into<PathBuf>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            base_dir: base_dir.into(),
            vars: Some(vars.into_iter().collect()),
        }
    }
}

impl SecretResolver for EnvFileResolver {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) => {
                let value = match &self.vars {
                    Some(vars) => vars.get(name).cloned(),
                    None => std::env::var(name).ok(),
                };
                match value {
                    Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                    _ => Err(SecretError::MissingEnv(name.clone())),
                }
            }
            SecretRef::File(path) => {
                let fail = |reason: String| SecretError::File {
                    path: path.clone(),
                    reason,
                };
                let full = self.base_dir.join(path);
                let meta = std::fs::metadata(&full).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => SecretError::MissingFile(path.clone()),
                    _ => fail(e.to_string()),
                })?;
                if meta.is_dir() {
                    return Err(fail("it is a directory, not a file".to_owned()));
                }
                // A device or a FIFO may never end, or block the start on its open.
                if !meta.is_file() {
                    return Err(fail(
                        "it is not a regular file (a device, FIFO or socket); expected a file holding the secret".to_owned(),
                    ));
                }
                let too_big = || {
                    fail(format!(
                        "it is larger than {} KiB, the most a secret file may hold",
                        MAX_SECRET_FILE_BYTES / 1024
                    ))
                };
                if meta.len() > MAX_SECRET_FILE_BYTES {
                    return Err(too_big());
                }
                // The file may grow between the look and the read: read one byte past the cap.
                let mut bytes = Vec::new();
                std::fs::File::open(&full)
                    .and_then(|f| f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
                    .map_err(|e| fail(e.to_string()))?;
                if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
                    return Err(too_big());
                }
                let text =
                    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".to_owned()))?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(fail("the file is empty".to_owned()));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "hunter2\r\n\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let r = EnvFileResolver::with_vars(
            dir.path(),
            [
                ("A".to_owned(), "x".to_owned()),
                ("E".to_owned(), String::new()),
            ],
        );
        let get = |s: SecretRef| r.resolve(&s).map(|s| s.expose().to_owned());
        assert_eq!(get(SecretRef::Env("A".into())).unwrap(), "x");
        assert_eq!(get(SecretRef::File("s".into())).unwrap(), "hunter2");
        let abs = dir.path().join("s").display().to_string();
        assert_eq!(get(SecretRef::File(abs)).unwrap(), "hunter2");
        assert_eq!(
            get(SecretRef::Env("E".into())),
            Err(SecretError::MissingEnv("E".into()))
        );
        assert!(get(SecretRef::Env("NOPE".into())).is_err());
        assert!(
            get(SecretRef::File("empty".into()))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            get(SecretRef::File("bin".into()))
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        assert_eq!(
            get(SecretRef::File("missing".into())),
            Err(SecretError::MissingFile("missing".into()))
        );
    }

    #[test]
    fn directories_devices_and_big_files_are_refused_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let cap = MAX_SECRET_FILE_BYTES as usize;
        std::fs::write(dir.path().join("big"), "x".repeat(cap + 1)).unwrap();
        std::fs::write(dir.path().join("at-cap"), "y".repeat(cap)).unwrap();
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let r = EnvFileResolver::with_vars(dir.path(), []);
        let reason = |path: &str| match r.resolve(&SecretRef::File(path.into())) {
            Err(SecretError::File { reason, .. }) => reason,
            other => panic!("{path}: {other:?}"),
        };
        // `/dev/zero` never ends: read whole, it would fill memory.
        assert!(reason("/dev/zero").contains("not a regular file"));
        assert!(reason("big").contains("larger than 64 KiB"));
        assert!(reason("folder").contains("directory"));
        assert_eq!(
            r.resolve(&SecretRef::File("at-cap".into()))
                .unwrap()
                .expose()
                .len(),
            cap
        );
        assert!(SecretError::MissingFile("x".into()).is_absent());
        assert!(SecretError::MissingEnv("x".into()).is_absent());
        assert!(
            !SecretError::File {
                path: "x".into(),
                reason: "y".into()
            }
            .is_absent()
        );
    }

    #[test]
    fn references_are_found_wherever_they_stand() {
        let doc = serde_json::json!({
            "api": {"tokens": [{"name": "a", "token": {"env": "T"}}]},
            "sources": {"gh": {"kind": "github", "secret": {"file": "s"}, "secrets": [{"env": "OLD"}]}},
            "adapters": {"ci": {"kind": "jenkins", "token": {"env": "J"}, "url": "http://x"}},
            "engine": {"poll_min": "1s"},
        });
        let mut found = Vec::new();
        find_references(&doc, "", &mut found);
        let got: Vec<(&str, &SecretRef)> = found
            .iter()
            .map(|u| (u.path.as_str(), &u.reference))
            .collect();
        assert_eq!(
            got,
            [
                ("api.tokens[0].token", &SecretRef::Env("T".into())),
                ("sources.gh.secret", &SecretRef::File("s".into())),
                ("sources.gh.secrets[0]", &SecretRef::Env("OLD".into())),
                ("adapters.ci.token", &SecretRef::Env("J".into())),
            ]
        );
    }
}
