//! Image references as stages write them: `repo:tag`, `repo@sha256:<hex>`, and, for a
//! promote's `to`, `host[:port]/repo:tag` naming another registry.

use std::fmt;

/// What a reference points at in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag(String),
    /// A manifest digest, `sha256:` and 64 lowercase hex digits.
    Digest(String),
}

impl Target {
    /// The path segment after `/manifests/`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tag(text) | Self::Digest(text) => text,
        }
    }
}

/// A checked image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` when the reference names a registry, as Docker tells one: a first
    /// path component holding `.` or `:`, or `localhost`.
    pub host: Option<String>,
    /// The repository, `team/app`.
    pub repository: String,
    /// The tag or digest.
    pub target: Target,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}/")?;
        }
        match &self.target {
            Target::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            Target::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

/// True for `sha256:` and 64 lowercase hexadecimal digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn is_tag(text: &str) -> bool {
    let mut bytes = text.bytes();
    text.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One path component of a repository name, as the distribution spec's grammar has it:
/// lowercase letters and digits, separated by `.`, `_`, `__` or runs of `-`.
fn is_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(&b) {
            if !(separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.bytes().all(|s| s == b'-'))
            {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// Reads `text` as an image reference. `allow_host`: whether a registry host may lead it.
/// The error says what was expected.
pub fn parse(text: &str, allow_host: bool) -> Result<ImageRef, String> {
    let expected = if allow_host {
        "expected `repo:tag`, `repo@sha256:<64 hex>`, or `host[:port]/repo:tag` for another registry"
    } else {
        "expected `repo:tag` or `repo@sha256:<64 hex>` in this instance's registry"
    };
    let bad = |why: &str| format!("`{text}` {why}: {expected}");
    let (rest, target) = if let Some((name, digest)) = text.split_once('@') {
        if !is_digest(digest) {
            return Err(bad(
                "has a digest that is not `sha256:` and 64 lowercase hex digits",
            ));
        }
        (name, Target::Digest(digest.to_owned()))
    } else {
        let slash = text.rfind('/').map_or(0, |i| i + 1);
        match text[slash..].split_once(':') {
            Some((name, tag)) if is_tag(tag) => {
                (&text[..slash + name.len()], Target::Tag(tag.to_owned()))
            }
            Some(_) => {
                return Err(bad(
                    "has a tag that is not `[A-Za-z0-9_][A-Za-z0-9._-]*` (at most 128)",
                ));
            }
            None => return Err(bad("names no tag or digest (baton never assumes `latest`)")),
        }
    };
    let mut components: Vec<&str> = rest.split('/').collect();
    let host = match components.first() {
        Some(first) if components.len() > 1 && looks_like_host(first) => {
            if !allow_host {
                return Err(bad("names a registry host"));
            }
            Some(components.remove(0).to_owned())
        }
        _ => None,
    };
    if components.iter().any(|c| !is_component(c)) {
        return Err(bad(
            "has a repository that is not lowercase path components (`team/app`)",
        ));
    }
    Ok(ImageRef {
        host,
        repository: components.join("/"),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn forms_that_parse() {
        let r = parse("team/app:1.2.3", false).unwrap();
        assert_eq!(
            (r.host, r.repository.as_str(), r.target),
            (None, "team/app", Target::Tag("1.2.3".into()))
        );
        let r = parse(&format!("app@{D}"), false).unwrap();
        assert_eq!(r.target, Target::Digest(D.into()));
        assert_eq!(r.to_string(), format!("app@{D}"));
        let r = parse("127.0.0.1:5001/team/app:v1", true).unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(r.to_string(), "127.0.0.1:5001/team/app:v1");
        assert_eq!(
            parse("localhost/app:x", true).unwrap().host.as_deref(),
            Some("localhost")
        );
        assert!(parse("a__b.c-d---e:_x", false).is_ok());
    }

    #[test]
    fn forms_that_do_not() {
        for (text, needle) in [
            ("app", "no tag"),
            ("app:", "tag that is not"),
            ("app:-x", "tag that is not"),
            ("App:1", "lowercase"),
            ("a//b:1", "lowercase"),
            ("a-:1", "lowercase"),
            ("a..b:1", "lowercase"),
            ("app@sha256:abc", "digest"),
            ("reg.example.com/app:1", "registry host"),
            ("localhost:5000/app:1", "registry host"),
        ] {
            let error = parse(text, false).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
        assert!(parse("reg.example.com/app:1", true).is_ok());
        assert!(!is_digest(&D.to_uppercase()));
        assert!(!is_tag(&"a".repeat(129)));
    }
}
