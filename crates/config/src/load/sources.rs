//! A `[sources.*]` block: its kind, its authentication and its settings.

use baton_core::Expr;
use serde_json::Value;

use super::{check_header, is_http_url, kind_and_rest, valid_name};
use crate::check::{fields_of, typed};
use crate::diagnostic::{Sink, join};
use crate::gateway::*;

pub(super) fn read_source(name: &str, value: &Value, sink: &mut Sink) -> Option<SourceConfig> {
    let at = format!("sources.{name}");
    let before = sink.count();
    if name == "manual" {
        sink.err(
            &at,
            "`manual` is reserved for runs started by hand (CLI, API, UI): choose another name",
        );
    } else if !valid_name(name) {
        sink.err(
            &at,
            format!("`{name}` cannot be a source name (it is part of the URL /hooks/<name>): use lowercase letters, digits, `_` and `-`"),
        );
    }
    let kinds = SourceConfig::KINDS.join(", ");
    let (kind, rest) = kind_and_rest(value, &at, &kinds, sink)?;
    let source = match kind.as_str() {
        "github" => {
            let raw: GithubRaw = typed(&rest, &at, &[("", fields_of::<GithubRaw>())], sink)?;
            let secrets: Vec<_> = raw
                .secret
                .into_iter()
                .chain(raw.secrets)
                .map(|s| s.0)
                .collect();
            if secrets.is_empty() {
                sink.err(
                    join(&at, "secret"),
                    "missing required key `secret`: a github source needs the webhook secret, `secret = { env = \"NAME\" }` (or `secrets = [...]` to rotate)",
                );
            }
            let api_url = read_api_url(raw.api_url, GITHUB_API_URL, &at, sink);
            let api_auth = read_github_auth(
                raw.token.map(|s| s.0),
                raw.app_id,
                raw.private_key.map(|s| s.0),
                raw.installation_id,
                &at,
                sink,
            );
            SourceConfig::Github(GithubSource {
                secrets,
                api_url,
                api_auth,
            })
        }
        "gitlab" => {
            let raw: GitlabRaw = typed(&rest, &at, &[("", fields_of::<GitlabRaw>())], sink)?;
            let tokens: Vec<_> = raw
                .token
                .into_iter()
                .chain(raw.tokens)
                .map(|s| s.0)
                .collect();
            if tokens.is_empty() {
                sink.err(
                    join(&at, "token"),
                    "missing required key `token`: a gitlab source needs the webhook token, `token = { env = \"NAME\" }` (or `tokens = [...]` to rotate)",
                );
            }
            SourceConfig::Gitlab(GitlabSource {
                tokens,
                api_url: read_api_url(raw.api_url, GITLAB_API_URL, &at, sink),
                api_token: raw.api_token.map(|s| s.0),
            })
        }
        "generic" => SourceConfig::Generic(read_generic(&rest, &at, sink)?),
        "travis" => {
            let raw: TravisRaw = typed(&rest, &at, &[("", fields_of::<TravisRaw>())], sink)?;
            SourceConfig::Travis(TravisSource {
                repos: read_repos(raw.repos, &at, sink),
                api_url: read_api_url(raw.api_url, TRAVIS_API_URL, &at, sink),
            })
        }
        "registry" => {
            let raw: RegistryRaw = typed(&rest, &at, &[("", fields_of::<RegistryRaw>())], sink)?;
            SourceConfig::Registry(RegistrySource {
                auth: read_registry_auth(raw, &at, sink)?,
            })
        }
        other => {
            sink.err(
                join(&at, "kind"),
                format!("unknown source kind `{other}`: expected one of {kinds}"),
            );
            return None;
        }
    };
    (sink.count() == before).then_some(source)
}

/// A travis source's `repos`: required, each `owner/name` once.
fn read_repos(repos: Option<Vec<String>>, at: &str, sink: &mut Sink) -> Vec<String> {
    let key = join(at, "repos");
    let Some(repos) = repos.filter(|r| !r.is_empty()) else {
        sink.err(
            key,
            "missing required key `repos`: Travis signs every repository's notifications with one key, so name the repositories whose notifications start workflows, `repos = [\"owner/name\"]`",
        );
        return Vec::new();
    };
    for (i, repo) in repos.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || p.trim() != *p) {
            sink.err(
                at,
                format!(
                    "`{repo}` is not a repository slug: expected `owner/name`, as in `pingcap/tidb`"
                ),
            );
        } else if let Some(first) = repos[..i].iter().position(|r| r == repo) {
            sink.err(at, format!("`{repo}` is already listed at {key}[{first}]"));
        }
    }
    repos
}

/// A registry source's header to check: `token`, or `username` and `password`; every
/// problem reported.
fn read_registry_auth(raw: RegistryRaw, at: &str, sink: &mut Sink) -> Option<RegistryAuth> {
    let before = sink.count();
    if let Some(username) = &raw.username {
        if username.is_empty() {
            sink.err(
                join(at, "username"),
                "expected a user name, not an empty string",
            );
        } else if username.contains(':') {
            sink.err(
                join(at, "username"),
                format!(
                    "`{username}` contains `:`, which Basic credentials cannot carry in a user name"
                ),
            );
        }
    }
    let auth = match (raw.token, raw.username, raw.password) {
        (Some(token), None, None) => Some(RegistryAuth::Bearer(token.0)),
        (None, Some(username), Some(password)) => Some(RegistryAuth::Basic {
            username,
            password: password.0,
        }),
        (Some(_), _, _) => {
            sink.err(
                at,
                "set either `token` (Bearer) or `username` and `password` (Basic), not both: the registry's endpoint sends one `Authorization` header",
            );
            None
        }
        (None, Some(_), None) => {
            sink.err(
                join(at, "password"),
                "missing required key `password`: Basic credentials need one, `password = { env = \"NAME\" }`",
            );
            None
        }
        (None, None, Some(_)) => {
            sink.err(
                join(at, "username"),
                "missing required key `username`: Basic credentials need a user name with the `password`",
            );
            None
        }
        (None, None, None) => {
            sink.err(
                at,
                "missing authentication: set `token = { env = \"NAME\" }` (checked against `Authorization: Bearer <token>`) or `username` and `password` (Basic), and send that header from the registry's notification endpoint (`headers: { Authorization: [...] }`)",
            );
            None
        }
    };
    if sink.count() == before { auth } else { None }
}

/// A source's `api_url`, checked, without a trailing `/`; `default` when absent.
pub(super) fn read_api_url(
    url: Option<String>,
    default: &str,
    at: &str,
    sink: &mut Sink,
) -> String {
    let Some(url) = url else {
        return default.to_owned();
    };
    if !is_http_url(&url) {
        sink.err(
            join(at, "api_url"),
            format!("`{url}` is not a URL: expected the API root, like `{default}`"),
        );
    }
    url.trim_end_matches('/').to_owned()
}

/// A github source's API credentials: `token`, or `app_id` + `private_key` (+
/// `installation_id`), or none.
pub(super) fn read_github_auth(
    token: Option<baton_core::SecretRef>,
    app_id: Option<u64>,
    private_key: Option<baton_core::SecretRef>,
    installation_id: Option<u64>,
    at: &str,
    sink: &mut Sink,
) -> Option<GithubAuth> {
    let app_keys = app_id.is_some() || private_key.is_some() || installation_id.is_some();
    if token.is_some() && app_keys {
        sink.err(
            at,
            "set either `token` (an access token) or `app_id` and `private_key` (a GitHub App) for the API, not both",
        );
        return None;
    }
    if let Some(token) = token {
        return Some(GithubAuth::Token(token));
    }
    if !app_keys {
        return None;
    }
    let before = sink.count();
    if app_id == Some(0) {
        sink.err(
            join(at, "app_id"),
            "expected the GitHub App's id, a number above 0",
        );
    }
    if installation_id == Some(0) {
        sink.err(
            join(at, "installation_id"),
            "expected an installation id, a number above 0",
        );
    }
    match (app_id, private_key) {
        (Some(app_id), Some(private_key)) => {
            (sink.count() == before).then_some(GithubAuth::App(GithubApp {
                app_id,
                private_key,
                installation_id,
            }))
        }
        (Some(_), None) => {
            sink.err(
                join(at, "private_key"),
                "missing required key `private_key`: a GitHub App needs its private key (PEM), `private_key = { file = \"app.pem\" }`",
            );
            None
        }
        (None, _) => {
            sink.err(
                join(at, "app_id"),
                "missing required key `app_id`: a GitHub App (`private_key`, `installation_id`) needs its id, `app_id = 123456`",
            );
            None
        }
    }
}

pub(super) fn read_generic(rest: &Value, at: &str, sink: &mut Sink) -> Option<GenericSource> {
    let raw: GenericRaw = typed(
        rest,
        at,
        &[
            ("", fields_of::<GenericRaw>()),
            ("hmac", fields_of::<HmacAuth>()),
            ("bearer", fields_of::<BearerAuth>()),
            ("event", fields_of::<EventRaw>()),
            ("delivery_id", fields_of::<HeaderRaw>()),
        ],
        sink,
    )?;
    let before = sink.count();
    if let Some(hmac) = &raw.hmac {
        check_header(&hmac.header, &join(at, "hmac.header"), sink);
    }
    let auth = match (raw.hmac, raw.bearer) {
        (Some(hmac), None) => Some(GenericAuth::Hmac(hmac)),
        (None, Some(bearer)) => Some(GenericAuth::Bearer(bearer)),
        (Some(_), Some(_)) => {
            sink.err(at, "set either `hmac` or `bearer`, not both");
            None
        }
        (None, None) => {
            sink.err(
                at,
                "missing authentication: set `hmac = { secret = { env = \"NAME\" }, header = \"X-Signature\" }` or `bearer = { token = { env = \"NAME\" } }`",
            );
            None
        }
    };
    let event = match raw.event {
        None => None,
        Some(EventRaw {
            header: Some(header),
            expr: None,
        }) => {
            check_header(&header, &join(at, "event.header"), sink);
            Some(EventSelector::Header(header))
        }
        Some(EventRaw {
            header: None,
            expr: Some(expr),
        }) => match Expr::compile(&expr) {
            Ok(expr) => Some(EventSelector::Expr(expr)),
            Err(e) => {
                sink.err(join(at, "event.expr"), e.to_string());
                None
            }
        },
        Some(_) => {
            sink.err(
                join(at, "event"),
                "expected exactly one of `{ header = \"X-Event\" }` or `{ expr = \".type\" }`",
            );
            None
        }
    };
    let delivery_id = match raw.delivery_id {
        None => DeliveryId::BodyHash,
        Some(HeaderRaw { header }) => {
            check_header(&header, &join(at, "delivery_id.header"), sink);
            DeliveryId::Header(header)
        }
    };
    (sink.count() == before).then_some(GenericSource {
        auth: auth?,
        event,
        delivery_id,
    })
}
