//! HTTP to one registry's distribution API (`/v2/`): Basic auth or the bearer token flow
//! on 401, tokens cached by (service, scope set), and the calls a promote and an inspect
//! make.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_core::wire::{error_chain, excerpt};
use baton_core::{AdapterError, Secret};
use futures::TryStreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest, Sha256};

use crate::manifest::{ACCEPT_MANIFESTS, Manifest};

/// The largest manifest baton reads; distribution refuses larger ones (4 MiB).
pub(crate) const MANIFEST_LIMIT: usize = 4 << 20;
/// How long before its stated expiry a token is no longer used, so that it never expires
/// in flight.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);
/// A token's life when the token server does not say (the token spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

/// The scopes a call needs, sorted, as the token server's `scope` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scopes(Vec<String>);

impl Scopes {
    /// Pulling from `repository`.
    pub(crate) fn pull(repository: &str) -> Self {
        Self(vec![format!("repository:{repository}:pull")])
    }

    /// Pushing to `repository`, and pulling from `from` to mount its blobs.
    pub(crate) fn push(repository: &str, from: Option<&str>) -> Self {
        let mut scopes = vec![format!("repository:{repository}:pull,push")];
        scopes.extend(
            from.filter(|f| *f != repository)
                .map(|f| format!("repository:{f}:pull")),
        );
        scopes.sort();
        Self(scopes)
    }
}

/// Where a registry's bearer challenge sends baton for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: String,
}

#[derive(Debug, Default)]
struct AuthState {
    /// The registry asked for Basic credentials: send them with every request.
    basic: bool,
    /// The registry's bearer challenge, once one came.
    challenge: Option<Challenge>,
    /// Tokens by (service, scope set), with when they stop being used.
    tokens: HashMap<(String, Scopes), (String, Instant)>,
}

/// What a mount answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mount {
    /// 201: the blob is in the destination repository.
    Mounted,
    /// 202: no mount; an upload session was opened at this location instead.
    Session(Url),
}

/// A client of one registry.
#[derive(Debug)]
pub(crate) struct Registry {
    base: Url,
    login: Option<(String, Secret)>,
    http: reqwest::Client,
    request_timeout: Duration,
    auth: Mutex<AuthState>,
}

impl Registry {
    /// A client of the registry at `base` (its root), logging in as `login` when given.
    pub(crate) fn new(
        base: Url,
        login: Option<(String, Secret)>,
        request_timeout: Duration,
    ) -> Result<Self, AdapterError> {
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            // A blob stream has no overall bound but the stage's; a stalled one ends here.
            .read_timeout(request_timeout)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Invalid(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            base,
            login,
            http,
            request_timeout,
            auth: Mutex::default(),
        })
    }

    /// The registry's root, as configured.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// `<base>/v2/<path>`.
    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v2/{path}"));
        url
    }

    fn who(&self) -> String {
        match &self.login {
            Some((user, _)) => format!("registry {} as user `{user}`", self.base),
            None => format!("registry {} (no credentials configured)", self.base),
        }
    }

    /// Sends the request `make` builds, with the credentials `scopes` need; on a 401 it
    /// follows the challenge (Basic, or a token for the bearer flow) and sends it once more.
    /// `make` is called again for that second send.
    async fn send(
        &self,
        scopes: &Scopes,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, AdapterError> {
        let first = self.authorize(make(&self.http), scopes, false).await?;
        let response = self.execute(first).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let header = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let sent_basic = self.auth.lock().expect("auth state").basic;
        let body = excerpt(&response.bytes().await.unwrap_or_default());
        if header
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("basic")
        {
            if self.login.is_none() {
                return Err(AdapterError::Auth(format!(
                    "{} asks for Basic credentials: set `username` and `password`",
                    self.who()
                )));
            }
            if sent_basic {
                return Err(self.refused(&body));
            }
            self.auth.lock().expect("auth state").basic = true;
        } else if let Some(challenge) = parse_bearer(&header) {
            // A token the registry no longer takes (revoked, or the registry restarted
            // with another key) is replaced once by a fresh one before baton gives up.
            self.auth.lock().expect("auth state").challenge = Some(challenge);
        } else {
            return Err(AdapterError::Auth(format!(
                "{} answered 401 with a challenge baton cannot follow (`{header}`): {body}",
                self.who()
            )));
        }
        let again = self.authorize(make(&self.http), scopes, true).await?;
        let response = self.execute(again).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let body = excerpt(&response.bytes().await.unwrap_or_default());
            return Err(self.refused(&body));
        }
        Ok(response)
    }

    fn refused(&self, body: &str) -> AdapterError {
        AdapterError::Auth(format!(
            "{} refused the credentials (401): {body}",
            self.who()
        ))
    }

    async fn execute(&self, request: RequestBuilder) -> Result<Response, AdapterError> {
        request.send().await.map_err(|e| {
            AdapterError::Transient(format!(
                "registry {} did not answer: {}",
                self.base,
                error_chain(&e)
            ))
        })
    }

    /// Adds what the registry asked for before: Basic credentials, or a token for `scopes`
    /// (asked of the token server when none is cached, or when `fresh`).
    async fn authorize(
        &self,
        request: RequestBuilder,
        scopes: &Scopes,
        fresh: bool,
    ) -> Result<RequestBuilder, AdapterError> {
        let (basic, challenge, cached) = {
            let mut state = self.auth.lock().expect("auth state");
            let challenge = state.challenge.clone();
            let now = Instant::now();
            state.tokens.retain(|_, (_, until)| *until > now);
            let cached = challenge.as_ref().and_then(|c| {
                state
                    .tokens
                    .get(&(c.service.clone(), scopes.clone()))
                    .map(|(token, _)| token.clone())
            });
            (state.basic, challenge, cached)
        };
        if basic {
            return Ok(match &self.login {
                Some((user, password)) => request.basic_auth(user, Some(password.expose())),
                None => request,
            });
        }
        let Some(challenge) = challenge else {
            return Ok(request);
        };
        let token = match cached {
            Some(token) if !fresh => token,
            _ => self.token(&challenge, scopes).await?,
        };
        Ok(request.bearer_auth(token))
    }

    /// Asks the token server for a token for `scopes` and caches it.
    async fn token(&self, challenge: &Challenge, scopes: &Scopes) -> Result<String, AdapterError> {
        let mut url = Url::parse(&challenge.realm).map_err(|e| {
            AdapterError::Protocol(format!(
                "{} sent a token realm that is not a URL (`{}`): {e}",
                self.who(),
                challenge.realm
            ))
        })?;
        {
            let mut query = url.query_pairs_mut();
            if !challenge.service.is_empty() {
                query.append_pair("service", &challenge.service);
            }
            for scope in &scopes.0 {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.http.get(url).timeout(self.request_timeout);
        if let Some((user, password)) = &self.login {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = request.send().await.map_err(|e| {
            AdapterError::Transient(format!(
                "the token server {} of registry {} did not answer: {}",
                challenge.realm,
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(AdapterError::Auth(format!(
                "the token server {} refused {} for {} ({status}): {}",
                challenge.realm,
                self.who(),
                scopes.0.join(" "),
                excerpt(&body)
            )));
        }
        status_error(
            status,
            &body,
            &format!("the token server {}", challenge.realm),
        )?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            AdapterError::Protocol(format!(
                "the token server {} answered what is not a token ({e}): {}",
                challenge.realm,
                excerpt(&body)
            ))
        })?;
        let token = answer.token.or(answer.access_token).ok_or_else(|| {
            AdapterError::Protocol(format!(
                "the token server {} answered neither `token` nor `access_token`",
                challenge.realm
            ))
        })?;
        let life = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs);
        let until = Instant::now() + life.saturating_sub(TOKEN_MARGIN);
        self.auth.lock().expect("auth state").tokens.insert(
            (challenge.service.clone(), scopes.clone()),
            (token.clone(), until),
        );
        Ok(token)
    }

    /// A small request (no blob body), bounded by `request_timeout`.
    async fn call(
        &self,
        scopes: &Scopes,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Response, AdapterError> {
        self.send(scopes, |http| {
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(self.request_timeout);
            if let Some(body) = body {
                request = request.body(body.to_vec());
            }
            request
        })
        .await
    }

    /// A HEAD or GET of a manifest with every type accepted; `None` for a 404.
    async fn manifest_request(
        &self,
        method: Method,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Url, Response)>, AdapterError> {
        let url = self.url(&format!("{repository}/manifests/{reference}"));
        let response = self
            .call(&Scopes::pull(repository), method, &url, &accept(), None)
            .await?;
        Ok((response.status() != StatusCode::NOT_FOUND).then_some((url, response)))
    }

    /// HEAD of a manifest: its digest, or `None` when the registry has none there.
    pub(crate) async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, AdapterError> {
        let Some((url, response)) = self
            .manifest_request(Method::HEAD, repository, reference)
            .await?
        else {
            return Ok(None);
        };
        let status = response.status();
        let digest = header(response.headers(), "docker-content-digest");
        status_error(status, &[], &format!("HEAD {url}"))?;
        match digest {
            Some(digest) => Ok(Some(digest)),
            // Older registries leave the header out: the body's hash is the digest.
            None => Ok(self
                .manifest(repository, reference)
                .await?
                .map(|m| m.digest)),
        }
    }

    /// GET of a manifest: its exact bytes, type and digest (`sha256` of the bytes, checked
    /// against the digest asked for and the one the registry states), or `None`.
    pub(crate) async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, AdapterError> {
        let Some((url, response)) = self
            .manifest_request(Method::GET, repository, reference)
            .await?
        else {
            return Ok(None);
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = read_limited(response, MANIFEST_LIMIT, &url).await?;
        status_error(status, &bytes, &format!("GET {url}"))?;
        let digest = sha256(&bytes);
        for (claimed, by) in [
            (
                Some(reference.to_owned()).filter(|r| r.contains(':')),
                "asked for",
            ),
            (
                header(&headers, "docker-content-digest"),
                "stated by the registry",
            ),
        ] {
            if let Some(claimed) = claimed.filter(|c| c.starts_with("sha256:"))
                && claimed != digest
            {
                return Err(AdapterError::Protocol(format!(
                    "GET {url}: the manifest's bytes hash to {digest}, not {claimed} ({by})"
                )));
            }
        }
        let media_type = header(&headers, CONTENT_TYPE.as_str()).unwrap_or_default();
        Manifest::read(bytes, media_type, digest)
            .map(Some)
            .map_err(|e| AdapterError::Protocol(format!("GET {url}: {e}")))
    }

    /// The child `child` of the index `index`, which must be in `repository`.
    pub(crate) async fn child_manifest(
        &self,
        repository: &str,
        index: &str,
        child: &str,
    ) -> Result<Manifest, AdapterError> {
        self.manifest(repository, child).await?.ok_or_else(|| {
            AdapterError::NotFound(format!(
                "the index {index} names {child}, which registry {} does not have in `{repository}`",
                self.base
            ))
        })
    }

    /// Whether `repository` has the manifest `digest`.
    pub(crate) async fn has_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, AdapterError> {
        Ok(self.manifest_digest(repository, digest).await?.is_some())
    }

    /// PUT of a manifest's exact bytes under `reference` (a tag or its digest); the digest
    /// the registry answers.
    pub(crate) async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<Option<String>, AdapterError> {
        let url = self.url(&format!("{repository}/manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            manifest.media_type.parse().map_err(|_| {
                AdapterError::Protocol(format!("`{}` is not a media type", manifest.media_type))
            })?,
        );
        let response = self
            .call(
                &Scopes::push(repository, None),
                Method::PUT,
                &url,
                &headers,
                Some(&manifest.bytes),
            )
            .await?;
        let status = response.status();
        let digest = header(response.headers(), "docker-content-digest");
        let body = response.bytes().await.unwrap_or_default();
        status_error(status, &body, &format!("PUT {url}"))?;
        Ok(digest)
    }

    /// Whether `repository` has the blob `digest`.
    pub(crate) async fn has_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, AdapterError> {
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let response = self
            .call(
                &Scopes::pull(repository),
                Method::HEAD,
                &url,
                &HeaderMap::new(),
                None,
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        status_error(response.status(), &[], &format!("HEAD {url}"))?;
        Ok(true)
    }

    /// A small blob (an image's config) read whole, at most `limit` bytes, its hash checked.
    pub(crate) async fn small_blob(
        &self,
        repository: &str,
        digest: &str,
        limit: usize,
    ) -> Result<Vec<u8>, AdapterError> {
        let response = self.blob(repository, digest).await?;
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let bytes = read_limited(response, limit, &url).await?;
        if sha256(&bytes) != digest {
            return Err(AdapterError::Protocol(format!(
                "GET {url}: the blob's bytes do not hash to its digest"
            )));
        }
        Ok(bytes)
    }

    /// GET of a blob, its body not read yet (so that it can be streamed on).
    pub(crate) async fn blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Response, AdapterError> {
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let response = self
            .send(&Scopes::pull(repository), |http| http.get(url.clone()))
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        status_error(status, &body, &format!("GET {url}"))?;
        Err(AdapterError::Protocol(format!(
            "GET {url} answered {status}"
        )))
    }

    /// `POST /v2/<repository>/blobs/uploads/?mount=<digest>&from=<from>`.
    pub(crate) async fn mount(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<Mount, AdapterError> {
        let mut url = self.url(&format!("{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let response = self
            .call(
                &Scopes::push(repository, Some(from)),
                Method::POST,
                &url,
                &HeaderMap::new(),
                None,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => self.location(&response, &url).map(Mount::Session),
            status => {
                let body = response.bytes().await.unwrap_or_default();
                status_error(status, &body, &format!("POST {url}"))?;
                Err(AdapterError::Protocol(format!(
                    "POST {url} answered {status}, neither 201 (mounted) nor 202 (upload)"
                )))
            }
        }
    }

    /// Opens an upload session in `repository`.
    pub(crate) async fn start_upload(&self, repository: &str) -> Result<Url, AdapterError> {
        let url = self.url(&format!("{repository}/blobs/uploads/"));
        let response = self
            .call(
                &Scopes::push(repository, None),
                Method::POST,
                &url,
                &HeaderMap::new(),
                None,
            )
            .await?;
        let status = response.status();
        if status != StatusCode::ACCEPTED {
            let body = response.bytes().await.unwrap_or_default();
            status_error(status, &body, &format!("POST {url}"))?;
            return Err(AdapterError::Protocol(format!(
                "POST {url} answered {status}, not 202 with an upload location"
            )));
        }
        self.location(&response, &url)
    }

    fn location(&self, response: &Response, url: &Url) -> Result<Url, AdapterError> {
        let location = header(response.headers(), "location").ok_or_else(|| {
            AdapterError::Protocol(format!("POST {url} opened an upload without a Location"))
        })?;
        self.base.join(&location).map_err(|e| {
            AdapterError::Protocol(format!(
                "POST {url}: Location `{location}` is not a URL: {e}"
            ))
        })
    }

    /// Streams `source` (a blob's GET) into the upload session at `location` and completes
    /// it as `digest`; the destination checks the digest. Every chunk passing is counted in
    /// `uploaded`. Nothing is held but the chunk in flight.
    pub(crate) async fn upload(
        &self,
        repository: &str,
        location: &Url,
        digest: &str,
        source: Response,
        uploaded: &Arc<AtomicU64>,
    ) -> Result<(), AdapterError> {
        let scopes = Scopes::push(repository, None);
        let length = header(source.headers(), CONTENT_LENGTH.as_str());
        let counter = Arc::clone(uploaded);
        let stream = source.bytes_stream().inspect_ok(move |chunk| {
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });
        // The session was opened with the same scopes, so their credentials are current and
        // this single-use body is not sent into a 401.
        let mut request = self
            .authorize(self.http.patch(location.clone()), &scopes, false)
            .await?
            .header(CONTENT_TYPE, "application/octet-stream");
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        let body = reqwest::Body::wrap_stream(stream);
        let response = self.execute(request.body(body)).await?;
        let status = response.status();
        let next = if status == StatusCode::ACCEPTED {
            self.location(&response, location)?
        } else {
            let body = response.bytes().await.unwrap_or_default();
            status_error(status, &body, &format!("PATCH {location}"))?;
            return Err(AdapterError::Protocol(format!(
                "PATCH {location} answered {status}, not 202"
            )));
        };
        let mut done = next;
        done.query_pairs_mut().append_pair("digest", digest);
        let response = self
            .call(&scopes, Method::PUT, &done, &HeaderMap::new(), Some(&[]))
            .await?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        status_error(status, &body, &format!("PUT {done}"))
    }

    /// Ends an upload session that will not be used (best effort: a session left open
    /// expires in the registry).
    pub(crate) async fn cancel_upload(&self, repository: &str, location: &Url) {
        let _ = self
            .call(
                &Scopes::push(repository, None),
                Method::DELETE,
                location,
                &HeaderMap::new(),
                None,
            )
            .await;
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The Accept header of every manifest HEAD and GET: all four types, so that no registry
/// converts an index to one platform's manifest or a v2s2 manifest to schema 1.
fn accept() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        ACCEPT_MANIFESTS
            .join(", ")
            .parse()
            .expect("media types are header text"),
    );
    headers
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(
    mut response: Response,
    limit: usize,
    url: &Url,
) -> Result<Vec<u8>, AdapterError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        AdapterError::Transient(format!(
            "GET {url}: the body broke off: {}",
            error_chain(&e)
        ))
    })? {
        if bytes.len() + chunk.len() > limit {
            return Err(AdapterError::Protocol(format!(
                "GET {url}: the body is over {limit} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `Ok` for a 2xx; else the error a status stands for: 401/403 `Auth`, 404 `NotFound`, 429
/// and 5xx `Transient`, anything else `Protocol`; `what` and the body's excerpt say where.
fn status_error(status: StatusCode, body: &[u8], what: &str) -> Result<(), AdapterError> {
    if status.is_success() {
        return Ok(());
    }
    let message = format!("{what} answered {status}: {}", excerpt(body));
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdapterError::Auth(message),
        StatusCode::NOT_FOUND => AdapterError::NotFound(message),
        StatusCode::TOO_MANY_REQUESTS => AdapterError::Transient(message),
        s if s.is_server_error() => AdapterError::Transient(message),
        _ => AdapterError::Protocol(message),
    })
}

/// The realm and service of a `Bearer` challenge.
fn parse_bearer(header: &str) -> Option<Challenge> {
    let rest = header.trim_start();
    if !rest.get(..6)?.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = String::new();
    let mut text = &rest[6..];
    while let Some(eq) = text.find('=') {
        let name = text[..eq].trim_matches([' ', ',']).to_ascii_lowercase();
        let after = &text[eq + 1..];
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or_default())
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim(), &after[end..])
            }
        };
        match name.as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = value.to_owned(),
            _ => {}
        }
        text = next;
    }
    Some(Challenge {
        realm: realm.filter(|r| !r.is_empty())?,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_with_and_without_quotes() {
        let c = parse_bearer(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service, "registry.example");
        let c = parse_bearer("bearer service=s, realm=http://t/x").unwrap();
        assert_eq!((c.realm.as_str(), c.service.as_str()), ("http://t/x", "s"));
        assert_eq!(parse_bearer(r#"Basic realm="x""#), None);
        assert_eq!(parse_bearer(r#"Bearer service="s""#), None);
        assert_eq!(parse_bearer("Bear"), None);
    }

    #[test]
    fn scopes_for_a_mount_name_both_repositories_sorted() {
        assert_eq!(
            Scopes::push("b/dst", Some("a/src")).0,
            ["repository:a/src:pull", "repository:b/dst:pull,push"]
        );
        assert_eq!(Scopes::push("x", Some("x")), Scopes::push("x", None));
        assert_eq!(Scopes::pull("x").0, ["repository:x:pull"]);
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_its_limit_and_no_further() {
        let url = Url::parse("http://registry.example/v2/").unwrap();
        let body = |n: usize| Response::from(http::Response::new(vec![7u8; n]));
        assert_eq!(read_limited(body(10), 10, &url).await.unwrap().len(), 10);
        assert_eq!(read_limited(body(0), 10, &url).await.unwrap().len(), 0);
        let error = read_limited(body(11), 10, &url).await.unwrap_err();
        assert!(error.to_string().contains("over 10 bytes"), "{error}");
    }

    #[test]
    fn statuses_map_to_error_kinds() {
        let kind = |s: u16| {
            status_error(StatusCode::from_u16(s).unwrap(), b"{}", "GET x")
                .err()
                .map(|e| baton_adapter_kit::harness::error_parts(&e).0)
        };
        assert_eq!(kind(200), None);
        assert_eq!(kind(401), Some("Auth"));
        assert_eq!(kind(403), Some("Auth"));
        assert_eq!(kind(404), Some("NotFound"));
        assert_eq!(kind(429), Some("Transient"));
        assert_eq!(kind(503), Some("Transient"));
        assert_eq!(kind(400), Some("Protocol"));
    }
}
