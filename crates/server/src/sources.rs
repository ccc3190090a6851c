//! Webhook sources with their secrets resolved, and how each proves a delivery is genuine.

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use baton_config::{
    DeliveryId, EventSelector, GenericAuth, HmacAlgorithm, RegistryAuth, SourceConfig,
};
use baton_core::secret::SecretError;
use baton_core::{Expr, SecretResolver};
use hmac::{Hmac, Mac};
use jaq_json::Val;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::travis::TravisCheck;

/// How a source's deliveries are checked.
enum Check {
    /// `X-Hub-Signature-256: sha256=<hex>` with any of these secrets.
    Github(Vec<Vec<u8>>),
    /// `X-Gitlab-Token` equal to any of these.
    Gitlab(Vec<Vec<u8>>),
    /// A configurable HMAC header.
    Hmac {
        secret: Vec<u8>,
        header: String,
        prefix: String,
        algorithm: HmacAlgorithm,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Vec<u8>),
    /// `Authorization: Basic <base64>` of these `user:password` bytes.
    Basic(Vec<u8>),
    /// Travis CI's RSA signature over the form's `payload`, and the accepted repositories.
    Travis(TravisCheck),
}

/// One `[sources.<name>]`, ready to check deliveries.
pub struct Source {
    /// The source name (`/hooks/<name>`).
    pub name: String,
    /// `github`, `gitlab`, `generic`, `travis` or `registry`.
    pub kind: &'static str,
    check: Check,
    event: Option<EventSelector>,
    delivery_id: DeliveryId,
    /// `baton_deliveries_total{source, result="accepted"}`, registered once.
    pub accepted: metrics::Counter,
    /// `baton_deliveries_total{source, result="duplicate"}`, registered once.
    pub duplicate: metrics::Counter,
}

/// Why a delivery was refused before it was stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or wrong signature or token (401).
    Unauthenticated(String),
    /// A required header is missing or the body is not what it must be (400).
    Malformed(String),
    /// Genuine, but about something this source does not take (403).
    Forbidden(String),
    /// The delivery cannot be checked now (503): the key to check it could not be read.
    Unavailable(String),
    /// The body is not declared as a type the source takes (415).
    UnsupportedType(String),
}

/// What a genuine delivery is.
#[derive(Debug)]
pub struct Identified {
    /// The event type.
    pub event: String,
    /// The sender's delivery id, or the body's hash.
    pub delivery_id: String,
    /// GitHub's `ping`: answered, not stored.
    pub ping: bool,
}

/// One event to store: a request's, or one of a registry envelope's.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event type `on:` triggers match.
    pub event: String,
    /// What tells a redelivery from a new event.
    pub delivery_id: String,
    /// The stored body, byte for byte as it arrived.
    pub body: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The SHA-256 of a body, in hex: the delivery id of a body that names none.
pub(crate) fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn hmac_matches(algorithm: HmacAlgorithm, secret: &[u8], body: &[u8], signature: &[u8]) -> bool {
    // `verify_slice` compares in constant time.
    match algorithm {
        HmacAlgorithm::Sha256 => Hmac::<Sha256>::new_from_slice(secret).is_ok_and(|mut m| {
            m.update(body);
            m.verify_slice(signature).is_ok()
        }),
        HmacAlgorithm::Sha512 => Hmac::<Sha512>::new_from_slice(secret).is_ok_and(|mut m| {
            m.update(body);
            m.verify_slice(signature).is_ok()
        }),
    }
}

/// The credentials of an `Authorization: <scheme> <credentials>` header whose scheme is
/// `scheme` (compared without case, as HTTP's schemes are).
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let (given, credentials) = header(headers, "authorization")?.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then_some(credentials.trim())
}

fn token_matches(expected: &[Vec<u8>], given: &[u8]) -> bool {
    // Every candidate is compared, so the time does not tell which one matched.
    expected.iter().fold(false, |found, t| {
        found | bool::from(t.as_slice().ct_eq(given))
    })
}

/// Headers that carry secrets or signatures: never stored, never shown.
pub const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "signature",
    "x-gitlab-token",
    "x-hub-signature",
    "x-hub-signature-256",
    "cookie",
];

impl Source {
    /// Resolves the secrets of `config`.
    pub fn new(
        name: &str,
        config: &SourceConfig,
        secrets: &dyn SecretResolver,
    ) -> Result<Self, SecretError> {
        let read =
            |r: &baton_core::SecretRef| secrets.resolve(r).map(|s| s.expose().as_bytes().to_vec());
        let (check, event, delivery_id) = match config {
            SourceConfig::Github(g) => (
                Check::Github(g.secrets.iter().map(read).collect::<Result<_, _>>()?),
                None,
                DeliveryId::BodyHash,
            ),
            SourceConfig::Gitlab(g) => (
                Check::Gitlab(g.tokens.iter().map(read).collect::<Result<_, _>>()?),
                None,
                DeliveryId::BodyHash,
            ),
            SourceConfig::Generic(g) => {
                let check = match &g.auth {
                    GenericAuth::Hmac(h) => Check::Hmac {
                        secret: read(&h.secret)?,
                        header: h.header.to_ascii_lowercase(),
                        prefix: h.prefix.clone(),
                        algorithm: h.algorithm,
                    },
                    GenericAuth::Bearer(b) => Check::Bearer(read(&b.token)?),
                };
                (check, g.event.clone(), g.delivery_id.clone())
            }
            SourceConfig::Travis(t) => (
                Check::Travis(TravisCheck::new(&t.api_url, &t.repos)),
                None,
                DeliveryId::BodyHash,
            ),
            // The event type and delivery id come from each event (see `crate::registry`).
            SourceConfig::Registry(r) => {
                let check = match &r.auth {
                    RegistryAuth::Bearer(token) => Check::Bearer(read(token)?),
                    RegistryAuth::Basic { username, password } => {
                        let mut pair = format!("{username}:").into_bytes();
                        pair.extend(read(password)?);
                        Check::Basic(pair)
                    }
                };
                (check, None, DeliveryId::BodyHash)
            }
        };
        let counter = |result: &'static str| metrics::counter!("baton_deliveries_total", "source" => name.to_owned(), "result" => result);
        Ok(Self {
            name: name.to_owned(),
            kind: config.kind(),
            check,
            event,
            delivery_id,
            accepted: counter("accepted"),
            duplicate: counter("duplicate"),
        })
    }

    /// The generic HMAC header, which is not stored either.
    pub fn signature_header(&self) -> Option<&str> {
        match &self.check {
            Check::Hmac { header, .. } => Some(header),
            _ => None,
        }
    }

    /// Checks that the delivery is genuine, before the body is parsed, and returns the body
    /// to store: the body as received, or for a travis source the `payload` form field.
    pub async fn authenticate(&self, headers: &HeaderMap, body: Bytes) -> Result<Bytes, Refusal> {
        if let Check::Travis(travis) = &self.check {
            let payload = travis
                .authenticate(header(headers, "signature"), &body)
                .await?;
            return Ok(Bytes::from(payload));
        }
        self.verify_signature(headers, &body)?;
        if self.takes_envelopes() {
            crate::registry::check_content_type(headers)?;
        }
        Ok(body)
    }

    /// The check of every kind but `travis`, which needs nothing but the request. A travis
    /// source's deliveries are refused here: their key comes from Travis's API, so only
    /// [`Source::authenticate`] checks them.
    pub fn verify_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let refuse = |m: &str| Err(Refusal::Unauthenticated(m.to_owned()));
        match &self.check {
            Check::Github(secrets) => {
                let Some(sig) = header(headers, "x-hub-signature-256") else {
                    return refuse(
                        "missing X-Hub-Signature-256: set a secret on the GitHub webhook",
                    );
                };
                let Some(hex_sig) = sig.strip_prefix("sha256=") else {
                    return refuse("X-Hub-Signature-256 must start with `sha256=`");
                };
                let Ok(raw) = hex::decode(hex_sig) else {
                    return refuse("X-Hub-Signature-256 is not hex");
                };
                let mut ok = false;
                for secret in secrets {
                    ok |= hmac_matches(HmacAlgorithm::Sha256, secret, body, &raw);
                }
                if ok {
                    Ok(())
                } else {
                    refuse("the signature does not match any configured secret")
                }
            }
            Check::Gitlab(tokens) => match header(headers, "x-gitlab-token") {
                None => refuse("missing X-Gitlab-Token: set a secret token on the GitLab webhook"),
                Some(given) if token_matches(tokens, given.as_bytes()) => Ok(()),
                Some(_) => refuse("X-Gitlab-Token does not match any configured token"),
            },
            Check::Hmac {
                secret,
                header: name,
                prefix,
                algorithm,
            } => {
                let Some(sig) = header(headers, name) else {
                    return refuse(&format!("missing signature header {name}"));
                };
                let Some(hex_sig) = sig.strip_prefix(prefix.as_str()) else {
                    return refuse(&format!("the {name} header must start with `{prefix}`"));
                };
                match hex::decode(hex_sig) {
                    Ok(raw) if hmac_matches(*algorithm, secret, body, &raw) => Ok(()),
                    Ok(_) => refuse("the signature does not match"),
                    Err(_) => refuse(&format!("the {name} header is not hex after `{prefix}`")),
                }
            }
            Check::Bearer(token) => match credentials(headers, "Bearer") {
                Some(given) if token_matches(std::slice::from_ref(token), given.as_bytes()) => {
                    Ok(())
                }
                Some(_) => refuse("the bearer token does not match"),
                None => refuse("missing `Authorization: Bearer <token>`"),
            },
            Check::Basic(pair) => match credentials(headers, "Basic").map(|c| STANDARD.decode(c)) {
                Some(Ok(given)) if token_matches(std::slice::from_ref(pair), &given) => Ok(()),
                Some(Ok(_)) => refuse("the Basic user name or password does not match"),
                Some(Err(_)) => refuse("the Basic credentials are not base64"),
                None => refuse("missing `Authorization: Basic <base64 of user:password>`"),
            },
            // Checked (asynchronously) in `authenticate`, never here.
            Check::Travis(_) => refuse("a travis notification is checked with Travis CI's key"),
        }
    }

    /// True when a delivery is an envelope of events, each stored on its own (a `registry`
    /// source), rather than one event for [`Source::identify`].
    pub fn takes_envelopes(&self) -> bool {
        self.kind == "registry"
    }

    /// True when [`Source::identify`] evaluates a jq expression (a generic source's
    /// `event = { expr }`), so that it must run on an evaluation thread.
    pub fn evaluates(&self) -> bool {
        matches!(self.event, Some(EventSelector::Expr(_)))
    }

    /// The event type and delivery id of a genuine delivery whose body parsed as `json`
    /// (with [`baton_core::expr::parse_val`]).
    pub fn identify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        json: Val,
    ) -> Result<Identified, Refusal> {
        let missing = |m: &str| Err(Refusal::Malformed(m.to_owned()));
        match &self.check {
            Check::Github(_) => {
                let Some(event) = header(headers, "x-github-event") else {
                    return missing("missing X-GitHub-Event header");
                };
                let delivery_id = header(headers, "x-github-delivery")
                    .map_or_else(|| body_hash(body), str::to_owned);
                Ok(Identified {
                    ping: event == "ping",
                    event: event.to_owned(),
                    delivery_id,
                })
            }
            Check::Gitlab(_) => {
                let Some(event) = header(headers, "x-gitlab-event") else {
                    return missing("missing X-Gitlab-Event header");
                };
                let delivery_id = [
                    "x-gitlab-event-uuid",
                    "x-gitlab-webhook-uuid",
                    "idempotency-key",
                ]
                .iter()
                .find_map(|h| header(headers, h))
                .map_or_else(|| body_hash(body), str::to_owned);
                Ok(Identified {
                    ping: false,
                    event: event.to_owned(),
                    delivery_id,
                })
            }
            Check::Travis(_) => Ok(Identified {
                ping: false,
                event: TravisCheck::event(body)?,
                delivery_id: body_hash(body),
            }),
            Check::Hmac { .. } | Check::Bearer(_) | Check::Basic(_) => {
                let event = match &self.event {
                    None => String::new(),
                    Some(EventSelector::Header(name)) => match header(headers, name) {
                        Some(v) => v.to_owned(),
                        None => return missing(&format!("missing event header {name}")),
                    },
                    Some(EventSelector::Expr(expr)) => event_from_expr(expr, json)?,
                };
                let delivery_id = match &self.delivery_id {
                    DeliveryId::BodyHash => body_hash(body),
                    DeliveryId::Header(name) => match header(headers, name) {
                        Some(v) if !v.is_empty() => v.to_owned(),
                        _ => return missing(&format!("missing delivery id header {name}")),
                    },
                };
                Ok(Identified {
                    ping: false,
                    event,
                    delivery_id,
                })
            }
        }
    }
}

fn event_from_expr(expr: &Expr, json: Val) -> Result<String, Refusal> {
    let first = expr
        .eval_val(json)
        .map(|outputs| outputs.into_iter().next().unwrap_or_default());
    match first {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(serde_json::Value::Null) => Err(Refusal::Malformed(format!(
            "the event expression `{}` gave null",
            expr.source()
        ))),
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err(Refusal::Malformed(e.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use baton_core::secret::SecretError;
    use baton_core::{Secret, SecretRef};

    /// Resolves every reference to its own name: a test's secrets are the names it gives.
    pub(crate) struct Fixed;
    impl SecretResolver for Fixed {
        fn resolve(&self, r: &SecretRef) -> Result<Secret, SecretError> {
            Ok(Secret::new(match r {
                SecretRef::Env(n) | SecretRef::File(n) => n.clone(),
            }))
        }
    }

    fn github(secrets: &[&str]) -> Source {
        let config = SourceConfig::Github(baton_config::GithubSource {
            secrets: secrets
                .iter()
                .map(|s| SecretRef::Env((*s).to_owned()))
                .collect(),
            ..Default::default()
        });
        Source::new("gh", &config, &Fixed).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn githubs_documented_test_vector_verifies() {
        // From GitHub's documentation of webhook signatures.
        let source = github(&["It's a Secret to Everybody"]);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            source.verify_signature(&headers(&[("x-hub-signature-256", sig)]), b"Hello, World!"),
            Ok(())
        );
        assert!(
            source
                .verify_signature(&headers(&[("x-hub-signature-256", sig)]), b"Hello, World?")
                .is_err()
        );
        assert!(
            source
                .verify_signature(&headers(&[]), b"Hello, World!")
                .is_err()
        );
        // Rotation: any configured secret is accepted.
        let rotated = github(&["new secret", "It's a Secret to Everybody"]);
        assert_eq!(
            rotated.verify_signature(&headers(&[("x-hub-signature-256", sig)]), b"Hello, World!"),
            Ok(())
        );
    }

    #[test]
    fn tokens_compare_whole_values() {
        assert!(token_matches(&[b"abc".to_vec()], b"abc"));
        assert!(!token_matches(&[b"abc".to_vec()], b"ab"));
        assert!(!token_matches(&[b"abc".to_vec()], b"abcd"));
        assert!(token_matches(&[b"x".to_vec(), b"abc".to_vec()], b"abc"));
    }
}
