//! The gateway config's sections: read, checked, and gathered into a [`GatewayConfig`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use baton_core::{HumanDuration, Kinds};
use serde_json::{Map, Value};

use super::adapters::read_adapter;
use super::relays::read_relay;
use super::sources::read_source;
use super::{Declared, is_http_url, table};
use crate::check::{check_keys, fields_of, type_name, typed};
use crate::diagnostic::Sink;
use crate::gateway::*;

pub(super) fn read_gateway(
    doc: &Map<String, Value>,
    base_dir: PathBuf,
    kinds: &Kinds,
    sink: &mut Sink,
) -> (GatewayConfig, Declared) {
    let mut config = GatewayConfig {
        base_dir,
        ..GatewayConfig::default()
    };
    let mut declared = Declared::default();
    check_keys(doc, "", &TOP_LEVEL_KEYS, sink);

    if let Some(v) = doc.get("workflows")
        && let Some(globs) = typed::<Vec<String>>(v, "workflows", &[], sink)
    {
        config.workflows = globs;
    }
    if let Some(v) = doc.get("server")
        && table(v, "server", sink).is_some()
        && let Some(server) =
            typed::<ServerConfig>(v, "server", &[("", fields_of::<ServerConfig>())], sink)
    {
        check_server(&server, sink);
        config.server = server;
    }
    if let Some(v) = doc.get("store")
        && table(v, "store", sink).is_some()
        && let Some(store) =
            typed::<StoreConfig>(v, "store", &[("", fields_of::<StoreConfig>())], sink)
    {
        check_store(&store, sink);
        config.store = store;
    }
    if let Some(v) = doc.get("api")
        && let Some(api) = table(v, "api", sink)
    {
        config.api = read_api(api, sink);
    }
    if let Some(v) = doc.get("sources")
        && let Some(sources) = table(v, "sources", sink)
    {
        for (name, v) in sources {
            let source = read_source(name, v, sink);
            declared.sources.insert(name.clone(), source.clone());
            if let Some(source) = source {
                config.sources.insert(name.clone(), source);
            }
        }
    }
    if let Some(v) = doc.get("relays")
        && let Some(relays) = table(v, "relays", sink)
    {
        for (name, v) in relays {
            if let Some(relay) = read_relay(name, v, &declared.sources, sink) {
                config.relays.insert(name.clone(), relay);
            }
        }
    }
    if let Some(v) = doc.get("adapters")
        && let Some(adapters) = table(v, "adapters", sink)
    {
        for (name, v) in adapters {
            let (kind, instance) = read_adapter(name, v, kinds, sink);
            declared.adapters.insert(name.clone(), kind);
            if let Some(instance) = instance {
                config.adapters.insert(name.clone(), instance);
            }
        }
    }
    if let Some(v) = doc.get("engine")
        && table(v, "engine", sink).is_some()
        && let Some(engine) =
            typed::<EngineConfig>(v, "engine", &[("", fields_of::<EngineConfig>())], sink)
    {
        check_engine(&engine, sink);
        config.engine = engine;
    }
    if let Some(v) = doc.get("expressions")
        && table(v, "expressions", sink).is_some()
        && let Some(expressions) = typed::<ExpressionsConfig>(
            v,
            "expressions",
            &[("", fields_of::<ExpressionsConfig>())],
            sink,
        )
    {
        check_expressions(&expressions, sink);
        config.expressions = expressions;
    }
    if let Some(v) = doc.get("ui")
        && table(v, "ui", sink).is_some()
        && let Some(ui) = typed::<UiConfig>(v, "ui", &[("", fields_of::<UiConfig>())], sink)
    {
        config.ui = ui;
    }
    (config, declared)
}

/// The `sslmode` values the PostgreSQL store knows (libpq's, less `allow`, which would try
/// plain text first).
const SSLMODES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];

pub(super) fn check_store(store: &StoreConfig, sink: &mut Sink) {
    let url = store.url.as_str();
    if url.starts_with("sqlite:") {
        if store.password.is_some() {
            sink.err(
                "store.password",
                "a SQLite store has no password: remove `password`, or point `url` at PostgreSQL (`postgres://user@host/db`)",
            );
        }
    } else if is_postgres_url(url) {
        check_postgres_url(store, sink);
    } else {
        // Only the scheme is echoed: the rest may hold a password.
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let shown = if scheme.is_empty() {
            "this value".to_owned()
        } else {
            format!("a `{scheme}://` URL")
        };
        sink.err(
            "store.url",
            format!(
                "{shown} is not a store URL: expected `sqlite://PATH` or `postgres://user@host/db`"
            ),
        );
    }
    if let Some(lease) = store.lease
        && !(StoreConfig::MIN_LEASE..=StoreConfig::MAX_LEASE).contains(&lease.0)
    {
        sink.err(
            "store.lease",
            format!(
                "`{lease}` is out of range: expected {} to {}",
                HumanDuration(StoreConfig::MIN_LEASE),
                HumanDuration(StoreConfig::MAX_LEASE)
            ),
        );
    }
}

fn check_postgres_url(store: &StoreConfig, sink: &mut Sink) {
    let parsed = match url::Url::parse(&store.url) {
        Ok(parsed) => parsed,
        Err(e) => {
            sink.err(
                "store.url",
                format!("not a PostgreSQL URL ({e}): expected `postgres://user@host[:port]/db`"),
            );
            return;
        }
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        sink.err(
            "store.url",
            "the URL names no host: expected `postgres://user@host[:port]/db`",
        );
    }
    if parsed.password().is_some() && store.password.is_some() {
        sink.err(
            "store.password",
            "the URL carries a password too: give it in one place only, preferably here as a secret reference",
        );
    }
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode" && !SSLMODES.contains(&value.as_ref()) {
            sink.err(
                "store.url",
                format!(
                    "`sslmode={value}` is not a TLS mode: expected one of {}",
                    SSLMODES.join(", ")
                ),
            );
        }
    }
}

pub(super) fn check_expressions(expressions: &ExpressionsConfig, sink: &mut Sink) {
    let ceiling = baton_core::expr_bound::Limits::MAX_STEPS_CEILING;
    if !(1..=ceiling).contains(&expressions.max_steps) {
        sink.err(
            "expressions.max_steps",
            format!(
                "{} is out of range: expected 1 to {ceiling} (deeper values than that many steps build cannot be dropped safely)",
                expressions.max_steps
            ),
        );
    }
    if expressions.max_time.0.is_zero() {
        sink.err("expressions.max_time", "expected a duration longer than 0s");
    }
    if expressions.max_memory < ExpressionsConfig::MIN_MEMORY {
        sink.err(
            "expressions.max_memory",
            format!(
                "{} bytes is too little: expected at least {} (1 MiB)",
                expressions.max_memory,
                ExpressionsConfig::MIN_MEMORY
            ),
        );
    }
}

pub(super) fn check_server(server: &ServerConfig, sink: &mut Sink) {
    let listen_ok = server
        .listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !listen_ok {
        sink.err(
            "server.listen",
            format!(
                "`{}` is not an address to listen on: expected `host:port`, like `127.0.0.1:8080` or `0.0.0.0:8080`",
                server.listen
            ),
        );
    }
    if let Some(url) = &server.public_url
        && !is_http_url(url)
    {
        sink.err(
            "server.public_url",
            format!("`{url}` is not a URL: expected `http://host[:port][/path]` or `https://…`"),
        );
    }
    if server.max_body_bytes == 0 {
        sink.err("server.max_body_bytes", "expected at least 1 byte");
    }
    for (key, value) in [
        ("server.header_timeout", server.header_timeout),
        ("server.body_timeout", server.body_timeout),
        ("server.idle_timeout", server.idle_timeout),
    ] {
        if value.0.is_zero() {
            sink.err(key, "expected a duration longer than 0s");
        }
    }
    if server.max_connections == 0 {
        sink.err("server.max_connections", "expected at least 1");
    }
    if server.max_connections > 0 && server.reserved_connections >= server.max_connections {
        sink.err(
            "server.reserved_connections",
            format!(
                "{} leaves no connection for webhooks: expected fewer than `max_connections` ({})",
                server.reserved_connections, server.max_connections
            ),
        );
    }
}

pub(super) fn check_engine(engine: &EngineConfig, sink: &mut Sink) {
    if engine.default_timeout.0.is_zero() {
        sink.err("engine.default_timeout", "a timeout must be longer than 0s");
    }
    if engine.poll_min.0.is_zero() {
        sink.err("engine.poll_min", "expected a duration longer than 0s");
    }
    if engine.poll_max < engine.poll_min {
        sink.err(
            "engine.poll_max",
            format!(
                "`{}` is shorter than `poll_min` ({})",
                engine.poll_max, engine.poll_min
            ),
        );
    }
    if engine.max_concurrency == 0 {
        sink.err("engine.max_concurrency", "expected at least 1");
    }
}

pub(super) fn read_api(api: &Map<String, Value>, sink: &mut Sink) -> ApiConfig {
    check_keys(api, "api", fields_of::<ApiConfig>(), sink);
    let mut config = ApiConfig::default();
    let Some(tokens) = api.get("tokens") else {
        return config;
    };
    let Value::Array(items) = tokens else {
        sink.err(
            "api.tokens",
            format!(
                "expected a list of tokens, like `[{{ name = \"ops\", token = {{ env = \"OPS_TOKEN\" }}, role = \"operator\" }}]`, found {}",
                type_name(tokens)
            ),
        );
        return config;
    };
    let mut names = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("api.tokens[{i}]");
        if table(item, &at, sink).is_none() {
            continue;
        }
        if let Some(token) = typed::<ApiToken>(item, &at, &[("", fields_of::<ApiToken>())], sink) {
            if !names.insert(token.name.clone()) {
                sink.err(
                    format!("{at}.name"),
                    format!("another token is already named `{}`", token.name),
                );
            }
            config.tokens.push(token);
        }
    }
    config
}
