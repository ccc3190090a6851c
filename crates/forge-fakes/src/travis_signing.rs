//! How Travis CI signs its webhook notifications, with a key of the tests' own.
//!
//! Travis posts `payload=<json>` form-encoded, with a `Signature` header: base64 of an
//! RSA PKCS #1 v1.5 signature with SHA-1 over the `payload` value. Receivers verify it with
//! the public key the API serves at `/config` (`config.notifications.webhook.public_key`).
//! The fake Travis serves [`PUBLIC_KEY_PEM`] there and signs with the matching private key,
//! a 2048-bit key made for these tests and used nowhere else.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha1::{Digest, Sha1};

/// The private half: test-only, it signs nothing outside these models.
const PRIVATE_KEY_PEM: &str = include_str!("travis_test_key.pem");

static PRIVATE_KEY: LazyLock<RsaPrivateKey> = LazyLock::new(|| {
    RsaPrivateKey::from_pkcs8_pem(PRIVATE_KEY_PEM).expect("the test key is a PKCS #8 RSA key")
});

/// The public key as Travis's `/config` serves it: a PEM `PUBLIC KEY` block.
pub static PUBLIC_KEY_PEM: LazyLock<String> = LazyLock::new(|| {
    PRIVATE_KEY
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("a public key encodes")
});

/// The `Signature` header for a notification whose `payload` field is `payload`.
pub fn sign(payload: &str) -> String {
    let digest = Sha1::digest(payload.as_bytes());
    let signature = PRIVATE_KEY
        .sign(Pkcs1v15Sign::new::<Sha1>(), &digest)
        .expect("signing with a valid key succeeds");
    STANDARD.encode(signature)
}

/// The form body Travis posts: `payload=` and the JSON, percent-encoded.
pub fn form_body(payload: &str) -> String {
    let mut body = String::with_capacity(payload.len() * 2 + 8);
    body.push_str("payload=");
    for byte in payload.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                body.push(byte as char);
            }
            b' ' => body.push('+'),
            _ => body.push_str(&format!("%{byte:02X}")),
        }
    }
    body
}

/// `/config` as the Travis API answers it, with the webhook key where receivers read it.
pub fn config_document() -> serde_json::Value {
    serde_json::json!({
        "config": {
            "host": "travis-ci.com",
            "notifications": { "webhook": { "public_key": PUBLIC_KEY_PEM.as_str() } },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::DecodePublicKey;

    #[test]
    fn a_signature_verifies_with_the_served_key_and_not_for_other_text() {
        let key = rsa::RsaPublicKey::from_public_key_pem(&PUBLIC_KEY_PEM).unwrap();
        let signature = STANDARD.decode(sign(r#"{"id":1}"#)).unwrap();
        let verify = |text: &str| {
            key.verify(
                Pkcs1v15Sign::new::<Sha1>(),
                &Sha1::digest(text.as_bytes()),
                &signature,
            )
        };
        assert!(verify(r#"{"id":1}"#).is_ok());
        assert!(verify(r#"{"id":2}"#).is_err());
    }

    #[test]
    fn the_form_body_percent_encodes_the_payload() {
        assert_eq!(
            form_body(r#"{"a":"b c&d"}"#),
            "payload=%7B%22a%22%3A%22b+c%26d%22%7D"
        );
    }
}
