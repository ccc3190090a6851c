//! Travis CI's webhook notifications: a form-encoded `payload`, signed by Travis.
//!
//! Travis signs the `payload` value with RSA (PKCS #1 v1.5, SHA-1) and sends the signature,
//! base64, in `Signature`. The public key is the one the API serves at `/config`
//! (`config.notifications.webhook.public_key`). It is read on the first delivery, kept, and
//! read again when a signature fails to verify with it (Travis rotates it rarely), at most
//! once a minute, so forged deliveries cannot make baton hammer the API; after a failed read,
//! the next is tried 10 s later at the earliest.
//!
//! Travis signs every repository's notifications with that one key: a good signature says
//! Travis sent the delivery, not that it is about a repository of ours. The source's `repos`
//! decide that, read from the signed payload (the `Travis-Repo-Slug` header is not signed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::sources::Refusal;

/// The shortest time between two reads of `/config` after a signature failed to verify.
const REFRESH_SPACING: Duration = Duration::from_secs(60);
/// The shortest time between two reads of `/config` while there is no key (the last read
/// failed): deliveries in between get 503 at once.
const RETRY_SPACING: Duration = Duration::from_secs(10);
/// How long one read of `/config` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of `/config` that is read: the document is a few KiB.
const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The signing key of one Travis API, and the repositories a source takes.
pub(crate) struct TravisCheck {
    /// `<api_url>/config`.
    config_url: String,
    /// `owner/name` slugs.
    repos: Vec<String>,
    client: reqwest::Client,
    key: Mutex<KeyState>,
}

#[derive(Default)]
struct KeyState {
    key: Option<Arc<ParsedPublicKey>>,
    /// When `/config` was last read (successfully or not).
    read_at: Option<Instant>,
}

/// The fields of a notification baton reads itself.
#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    owner_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct ConfigDocument {
    config: ConfigBody,
}

#[derive(Deserialize)]
struct ConfigBody {
    notifications: NotificationsConfig,
}

#[derive(Deserialize)]
struct NotificationsConfig {
    webhook: WebhookConfig,
}

#[derive(Deserialize)]
struct WebhookConfig {
    public_key: String,
}

/// The `payload` field of a form-encoded body, decoded.
pub(crate) fn payload_field(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| value.into_owned())
}

/// The DER bytes of a PEM block (`PUBLIC KEY` or `RSA PUBLIC KEY`).
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let base64: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("-----"))
        .collect();
    STANDARD.decode(base64).ok()
}

impl TravisCheck {
    /// A check against the key of the API at `api_url` (no trailing `/`).
    pub(crate) fn new(api_url: &str, repos: &[String]) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            config_url: format!("{api_url}/config"),
            repos: repos.to_vec(),
            client,
            key: Mutex::new(KeyState::default()),
        }
    }

    /// Checks a notification and returns its payload (the JSON that is stored).
    pub(crate) async fn authenticate(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<String, Refusal> {
        let Some(payload) = payload_field(body) else {
            return Err(Refusal::Malformed(
                "the body has no `payload` field: a travis source takes Travis CI's webhook notifications, form-encoded `payload=<json>`".to_owned(),
            ));
        };
        let Some(signature) = signature else {
            return Err(Refusal::Unauthenticated(
                "missing Signature header: Travis CI signs every webhook notification".to_owned(),
            ));
        };
        let Ok(signature) = STANDARD.decode(signature) else {
            return Err(Refusal::Unauthenticated(
                "the Signature header is not base64".to_owned(),
            ));
        };
        self.verify(payload.as_bytes(), &signature).await?;
        let notification: Notification = serde_json::from_str(&payload).map_err(|e| {
            Refusal::Malformed(format!(
                "the `payload` field is not a Travis notification: {e}"
            ))
        })?;
        let slug = notification
            .repository
            .and_then(|r| Some(format!("{}/{}", r.owner_name?, r.name?)));
        match slug {
            Some(slug) if self.repos.contains(&slug) => Ok(payload),
            Some(slug) => Err(Refusal::Forbidden(format!(
                "notifications of {slug} are not taken by this source: add \"{slug}\" to its `repos`"
            ))),
            None => Err(Refusal::Malformed(
                "the notification names no repository (`repository.owner_name`, `repository.name`)"
                    .to_owned(),
            )),
        }
    }

    /// The event type of a checked payload: the build's `state`.
    pub(crate) fn event(payload: &[u8]) -> Result<String, Refusal> {
        match serde_json::from_slice::<Notification>(payload) {
            Ok(Notification {
                state: Some(state), ..
            }) if !state.is_empty() => Ok(state),
            _ => Err(Refusal::Malformed(
                "the notification has no `state` (the build's state, the event type of a travis source)".to_owned(),
            )),
        }
    }

    async fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<(), Refusal> {
        let mut state = self.key.lock().await;
        let fresh = if state.key.is_none() {
            if state.read_at.is_some_and(|at| at.elapsed() < RETRY_SPACING) {
                return Err(Refusal::Unavailable(format!(
                    "the notification cannot be checked now: Travis CI's webhook key at {} could not be read a moment ago (see the log); try again later",
                    self.config_url
                )));
            }
            state.key = Some(self.read_key(&mut state).await?);
            true
        } else {
            false
        };
        let verifies = |key: &ParsedPublicKey| key.verify_sig(payload, signature).is_ok();
        if state.key.as_deref().is_some_and(verifies) {
            return Ok(());
        }
        let may_refresh = !fresh
            && state
                .read_at
                .is_none_or(|at| at.elapsed() >= REFRESH_SPACING);
        if may_refresh {
            // The key may have been rotated: read it once more.
            let key = self.read_key(&mut state).await?;
            let ok = verifies(&key);
            state.key = Some(key);
            if ok {
                return Ok(());
            }
        }
        Err(Refusal::Unauthenticated(
            "the signature does not verify with Travis CI's webhook key".to_owned(),
        ))
    }

    /// Reads the key from `/config`; a failure is 503 (the delivery could not be checked).
    async fn read_key(&self, state: &mut KeyState) -> Result<Arc<ParsedPublicKey>, Refusal> {
        state.read_at = Some(Instant::now());
        let unavailable = |why: String| {
            tracing::warn!(url = %self.config_url, reason = %why, "could not read Travis CI's webhook key");
            Refusal::Unavailable(format!(
                "the notification cannot be checked now: Travis CI's webhook key at {} could not be read ({why})",
                self.config_url
            ))
        };
        let mut response = self
            .client
            .get(&self.config_url)
            .header("Travis-API-Version", "3")
            .send()
            .await
            .map_err(|e| unavailable(baton_core::wire::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(baton_core::wire::error_chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_CONFIG_BYTES {
                return Err(unavailable(format!(
                    "the answer is larger than {MAX_CONFIG_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let document: ConfigDocument = serde_json::from_slice(&bytes).map_err(|e| {
            unavailable(format!(
                "no `config.notifications.webhook.public_key` in the answer: {e}"
            ))
        })?;
        let der = pem_body(&document.config.notifications.webhook.public_key)
            .ok_or_else(|| unavailable("the public key is not PEM".to_owned()))?;
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, der)
            .map_err(|e| {
                unavailable(format!(
                    "the public key is not an RSA key of 2048 bits or more: {e}"
                ))
            })?;
        Ok(Arc::new(key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;
    use baton_forge_fakes::travis_signing::{config_document, form_body, sign};

    use super::*;

    const PAYLOAD: &str = r#"{"id":42,"number":"7","state":"passed","repository":{"owner_name":"pingcap","name":"tidb"}}"#;

    /// A Travis API serving the tests' key at `/config`, counting the reads; `good` false
    /// serves a different key (as after a rotation Travis has not finished).
    async fn api(reads: Arc<AtomicUsize>, answer: fn() -> (u16, String)) -> String {
        let router = Router::new().route(
            "/config",
            get(move || {
                let reads = reads.clone();
                async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = answer();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    fn served_key() -> (u16, String) {
        (200, config_document().to_string())
    }

    fn check(url: &str) -> TravisCheck {
        TravisCheck::new(url, &["pingcap/tidb".to_owned()])
    }

    #[tokio::test]
    async fn a_signed_notification_gives_its_payload_and_the_key_is_read_once() {
        let reads = Arc::new(AtomicUsize::new(0));
        let check = check(&api(reads.clone(), served_key).await);
        for _ in 0..3 {
            let payload = check
                .authenticate(Some(&sign(PAYLOAD)), form_body(PAYLOAD).as_bytes())
                .await
                .unwrap();
            assert_eq!(payload, PAYLOAD);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(TravisCheck::event(PAYLOAD.as_bytes()).unwrap(), "passed");
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused_and_refreshes_the_key_at_most_once_a_minute() {
        let reads = Arc::new(AtomicUsize::new(0));
        let check = check(&api(reads.clone(), served_key).await);
        let other = PAYLOAD.replace("passed", "failed");
        let forged = sign(&other);
        // The first read is the one that fetched the key: no second read for that failure.
        let refused = check
            .authenticate(Some(&forged), form_body(PAYLOAD).as_bytes())
            .await;
        assert!(
            matches!(refused, Err(Refusal::Unauthenticated(ref m)) if m.contains("does not verify"))
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Later failures within the minute do not read it again either.
        for _ in 0..5 {
            let refused = check
                .authenticate(Some(&forged), form_body(PAYLOAD).as_bytes())
                .await;
            assert!(matches!(refused, Err(Refusal::Unauthenticated(_))));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Once a minute has passed, a failure reads the key again.
        check.key.lock().await.read_at = Some(Instant::now() - REFRESH_SPACING);
        let refused = check
            .authenticate(Some(&forged), form_body(PAYLOAD).as_bytes())
            .await;
        assert!(matches!(refused, Err(Refusal::Unauthenticated(_))));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_rotated_key_is_read_again_when_a_good_signature_fails_with_the_old_one() {
        let reads = Arc::new(AtomicUsize::new(0));
        let check = check(&api(reads.clone(), served_key).await);
        // An old key that no longer signs: a key of another size stands for it.
        let old = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let old_der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            aws_lc_rs::signature::KeyPair::public_key(&old),
        )
        .unwrap();
        {
            let mut state = check.key.lock().await;
            state.key = Some(Arc::new(
                ParsedPublicKey::new(
                    &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                    old_der.as_ref(),
                )
                .unwrap(),
            ));
            state.read_at = Some(Instant::now() - REFRESH_SPACING);
        }
        let payload = check
            .authenticate(Some(&sign(PAYLOAD)), form_body(PAYLOAD).as_bytes())
            .await
            .unwrap();
        assert_eq!(payload, PAYLOAD);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn another_repositorys_notification_is_forbidden_even_signed() {
        let check = check(&api(Arc::default(), served_key).await);
        let theirs = PAYLOAD.replace("tidb", "other");
        let refused = check
            .authenticate(Some(&sign(&theirs)), form_body(&theirs).as_bytes())
            .await;
        assert!(
            matches!(refused, Err(Refusal::Forbidden(ref m)) if m.contains("pingcap/other") && m.contains("repos")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_signature_payload_or_state_is_explained() {
        let check = check(&api(Arc::default(), served_key).await);
        let body = form_body(PAYLOAD);
        assert!(matches!(
            check.authenticate(None, body.as_bytes()).await,
            Err(Refusal::Unauthenticated(m)) if m.contains("missing Signature")
        ));
        assert!(matches!(
            check.authenticate(Some("not base64!"), body.as_bytes()).await,
            Err(Refusal::Unauthenticated(m)) if m.contains("base64")
        ));
        assert!(matches!(
            check.authenticate(Some(&sign(PAYLOAD)), PAYLOAD.as_bytes()).await,
            Err(Refusal::Malformed(m)) if m.contains("payload=")
        ));
        assert!(TravisCheck::event(br#"{"id":1}"#).is_err());
    }

    #[tokio::test]
    async fn an_api_that_cannot_give_the_key_makes_the_delivery_unavailable_not_accepted() {
        for answer in [
            (|| (500, "oops".to_owned())) as fn() -> (u16, String),
            || (200, "<html>".to_owned()),
            || {
                (200, r#"{"config":{"notifications":{"webhook":{"public_key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}}}}"#.to_owned())
            },
        ] {
            let check = check(&api(Arc::default(), answer).await);
            let refused = check
                .authenticate(Some(&sign(PAYLOAD)), form_body(PAYLOAD).as_bytes())
                .await;
            assert!(
                matches!(refused, Err(Refusal::Unavailable(ref m)) if m.contains("/config")),
                "{refused:?}"
            );
        }
        let unreachable = check("http://127.0.0.1:9");
        assert!(matches!(
            unreachable
                .authenticate(Some(&sign(PAYLOAD)), form_body(PAYLOAD).as_bytes())
                .await,
            Err(Refusal::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_key_read_is_tried_again_after_ten_seconds_not_for_every_delivery() {
        let reads = Arc::new(AtomicUsize::new(0));
        let check = check(&api(reads.clone(), || (503, "down".to_owned())).await);
        let body = form_body(PAYLOAD);
        for _ in 0..5 {
            let refused = check
                .authenticate(Some(&sign(PAYLOAD)), body.as_bytes())
                .await;
            assert!(
                matches!(refused, Err(Refusal::Unavailable(_))),
                "{refused:?}"
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        check.key.lock().await.read_at = Some(Instant::now() - RETRY_SPACING);
        let _ = check
            .authenticate(Some(&sign(PAYLOAD)), body.as_bytes())
            .await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
