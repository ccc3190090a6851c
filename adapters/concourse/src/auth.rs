//! The bearer token on every call: a configured one, or one from the password grant that
//! fly itself uses, cached and renewed before it expires, one renewal at a time.
//!
//! The grant (`fly/commands/login.go`): `POST <url>/sky/issuer/token` (Concourse 6.1 and
//! later; `<url>/sky/token` before) with the form `grant_type=password`, `username`,
//! `password` and `scope=openid profile email federated:id groups`, and fly's public
//! client `fly:Zmx5` as HTTP Basic. The answer is OAuth2's token JSON; `expires_in` says
//! when to renew. The path that answered is remembered; a 404 on it tries the other.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use baton_core::wire::error_chain;
use baton_core::{AdapterError, HumanDuration, Secret};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::client::{Client, excerpt, read, retry_after};

/// fly's public OAuth client, sent as HTTP Basic (`client_id:client_secret`).
const FLY_CLIENT: &str = "fly:Zmx5";

/// The scopes fly asks for.
const SCOPE: &str = "openid profile email federated:id groups";

/// The token endpoint of Concourse 6.1 and later, and the one before.
const TOKEN_PATHS: [&str; 2] = ["sky/issuer/token", "sky/token"];

/// The largest token answer read.
const TOKEN_ANSWER_BYTES: usize = 65_536;

/// A token baton got, and when to get the next.
#[derive(Debug)]
struct Issued {
    token: Secret,
    /// `None` when the server gave no `expires_in`: renewed only when refused.
    renew_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    issued: Option<Issued>,
    /// Counts tokens got, so that a refusal of an old one does not renew a fresh one.
    generation: u64,
}

/// How the client proves who it is.
#[derive(Debug)]
pub(crate) enum Auth {
    /// The password grant; the lock makes one renewal serve every waiter.
    Password {
        username: String,
        password: Secret,
        cache: tokio::sync::Mutex<Cache>,
        /// The index in [`TOKEN_PATHS`] that last answered.
        path: AtomicU8,
    },
    /// A bearer token obtained elsewhere.
    Bearer(Secret),
}

/// The token to send, and which one it is.
#[derive(Debug, Clone)]
pub(crate) struct Bearer {
    pub(crate) token: Secret,
    pub(crate) generation: u64,
}

impl Auth {
    /// The password grant for `username`.
    pub(crate) fn password(username: &str, password: Secret) -> Self {
        Self::Password {
            username: username.to_owned(),
            password,
            cache: tokio::sync::Mutex::default(),
            path: AtomicU8::new(0),
        }
    }

    /// A configured bearer token.
    pub(crate) fn bearer(token: Secret) -> Self {
        Self::Bearer(token)
    }

    /// Whether a refused token can be replaced by baton.
    pub(crate) fn renewable(&self) -> bool {
        matches!(self, Self::Password { .. })
    }

    /// The user, when baton knows it without asking.
    pub(crate) fn username(&self) -> Option<&str> {
        match self {
            Self::Password { username, .. } => Some(username),
            Self::Bearer(_) => None,
        }
    }

    /// Who the requests are from, for messages.
    pub(crate) fn who(&self) -> String {
        match self {
            Self::Password { username, .. } => format!("user `{username}`"),
            Self::Bearer(_) => "the user of `token`".to_owned(),
        }
    }

    /// The error for a 401 that renewing cannot mend.
    pub(crate) fn refused(&self, instance: &str, what: &str) -> AdapterError {
        AdapterError::Auth(match self {
            Self::Password { username, .. } => format!(
                "Concourse `{instance}` refused the token it had just given user `{username}` (401) when baton tried to {what}: check that the user still exists and may log in"
            ),
            Self::Bearer(_) => format!(
                "Concourse `{instance}` refused `token` (401 Unauthorized) when baton tried to {what}: it expired or was revoked, and baton cannot renew a token it was given; log in again (`fly login`), put the new token in the secret, or give `username` and `password` instead"
            ),
        })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OauthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Client {
    /// The token to send now: the configured one, or the cached one while it is fresh,
    /// else a new one.
    pub(crate) async fn bearer(&self) -> Result<Bearer, AdapterError> {
        let Auth::Password { cache, .. } = &self.auth else {
            return Ok(self.configured());
        };
        let mut cache = cache.lock().await;
        if let Some(issued) = &cache.issued
            && issued.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(Bearer {
                token: issued.token.clone(),
                generation: cache.generation,
            });
        }
        self.renew_locked(&mut cache).await
    }

    /// A new token after token `refused` was refused; when another call renewed it
    /// meanwhile, that one.
    pub(crate) async fn renew(&self, refused: u64) -> Result<Bearer, AdapterError> {
        let Auth::Password { cache, .. } = &self.auth else {
            return Ok(self.configured());
        };
        let mut cache = cache.lock().await;
        if cache.generation != refused
            && let Some(issued) = &cache.issued
        {
            return Ok(Bearer {
                token: issued.token.clone(),
                generation: cache.generation,
            });
        }
        self.renew_locked(&mut cache).await
    }

    fn configured(&self) -> Bearer {
        match &self.auth {
            Auth::Bearer(token) => Bearer {
                token: token.clone(),
                generation: 0,
            },
            Auth::Password { .. } => Bearer {
                token: Secret::new(""),
                generation: 0,
            },
        }
    }

    async fn renew_locked(&self, cache: &mut Cache) -> Result<Bearer, AdapterError> {
        let issued = self.grant().await?;
        let token = issued.token.clone();
        cache.issued = Some(issued);
        cache.generation += 1;
        Ok(Bearer {
            token,
            generation: cache.generation,
        })
    }

    /// The password grant, on the path that answered last, else the other.
    async fn grant(&self) -> Result<Issued, AdapterError> {
        let Auth::Password {
            username,
            password,
            path,
            ..
        } = &self.auth
        else {
            return Err(AdapterError::Invalid(
                "a configured token is not renewed".into(),
            ));
        };
        let first = usize::from(path.load(Ordering::Relaxed)).min(1);
        for index in [first, 1 - first] {
            match self
                .grant_at(TOKEN_PATHS[index], username, password)
                .await?
            {
                Some(issued) => {
                    path.store(index as u8, Ordering::Relaxed);
                    tracing::debug!(instance = %self.instance, path = TOKEN_PATHS[index], "got a Concourse token");
                    return Ok(issued);
                }
                None => continue,
            }
        }
        Err(AdapterError::NotFound(format!(
            "Concourse `{}` has no token endpoint at {} (neither `/sky/issuer/token`, Concourse 6.1 and later, nor `/sky/token`, 4.x to 6.0, answered): check that `url` is Concourse's web URL",
            self.instance,
            self.origin()
        )))
    }

    /// One password grant at `path`: the token, `None` on a 404 (no such endpoint), or
    /// an error that says what to fix. 429, 5xx and refused connections are retried.
    async fn grant_at(
        &self,
        path: &str,
        username: &str,
        password: &Secret,
    ) -> Result<Option<Issued>, AdapterError> {
        let what = "log in with the password grant";
        let url = self.web(&path.split('/').collect::<Vec<_>>());
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("username", username)
            .append_pair("password", password.expose())
            .append_pair("scope", SCOPE)
            .finish();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(FLY_CLIENT)
        );
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http()
                .post(url.clone())
                .header(reqwest::header::AUTHORIZATION, &basic)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body.clone())
                .send()
                .await;
            let (asked, failure) = match sent {
                Ok(response) => {
                    let (answer, headers) = read(response, TOKEN_ANSWER_BYTES)
                        .await
                        .map_err(|e| self.token_transport(&e))?;
                    let status = answer.status;
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return self.token_answer(answer, username);
                    }
                    let failure = AdapterError::Transient(format!(
                        "Concourse `{}` answered {status} when baton tried to {what}",
                        self.instance
                    ));
                    (retry_after(&headers), failure)
                }
                Err(e) if e.is_connect() => (None, self.token_transport(&e)),
                Err(e) => return Err(self.token_transport(&e)),
            };
            self.back_off(attempt, &mut waited, asked, failure).await?;
        }
    }

    /// What a token endpoint's answer (not a 429 or 5xx) means.
    fn token_answer(
        &self,
        answer: crate::client::Answer,
        username: &str,
    ) -> Result<Option<Issued>, AdapterError> {
        let what = "log in with the password grant";
        let status = answer.status;
        match status {
            StatusCode::OK => {
                let token: TokenAnswer = self.parse(&answer, what)?;
                let renew_at = token.expires_in.map(|secs| {
                    let life = Duration::from_secs(secs);
                    // Renewed well before it lapses: a quarter of its life ahead, at
                    // most a minute.
                    Instant::now() + life - (life / 4).min(Duration::from_secs(60))
                });
                Ok(Some(Issued {
                    token: Secret::new(token.access_token),
                    renew_at,
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN => {
                let said: Option<OauthError> = serde_json::from_slice(&answer.body).ok();
                let words = said
                    .map(|e| format!("{}: {}", e.error, e.error_description))
                    .unwrap_or_else(|| answer_text(&answer.body));
                Err(AdapterError::Auth(format!(
                    "Concourse `{}` refused the password grant for user `{username}` ({status}, {words}): check `username` and `password`; the grant works only for local and LDAP users, so a user of a GitHub or OIDC connector needs `token` instead",
                    self.instance
                )))
            }
            s => Err(AdapterError::Protocol(format!(
                "Concourse `{}` answered {s} when baton tried to {what}{}",
                self.instance,
                excerpt(&answer_text(&answer.body))
            ))),
        }
    }

    fn token_transport(&self, e: &reqwest::Error) -> AdapterError {
        AdapterError::Transient(if e.is_timeout() {
            format!(
                "Concourse `{}` did not answer within {} (request_timeout) when baton tried to log in",
                self.instance,
                HumanDuration(self.request_timeout)
            )
        } else {
            format!(
                "cannot reach Concourse `{}` at {} to log in: {}",
                self.instance,
                self.origin(),
                error_chain(e)
            )
        })
    }
}

fn answer_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}
