//! Secret references: `{ env = "NAME" }` or `{ file = "PATH" }`, never the secret itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a secret lives. The value is read only when an adapter or source is built.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// An environment variable of the baton process.
    Env(String),
    /// A file; its content with trailing newlines trimmed.
    File(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "{{ env = {name:?} }}"),
            Self::File(path) => write!(f, "{{ file = {path:?} }}"),
        }
    }
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Could not read a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or is empty).
    #[error("secret environment variable `{0}` is not set")]
    MissingEnv(String),
    /// The file does not exist.
    #[error("secret file `{0}` does not exist")]
    MissingFile(String),
    /// The file could not be read, or what it holds cannot be a secret.
    #[error("secret file `{path}` cannot be read: {reason}")]
    File {
        /// The path.
        path: String,
        /// The I/O error, or what is wrong with the content.
        reason: String,
    },
}

impl SecretError {
    /// True when the secret is only absent from this machine (an unset variable, a missing
    /// file), which says nothing of the machine the config is meant for.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::MissingEnv(_) | Self::MissingFile(_))
    }
}

/// Reads secret references. The I/O lives outside the core.
pub trait SecretResolver: Send + Sync {
    /// Reads one secret.
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError>;
}

/// Checks that `value` is a secret reference, for validation of config blocks.
///
/// Returns the message to show, which tells how to write a reference.
pub fn check_secret_value(value: &serde_json::Value) -> Result<SecretRef, String> {
    match value {
        serde_json::Value::String(_) => Err(
            "a literal secret is not allowed here: write a reference, `{ env = \"NAME\" }` or `{ file = \"/path\" }`"
                .to_owned(),
        ),
        other => serde_json::from_value(other.clone()).map_err(|_| {
            "expected a secret reference: `{ env = \"NAME\" }` or `{ file = \"/path\" }`".to_owned()
        }),
    }
}

/// Reads a secret reference for `#[serde(deserialize_with = "…")]`, refusing a literal
/// secret with a hint on how to write a reference.
pub fn deserialize_reference<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SecretRef, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    check_secret_value(&value).map_err(serde::de::Error::custom)
}

/// [`deserialize_reference`] for an optional key (with `#[serde(default)]`).
pub fn deserialize_optional_reference<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretRef>, D::Error> {
    deserialize_reference(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_parse_and_literals_are_refused() {
        assert_eq!(
            check_secret_value(&json!({"env": "X"})),
            Ok(SecretRef::Env("X".into()))
        );
        assert_eq!(
            check_secret_value(&json!({"file": "/p"})),
            Ok(SecretRef::File("/p".into()))
        );
        assert!(
            check_secret_value(&json!("hunter2"))
                .unwrap_err()
                .contains("literal secret")
        );
        assert!(check_secret_value(&json!({"env": "X", "x": 1})).is_err());
        assert!(check_secret_value(&json!(5)).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
