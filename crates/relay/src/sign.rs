//! The signatures a target's receiver checks: GitHub's (`X-Hub-Signature-256`) and
//! Standard Webhooks' (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use baton_config::RelaySign;
use baton_core::{SecretRef, SecretResolver};
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;

use crate::RelayError;

/// The prefix of a Standard Webhooks secret; the base64 of the key follows it.
const STANDARD_WEBHOOKS_PREFIX: &str = "whsec_";

/// The shortest key the Standard Webhooks specification allows (192 bits).
const STANDARD_WEBHOOKS_MIN_KEY: usize = 24;

/// Base64 as secrets are pasted: with or without the trailing `=`.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `X-Hub-Signature-256`, GitHub's header.
const GITHUB_SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
/// Standard Webhooks' message id header.
pub(crate) const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks' timestamp header.
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks' signature header.
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Signs a target's requests. The key is held keyed into the HMAC, never as text.
#[derive(Clone)]
pub(crate) enum Signer {
    /// No signature.
    None,
    /// GitHub's scheme: HMAC-SHA256 of the body, in lower-case hex.
    Github(Hmac<Sha256>),
    /// Standard Webhooks' scheme: HMAC-SHA256 of `id.timestamp.body`, in base64.
    StandardWebhooks(Hmac<Sha256>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "Signer::None",
            Self::Github(_) => "Signer::Github(***)",
            Self::StandardWebhooks(_) => "Signer::StandardWebhooks(***)",
        })
    }
}

impl Signer {
    /// Reads the secret of `sign`, the signing of target `target` of relay `relay`.
    pub(crate) fn new(
        relay: &str,
        target: &str,
        sign: &RelaySign,
        secrets: &dyn SecretResolver,
    ) -> Result<Self, RelayError> {
        let read = |reference: &SecretRef| {
            secrets
                .resolve(reference)
                .map_err(|source| RelayError::Secret {
                    relay: relay.to_owned(),
                    target: target.to_owned(),
                    what: "sign.secret".to_owned(),
                    source,
                })
        };
        Ok(match sign {
            RelaySign::None => Self::None,
            RelaySign::Github(reference) => {
                Self::Github(keyed(read(reference)?.expose().as_bytes()))
            }
            RelaySign::StandardWebhooks(reference) => {
                let key = standard_webhooks_key(read(reference)?.expose()).map_err(|reason| {
                    RelayError::StandardWebhooksSecret {
                        relay: relay.to_owned(),
                        target: target.to_owned(),
                        reason,
                    }
                })?;
                Self::StandardWebhooks(keyed(&key))
            }
        })
    }

    /// The headers that sign `body`, sent as message `id` at `timestamp` (Unix seconds).
    pub(crate) fn headers(
        &self,
        id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Self::None => Vec::new(),
            Self::Github(mac) => {
                let mut mac = mac.clone();
                mac.update(body);
                let hex = hex::encode(mac.finalize().into_bytes());
                vec![(GITHUB_SIGNATURE, signature_value(format!("sha256={hex}")))]
            }
            Self::StandardWebhooks(mac) => {
                let mut mac = mac.clone();
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                let encoded = STANDARD.encode(mac.finalize().into_bytes());
                let mut headers = Vec::with_capacity(3);
                // A message key is `msg_` and hex digits; an id that is not a header value
                // is left to the caller's own `webhook-id`, which drops it the same way.
                if let Ok(value) = HeaderValue::from_str(id) {
                    headers.push((WEBHOOK_ID, value));
                }
                headers.push((WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp)));
                headers.push((WEBHOOK_SIGNATURE, signature_value(format!("v1,{encoded}"))));
                headers
            }
        }
    }
}

/// An HMAC-SHA256 keyed with `key` (HMAC takes keys of any length).
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"))
}

/// A signature as a header value, kept out of debug output. Hex and base64 with a short
/// prefix are always valid header values.
fn signature_value(text: String) -> HeaderValue {
    let mut value = HeaderValue::try_from(text)
        .unwrap_or_else(|_| unreachable!("hex and base64 are header-safe"));
    value.set_sensitive(true);
    value
}

/// The key of a Standard Webhooks secret (`whsec_<base64>`), or what is wrong with it in
/// words that never show the secret.
fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .trim()
        .strip_prefix(STANDARD_WEBHOOKS_PREFIX)
        .ok_or_else(|| {
            format!(
                "it does not start with `{STANDARD_WEBHOOKS_PREFIX}` (expected `{STANDARD_WEBHOOKS_PREFIX}` and the base64 of the key)"
            )
        })?;
    let key = LENIENT_BASE64
        .decode(encoded)
        .map_err(|_| format!("what follows `{STANDARD_WEBHOOKS_PREFIX}` is not base64"))?;
    if key.len() < STANDARD_WEBHOOKS_MIN_KEY {
        return Err(format!(
            "the key is {} bytes; the specification asks for at least {STANDARD_WEBHOOKS_MIN_KEY}",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::Secret;
    use baton_core::secret::SecretError;

    /// Resolves every reference to one value.
    struct Fixed(String);

    impl SecretResolver for Fixed {
        fn resolve(&self, _: &SecretRef) -> Result<Secret, SecretError> {
            Ok(Secret::new(self.0.clone()))
        }
    }

    fn fixed(value: &str) -> Fixed {
        Fixed(value.to_owned())
    }

    fn reference() -> SecretRef {
        SecretRef::Env("RELAY_SECRET".into())
    }

    fn header<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    }

    #[test]
    fn github_signature_matches_githubs_documented_example() {
        let signer = Signer::new(
            "r",
            "t",
            &RelaySign::Github(reference()),
            &fixed("It's a Secret to Everybody"),
        )
        .unwrap();
        let headers = signer.headers("msg_1", 0, b"Hello, World!");
        assert_eq!(headers.len(), 1);
        assert_eq!(
            header(&headers, "x-hub-signature-256"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(headers[0].1.is_sensitive());
    }

    #[test]
    fn standard_webhooks_signatures_match_the_published_test_vectors() {
        for (secret, id, timestamp, body, expected) in [
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                r#"{"email":"test@example.com","username":"test_user"}"#,
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ),
        ] {
            let signer = Signer::new(
                "r",
                "t",
                &RelaySign::StandardWebhooks(reference()),
                &fixed(secret),
            )
            .unwrap();
            let headers = signer.headers(id, timestamp, body.as_bytes());
            assert_eq!(header(&headers, "webhook-id"), id);
            assert_eq!(header(&headers, "webhook-timestamp"), timestamp.to_string());
            assert_eq!(header(&headers, "webhook-signature"), expected);
        }
    }

    #[test]
    fn a_standard_webhooks_key_without_padding_is_the_same_key() {
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 25]));
        assert!(padded.ends_with('='));
        assert_eq!(
            standard_webhooks_key(&padded).unwrap(),
            standard_webhooks_key(padded.trim_end_matches('=')).unwrap()
        );
        assert_eq!(standard_webhooks_key(&padded).unwrap(), vec![7u8; 25]);
    }

    #[test]
    fn malformed_standard_webhooks_secrets_are_refused_without_showing_them() {
        let short = format!("whsec_{}", STANDARD.encode(b"sixteen byte key"));
        for (secret, reason) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "does not start with `whsec_`",
            ),
            ("whsec_not base64!", "is not base64"),
            (short.as_str(), "the key is 16 bytes"),
        ] {
            let err = Signer::new(
                "mirror",
                "ci",
                &RelaySign::StandardWebhooks(reference()),
                &fixed(secret),
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, RelayError::StandardWebhooksSecret { .. }));
            assert!(text.contains("relays.mirror.to `ci`"), "{text}");
            assert!(text.contains(reason), "{text}");
            let body = secret.trim_start_matches("whsec_");
            assert!(!text.contains(body), "{text} shows the secret");
        }
    }

    #[test]
    fn an_unreadable_secret_names_the_key() {
        struct Missing;
        impl SecretResolver for Missing {
            fn resolve(&self, _: &SecretRef) -> Result<Secret, SecretError> {
                Err(SecretError::MissingEnv("RELAY_SECRET".into()))
            }
        }
        let err =
            Signer::new("mirror", "ci", &RelaySign::Github(reference()), &Missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "relays.mirror.to `ci`: sign.secret cannot be read"
        );
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("RELAY_SECRET")
        );
    }

    #[test]
    fn unsigned_targets_get_no_headers_and_debug_shows_no_key() {
        let none = Signer::new("r", "t", &RelaySign::None, &fixed("unused")).unwrap();
        assert!(none.headers("msg_1", 1, b"{}").is_empty());
        let github =
            Signer::new("r", "t", &RelaySign::Github(reference()), &fixed("hunter2")).unwrap();
        assert_eq!(format!("{github:?}"), "Signer::Github(***)");
    }
}
