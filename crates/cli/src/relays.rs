//! `baton relays …`: the relays of a running `baton serve`, their targets and messages, and
//! replays.

use std::process::ExitCode;

use anyhow::{Result, bail};
use baton_core::HumanDuration;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Api, Remote, text, time};

/// `baton relays`.
#[derive(Subcommand, Debug)]
pub(crate) enum RelaysCommand {
    /// List every relay's targets: state (healthy, open circuit, disabled) and messages by
    /// status.
    List,
    /// List a relay's messages, newest first, or show one message and its tries.
    Show {
        /// The relay (`[relays.<name>]`).
        relay: String,
        /// One message's key (`msg_…`, as receivers see it in `Idempotency-Key`).
        key: Option<String>,
        /// Only this target's messages.
        #[arg(long)]
        target: Option<String>,
        /// Only messages in this status: pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Send messages again, keeping their keys: one message, or every dead (or delivered,
    /// or any) message of the relay, of one target, made in a time range. A target a 410
    /// disabled is enabled again.
    Replay {
        /// The relay.
        relay: String,
        /// One message's key.
        key: Option<String>,
        /// Only this target's messages.
        #[arg(long)]
        target: Option<String>,
        /// Only dead messages (the default).
        #[arg(long, conflicts_with = "status")]
        dead: bool,
        /// Which messages: dead, delivered or any.
        #[arg(long)]
        status: Option<String>,
        /// Made at or after this time: RFC 3339 (`2026-12-06T10:00:00Z`) or a duration ago
        /// (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// Made before this time (same forms).
        #[arg(long)]
        until: Option<String>,
    },
}

/// `baton relays …` arguments.
#[derive(Args, Debug)]
pub(crate) struct RelaysArgs {
    #[command(subcommand)]
    command: RelaysCommand,
    #[command(flatten)]
    remote: Remote,
}

/// `baton relays …`.
pub(crate) async fn relays(args: RelaysArgs) -> Result<ExitCode> {
    let api = Api::new(args.remote)?;
    let answer = match &args.command {
        RelaysCommand::List => api.call(Method::GET, "/api/v1/relays", None).await?,
        RelaysCommand::Show {
            relay,
            key: Some(key),
            ..
        } => {
            let path = format!(
                "/api/v1/relays/{}/messages/{}",
                segment(relay),
                segment(key)
            );
            api.call(Method::GET, &path, None).await?
        }
        RelaysCommand::Show {
            relay,
            key: None,
            target,
            status,
            limit,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(target) = target {
                query.append_pair("target", target);
            }
            if let Some(status) = status {
                query.append_pair("status", status);
            }
            let path = format!(
                "/api/v1/relays/{}/messages?{}",
                segment(relay),
                query.finish()
            );
            api.call(Method::GET, &path, None).await?
        }
        RelaysCommand::Replay {
            relay,
            key: Some(key),
            ..
        } => {
            let path = format!(
                "/api/v1/relays/{}/messages/{}/replay",
                segment(relay),
                segment(key)
            );
            api.call(Method::POST, &path, None).await?
        }
        RelaysCommand::Replay {
            relay,
            key: None,
            target,
            dead: _,
            status,
            since,
            until,
        } => {
            let mut body = Map::new();
            if let Some(target) = target {
                body.insert("target".into(), json!(target));
            }
            body.insert("status".into(), json!(status.as_deref().unwrap_or("dead")));
            if let Some(since) = since {
                body.insert("since".into(), json!(instant(since)?));
            }
            if let Some(until) = until {
                body.insert("until".into(), json!(instant(until)?));
            }
            let path = format!("/api/v1/relays/{}/replay", segment(relay));
            api.call(Method::POST, &path, Some(Value::Object(body)))
                .await?
        }
    };
    let value = match answer {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    api.print(&value, |v| match &args.command {
        RelaysCommand::List => print_targets(v),
        RelaysCommand::Show { key: Some(_), .. } => print_message(v),
        RelaysCommand::Show { key: None, .. } => print_messages(v),
        RelaysCommand::Replay { .. } => {
            println!("replaying {} message(s)", v["replayed"]);
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// An RFC 3339 time as given, or a duration ago (`2h`) as an RFC 3339 time.
fn instant(given: &str) -> Result<String> {
    if chrono::DateTime::parse_from_rfc3339(given).is_ok() {
        return Ok(given.to_owned());
    }
    let Ok(ago) = HumanDuration::parse(given) else {
        bail!(
            "`{given}` is neither an RFC 3339 time (2026-12-06T10:00:00Z) nor a duration ago (2h)"
        );
    };
    let at = chrono::Utc::now() - ago.0;
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn print_targets(v: &Value) {
    println!(
        "{:<16} {:<20} {:<9} {:>8} {:>10} {:>6}  oldest pending",
        "RELAY", "TARGET", "STATE", "PENDING", "DELIVERED", "DEAD"
    );
    for relay in v["relays"].as_array().into_iter().flatten() {
        for t in relay["targets"].as_array().into_iter().flatten() {
            println!(
                "{:<16} {:<20} {:<9} {:>8} {:>10} {:>6}  {}",
                text(&relay["name"]),
                text(&t["name"]),
                text(&t["state"]),
                number(&t["pending"]),
                number(&t["delivered"]),
                number(&t["dead"]),
                time(&t["oldest_pending_at"])
            );
            if let Some(reason) = t["disabled_reason"].as_str() {
                println!("  disabled: {reason}");
            }
            if let Some(failures) = t["circuit"]["failures"].as_u64() {
                println!(
                    "  circuit open after {failures} failed tries; next probe {}",
                    until(&t["circuit"]["probe_at"])
                );
            }
        }
    }
}

fn print_messages(v: &Value) {
    println!(
        "{:<36} {:<16} {:<9} {:>5} {:>4}  {:<12} message",
        "KEY", "TARGET", "STATUS", "TRIES", "CODE", "MADE"
    );
    for m in v["messages"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:<16} {:<9} {:>5} {:>4}  {:<12} {}",
            text(&m["key"]),
            text(&m["target"]),
            text(&m["status"]),
            m["attempts"],
            m["last_code"]
                .as_u64()
                .map_or("-".into(), |c| c.to_string()),
            time(&m["created_at"]),
            m["message"].as_str().unwrap_or("")
        );
    }
    if let Some(next) = v["next"].as_str() {
        println!("(more: the API's ?before={next})");
    }
}

fn print_message(v: &Value) {
    let m = &v["message"];
    println!(
        "message {} of relay {} to {}: {} (delivery {}, made {})",
        text(&m["key"]),
        text(&m["relay"]),
        text(&m["target"]),
        text(&m["status"]),
        m["delivery"],
        time(&m["created_at"])
    );
    if let Some(reason) = m["message"].as_str() {
        println!("  {reason}");
    }
    if m["status"] == "pending" {
        println!("  next try {}", until(&m["due_at"]));
    }
    println!(
        "  {:>3}  {:<12} {:>7}  {:<12} {:>4}  answer",
        "#", "AT", "TOOK", "OUTCOME", "CODE"
    );
    for a in v["attempts"].as_array().into_iter().flatten() {
        let answer = a["error"]
            .as_str()
            .or_else(|| a["body"].as_str())
            .unwrap_or("")
            .replace('\n', " ");
        println!(
            "  {:>3}  {:<12} {:>5}ms  {:<12} {:>4}  {}",
            number(&a["attempt"]),
            time(&a["at"]),
            number(&a["duration_ms"]),
            text(&a["outcome"]),
            number(&a["code"]),
            shorten(&answer, 80)
        );
    }
}

/// A whole number as text (so widths apply), or `-`.
fn number(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
}

/// When a wall-clock time ahead comes, for people.
fn until(ms: &Value) -> String {
    ms.as_i64().map_or_else(
        || "when the one in flight answers".into(),
        |ms| {
            let ahead = (ms - baton_store::now_millis()).max(0);
            format!("in {:.1}s", ahead as f64 / 1000.0)
        },
    )
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
