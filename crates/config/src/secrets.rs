//! Reading secret references from the environment and from files.

use std::collections::HashMap;
use std::path::PathBuf;

use baton_core::secret::SecretError;
use baton_core::{Secret, SecretRef, SecretResolver};

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
                let bytes =
                    std::fs::read(self.base_dir.join(path)).map_err(|e| fail(e.to_string()))?;
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
        assert!(get(SecretRef::File("missing".into())).is_err());
    }
}
