//! The environment a command starts with: a few of baton's variables, never one the config
//! reads a secret from.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::spec::RESERVED_ENV;

/// The variables of baton's environment every command gets (and every `LC_*` one): what
/// programs need to find each other and their user's files, and the locale and time zone.
pub const BASIC_ENV: [&str; 9] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// Which more of baton's variables commands get, besides [`BASIC_ENV`]: the instance key
/// `inherit_env`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum InheritEnv {
    /// None (`inherit_env = false`, or no key).
    #[default]
    Basic,
    /// These names (`inherit_env = ["SSH_AUTH_SOCK"]`).
    Names(Vec<String>),
    /// All of them (`inherit_env = true`).
    All,
}

impl<'de> Deserialize<'de> for InheritEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Expect;
        impl<'de> Visitor<'de> for Expect {
            type Value = InheritEnv;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of variable names, or `true` for all of baton's environment")
            }

            fn visit_bool<E: de::Error>(self, all: bool) -> Result<InheritEnv, E> {
                Ok(if all {
                    InheritEnv::All
                } else {
                    InheritEnv::Basic
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InheritEnv, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(InheritEnv::Names(names))
            }
        }
        d.deserialize_any(Expect)
    }
}

impl InheritEnv {
    /// Why a name of the list cannot be a variable's, for each such name (index, message).
    pub(crate) fn problems(&self) -> Vec<(usize, &'static str)> {
        let InheritEnv::Names(names) = self else {
            return Vec::new();
        };
        names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                if name.is_empty() || name.contains(['=', '\0']) {
                    Some((i, "not a variable name (empty, or holds `=` or NUL)"))
                } else if RESERVED_ENV.contains(&name.as_str()) {
                    Some((i, "this variable is set by baton itself"))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// What a command's environment is made of, besides the stage's `env` and the `BATON_*`
/// variables baton sets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    pub(crate) inherit: InheritEnv,
    /// Variables never passed: those the config reads secrets from.
    pub(crate) hidden: Arc<BTreeSet<String>>,
}

impl Environment {
    /// Whether a command gets baton's variable `name`.
    fn passes(&self, name: &str) -> bool {
        if self.hidden.contains(name) || RESERVED_ENV.contains(&name) {
            return false;
        }
        BASIC_ENV.contains(&name)
            || name.starts_with("LC_")
            || match &self.inherit {
                InheritEnv::Basic => false,
                InheritEnv::Names(names) => names.iter().any(|n| n == name),
                InheritEnv::All => true,
            }
    }

    /// The variables of `vars` (baton's environment) a command gets.
    pub(crate) fn select(
        &self,
        vars: impl Iterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        vars.filter(|(name, _)| name.to_str().is_some_and(|name| self.passes(name)))
            .collect()
    }

    /// The names an `inherit_env` list asks for that are never passed, being secrets'.
    pub(crate) fn hidden_asked_for(&self) -> Vec<&str> {
        match &self.inherit {
            InheritEnv::Names(names) => names
                .iter()
                .filter(|n| self.hidden.contains(n.as_str()))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names.iter().map(|n| (n.into(), "v".into())).collect()
    }

    fn selected(env: &Environment, names: &[&str]) -> Vec<String> {
        env.select(vars(names).into_iter())
            .into_iter()
            .map(|(n, _)| n.into_string().unwrap())
            .collect()
    }

    #[test]
    fn commands_get_the_basic_set_what_they_ask_for_and_never_a_secret() {
        let hidden: BTreeSet<String> = ["GH_SECRET", "HOME"].map(String::from).into();
        let names = [
            "PATH",
            "HOME",
            "LC_ALL",
            "TZ",
            "GH_SECRET",
            "EXTRA",
            "OTHER",
            "BATON_INPUT",
        ];
        let mut env = Environment {
            inherit: InheritEnv::Basic,
            hidden: Arc::new(hidden),
        };
        assert_eq!(selected(&env, &names), ["PATH", "LC_ALL", "TZ"]);
        env.inherit = InheritEnv::Names(vec!["EXTRA".into(), "GH_SECRET".into()]);
        assert_eq!(selected(&env, &names), ["PATH", "LC_ALL", "TZ", "EXTRA"]);
        assert_eq!(env.hidden_asked_for(), ["GH_SECRET"]);
        env.inherit = InheritEnv::All;
        assert_eq!(
            selected(&env, &names),
            ["PATH", "LC_ALL", "TZ", "EXTRA", "OTHER"]
        );
    }

    #[test]
    fn the_key_reads_a_flag_or_a_list() {
        let read = |v: serde_json::Value| serde_json::from_value::<InheritEnv>(v);
        assert_eq!(read(true.into()).unwrap(), InheritEnv::All);
        assert_eq!(read(false.into()).unwrap(), InheritEnv::Basic);
        assert_eq!(
            read(serde_json::json!(["A"])).unwrap(),
            InheritEnv::Names(vec!["A".into()])
        );
        let err = read("A".into()).unwrap_err().to_string();
        assert!(err.contains("a list of variable names"), "{err}");
        let names = InheritEnv::Names(vec!["OK".into(), String::new(), "BATON_OUTPUT".into()]);
        let bad: Vec<usize> = names.problems().into_iter().map(|(i, _)| i).collect();
        assert_eq!(bad, [1, 2]);
    }
}
