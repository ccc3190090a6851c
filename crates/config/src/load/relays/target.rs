//! One `[[relays.<name>.to]]` target: where it sends, how it signs, and how hard it pushes.

use std::time::Duration;

use baton_core::HumanDuration;
use baton_core::address::restricted_host;
use baton_core::secret::check_secret_value;
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::{bounded, compile, read_schedule};
use crate::check::{check_keys, fields_of, type_name, typed_partial};
use crate::diagnostic::{Sink, join};
use crate::gateway::*;
use crate::load::{check_header, table, valid_header};

/// How long one try may take when `timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest `timeout`: a receiver that needs longer should answer at once and work
/// after.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Tries in flight to one target when `concurrency` is not set.
const DEFAULT_CONCURRENCY: u64 = 8;

/// The most tries in flight to one target: each holds a connection.
const MAX_CONCURRENCY: u64 = 1024;

/// The `sign` schemes, as written in `scheme = "…"`.
const SCHEMES: [&str; 3] = ["github", "standard-webhooks", "none"];

/// The file form of a target; `sign`, `headers` and `schedule` are read by hand, as each
/// takes more than one shape.
#[derive(Debug, Deserialize)]
struct TargetRaw {
    /// The target's name in its relay.
    #[serde(default)]
    name: Option<String>,
    /// Where messages are POSTed.
    #[serde(default)]
    url: Option<String>,
    /// `{ scheme, secret }` or `"none"`.
    #[serde(default)]
    sign: Option<Value>,
    /// Extra request headers.
    #[serde(default)]
    headers: Option<Value>,
    /// A jq expression making the body sent.
    #[serde(default)]
    transform: Option<String>,
    /// How long one try may take.
    #[serde(default)]
    timeout: Option<HumanDuration>,
    /// Tries in flight at once.
    #[serde(default)]
    concurrency: Option<u64>,
    /// `N/s`, `N/min` or `N/h`.
    #[serde(default)]
    rate: Option<String>,
    /// The delays between tries.
    #[serde(default)]
    schedule: Option<Value>,
    /// One message at a time, in order.
    #[serde(default)]
    ordered: bool,
    /// Whether non-public addresses may be reached.
    #[serde(default)]
    allow_private: bool,
}

/// A target's name, as given or as made from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TargetName {
    /// The name.
    pub(super) text: String,
    /// True when it was made from the URL (no `name` key).
    pub(super) defaulted: bool,
}

/// Reads one target (at `at`); `inherited` is the schedule it takes without its own.
/// Returns its name whenever one is known, for the relay to check names are unique even
/// among broken targets, and the target when nothing in it is wrong.
pub(super) fn read_target(
    value: &Value,
    at: &str,
    inherited: &[Duration],
    sink: &mut Sink,
) -> (Option<TargetName>, Option<RelayTarget>) {
    let before = sink.count();
    if table(value, at, sink).is_none() {
        return (None, None);
    }
    let Some((raw, failed_keys)) =
        typed_partial::<TargetRaw>(value, at, &[("", fields_of::<TargetRaw>())], sink)
    else {
        return (None, None);
    };
    let failed = |key: &str| failed_keys.iter().any(|path| path == key);
    // A dropped `allow_private` is unknown, not false: its problem is reported already.
    let allow_private = (!failed("allow_private")).then_some(raw.allow_private);
    let url = match &raw.url {
        Some(text) => read_url(text, allow_private, at, sink),
        None => {
            if !failed("url") {
                sink.err(
                    join(at, "url"),
                    "missing required key `url`: where messages are POSTed, like `url = \"https://hooks.example.net/ci\"`",
                );
            }
            None
        }
    };
    let name = if failed("name") {
        None
    } else {
        read_name(raw.name, url.as_ref(), at, sink)
    };
    let sign = read_sign(raw.sign.as_ref(), at, sink);
    let headers = raw
        .headers
        .map(|value| read_headers(&value, &join(at, "headers"), sink))
        .unwrap_or_default();
    let transform = raw
        .transform
        .and_then(|code| compile(&code, &join(at, "transform"), sink));
    let timeout = bounded(
        raw.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
        LONGEST_TIMEOUT,
        &join(at, "timeout"),
        sink,
    );
    let concurrency = read_concurrency(raw.concurrency, raw.ordered, at, sink);
    let rate = raw.rate.and_then(|text| {
        let rate = parse_rate(&text);
        if rate.is_none() {
            sink.err(
                join(at, "rate"),
                format!("`{text}` is not a rate: expected `N/s`, `N/min` or `N/h` with N at least 1, like `50/s`"),
            );
        }
        rate
    });
    let schedule = match raw.schedule {
        Some(value) => read_schedule(&value, &join(at, "schedule"), sink),
        None => inherited.to_vec(),
    };
    let (Some(target_name), Some(url), Some(sign), Some(timeout)) = (&name, raw.url, sign, timeout)
    else {
        return (name, None);
    };
    if sink.count() != before {
        return (name, None);
    }
    let target = RelayTarget {
        name: target_name.text.clone(),
        url,
        sign,
        headers,
        transform,
        timeout,
        concurrency,
        rate,
        schedule,
        ordered: raw.ordered,
        allow_private: raw.allow_private,
    };
    (name, Some(target))
}

/// Checks a target's `url`: `http` or `https`, no credentials, and a host that is not a
/// private address unless `allow_private` is true (`None`: unknown, so not judged). The
/// URL is read as the HTTP client reads it, so `http://2130706433/` is judged as the
/// `127.0.0.1` it reaches. Messages never repeat the URL, which may hold a password.
fn read_url(text: &str, allow_private: Option<bool>, at: &str, sink: &mut Sink) -> Option<Url> {
    let key = join(at, "url");
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            sink.err(
                key,
                format!("not a URL ({e}): expected `https://host[:port][/path]` or `http://…`"),
            );
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        sink.err(
            key,
            format!(
                "`{}:` URLs cannot be relayed to: expected `https://…` or `http://…`",
                url.scheme()
            ),
        );
        return None;
    }
    let before = sink.count();
    if !url.username().is_empty() || url.password().is_some() {
        sink.err(
            &key,
            "the URL carries credentials (`user:password@`), which would be stored and shown with it: put them in `headers` with a secret reference, like `headers = { Authorization = { env = \"CI_TOKEN\" } }`",
        );
    }
    match url.host_str() {
        None => sink.err(&key, "expected a host: `https://host[:port][/path]`"),
        Some(host) => {
            if let Some(range) = restricted_host(host)
                && allow_private == Some(false)
            {
                sink.err(
                    &key,
                    format!("`{host}` is in the {range} address range: set `allow_private = true` on the target to reach loopback, private, link-local and other non-public addresses"),
                );
            }
        }
    }
    (sink.count() == before).then_some(url)
}

/// A target's `name`, or its URL's host (with `-<port>` when the URL gives a port other
/// than its scheme's) when it has none.
fn read_name(
    name: Option<String>,
    url: Option<&Url>,
    at: &str,
    sink: &mut Sink,
) -> Option<TargetName> {
    let key = join(at, "name");
    let allowed = "lowercase letters, digits, `.`, `_` and `-`";
    if let Some(name) = name {
        if !valid_target_name(&name) {
            sink.err(
                key,
                format!("`{name}` cannot be a target name: use {allowed}"),
            );
        }
        return Some(TargetName {
            text: name,
            defaulted: false,
        });
    }
    let url = url?;
    let host = url.host_str()?;
    let text = match url.port() {
        Some(port) => format!("{host}-{port}"),
        None => host.to_owned(),
    };
    if !valid_target_name(&text) {
        sink.err(
            key,
            format!("the URL's host `{host}` cannot be the target's name: give the target a `name` ({allowed})"),
        );
        return None;
    }
    Some(TargetName {
        text,
        defaulted: true,
    })
}

/// True for target names: `[a-z0-9._-]+`.
fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

/// `sign`: `{ scheme, secret }`, with a secret for `github` and `standard-webhooks` and none
/// for `none`; or the shorthand `"none"`.
fn read_sign(value: Option<&Value>, at: &str, sink: &mut Sink) -> Option<RelaySign> {
    let key = join(at, "sign");
    let schemes = SCHEMES.join(", ");
    let map = match value {
        None => {
            sink.err(
                key,
                "missing required key `sign`: `sign = { scheme = \"github\", secret = { env = \"NAME\" } }` (or `standard-webhooks`), or `sign = { scheme = \"none\" }` to send unsigned",
            );
            return None;
        }
        Some(Value::String(scheme)) if scheme == "none" => return Some(RelaySign::None),
        Some(Value::String(scheme)) if SCHEMES.contains(&scheme.as_str()) => {
            sink.err(
                key,
                format!("`{scheme}` signs with a secret: write `sign = {{ scheme = \"{scheme}\", secret = {{ env = \"NAME\" }} }}`"),
            );
            return None;
        }
        Some(Value::String(other)) => {
            sink.err(
                key,
                format!("unknown signing scheme `{other}`: expected one of {schemes}"),
            );
            return None;
        }
        Some(Value::Object(map)) => map,
        Some(other) => {
            sink.err(
                key,
                format!(
                    "expected `{{ scheme = \"…\", secret = {{ env = \"NAME\" }} }}` or `\"none\"`, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    check_keys(map, &key, &["scheme", "secret"], sink);
    let secret_key = join(&key, "secret");
    let secret = map.get("secret").map(|value| {
        check_secret_value(value)
            .map_err(|message| sink.err(&secret_key, message))
            .ok()
    });
    let scheme_key = join(&key, "scheme");
    let scheme = match map.get("scheme") {
        Some(Value::String(scheme)) => scheme.as_str(),
        Some(other) => {
            sink.err(
                scheme_key,
                format!("expected one of {schemes}, found {}", type_name(other)),
            );
            return None;
        }
        None => {
            sink.err(
                scheme_key,
                format!("missing required key `scheme`: expected one of {schemes}"),
            );
            return None;
        }
    };
    match (scheme, secret) {
        ("none", None) => Some(RelaySign::None),
        ("none", Some(_)) => {
            sink.err(
                secret_key,
                "`scheme = \"none\"` sends unsigned, so it takes no `secret`: remove it, or choose `github` or `standard-webhooks`",
            );
            None
        }
        ("github", Some(secret)) => secret.map(RelaySign::Github),
        ("standard-webhooks", Some(secret)) => secret.map(RelaySign::StandardWebhooks),
        ("github" | "standard-webhooks", None) => {
            sink.err(
                secret_key,
                format!("missing required key `secret`: `{scheme}` signs with a secret, `secret = {{ env = \"NAME\" }}`"),
            );
            None
        }
        (other, _) => {
            sink.err(
                scheme_key,
                format!("unknown signing scheme `{other}`: expected one of {schemes}"),
            );
            None
        }
    }
}

/// `headers` (at `key`): a table of header names to text or secret references, none of them
/// a header baton sets itself, each name once whatever its case.
fn read_headers(value: &Value, key: &str, sink: &mut Sink) -> Vec<(String, RelayHeaderValue)> {
    let Value::Object(map) = value else {
        sink.err(
            key,
            format!(
                "expected a table of header names and values, like `{{ \"X-Team\" = \"db\", Authorization = {{ env = \"CI_TOKEN\" }} }}`, found {}",
                type_name(value)
            ),
        );
        return Vec::new();
    };
    let mut headers = Vec::with_capacity(map.len());
    for (i, (name, value)) in map.iter().enumerate() {
        let at = join(key, name);
        let before = sink.count();
        check_header(name, &at, sink);
        if valid_header(name)
            && let Some(reason) = set_by_baton(name)
        {
            sink.err(&at, format!("baton sets `{name}` itself: {reason}"));
        }
        if let Some(earlier) = earlier_name(map, i, name) {
            sink.err(
                &at,
                format!("`{name}` is already set as `{earlier}`: header names are the same whatever their case"),
            );
        }
        let value = read_header_value(value, &at, sink);
        if sink.count() == before
            && let Some(value) = value
        {
            headers.push((name.clone(), value));
        }
    }
    headers
}

/// The name among the first `i` keys of `map` that is `name` but for case.
fn earlier_name<'m>(map: &'m Map<String, Value>, i: usize, name: &str) -> Option<&'m str> {
    map.keys()
        .take(i)
        .find(|earlier| earlier.eq_ignore_ascii_case(name))
        .map(String::as_str)
}

/// A header value: text fit for a header, or a secret reference.
fn read_header_value(value: &Value, at: &str, sink: &mut Sink) -> Option<RelayHeaderValue> {
    match value {
        Value::String(text) if text.chars().any(|c| c.is_control() && c != '\t') => {
            sink.err(
                at,
                "the value holds a control character (a line break?), which a header cannot carry",
            );
            None
        }
        Value::String(text) => Some(RelayHeaderValue::Plain(text.clone())),
        Value::Object(_) => check_secret_value(value)
            .map(RelayHeaderValue::Secret)
            .map_err(|message| sink.err(at, message))
            .ok(),
        other => {
            sink.err(
                at,
                format!(
                    "expected text or a secret reference (`{{ env = \"NAME\" }}`), found {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

/// Why a target may not set the header `name`, when baton sets it itself.
fn set_by_baton(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    Some(match lower.as_str() {
        "content-type" | "content-length" | "transfer-encoding" => {
            "it describes the body sent, which baton writes"
        }
        "host" => "it comes from the target's `url`",
        "idempotency-key" | "webhook-id" => {
            "it carries the message's id, the same on every try, so receivers can drop duplicates"
        }
        "webhook-timestamp" | "webhook-signature" | "x-hub-signature" | "x-hub-signature-256" => {
            "it belongs to the signature, which `sign` makes"
        }
        _ if lower.starts_with("x-baton-") => "`X-Baton-*` headers are baton's own",
        _ => return None,
    })
}

/// `concurrency`, between 1 and [`MAX_CONCURRENCY`]; an ordered target sends one message
/// at a time, so it takes 1 and nothing else.
fn read_concurrency(given: Option<u64>, ordered: bool, at: &str, sink: &mut Sink) -> usize {
    let key = join(at, "concurrency");
    let concurrency = match given {
        None if ordered => 1,
        None => DEFAULT_CONCURRENCY,
        Some(n) if !(1..=MAX_CONCURRENCY).contains(&n) => {
            sink.err(
                key,
                format!("{n} is out of range: expected 1 to {MAX_CONCURRENCY}"),
            );
            n
        }
        Some(n) if ordered && n != 1 => {
            sink.err(
                key,
                format!("`ordered = true` sends one message at a time, so {n} tries at once cannot be: leave `concurrency` out, or set it to 1"),
            );
            n
        }
        Some(n) => n,
    };
    usize::try_from(concurrency).unwrap_or(usize::MAX)
}

/// `"N/s"`, `"N/min"` or `"N/h"` with N at least 1.
fn parse_rate(text: &str) -> Option<RelayRate> {
    let (count, per) = text.split_once('/')?;
    let count = count
        .parse::<u32>()
        .ok()
        .filter(|&n| n >= 1 && count.bytes().all(|b| b.is_ascii_digit()))?;
    let per = match per {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(RelayRate { count, per })
}
