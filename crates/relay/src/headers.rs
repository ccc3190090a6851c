//! Which of a delivery's request headers a relay passes on to its targets.
//!
//! Receivers need the sender's own headers (the event type, the delivery id), but not the
//! ones that described the hop to baton (hop-by-hop headers, the body's framing), the
//! original sender's credentials and signatures (each target is signed on its own), nor
//! the headers baton sets itself on every request.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Headers that describe one connection, not the message (RFC 9110, section 7.6.1), and
/// the request's framing and routing, which the relay's own request sets anew.
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
];

/// Credentials and signatures: the sender's are not the target's, and baton signs each
/// target's requests itself.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-token",
    "signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "idempotency-key",
];

/// Prefixes of header families that are never passed on: proxies' own headers, and the
/// headers baton sets on the requests it relays.
const DROPPED_PREFIXES: &[&str] = &["proxy-", "x-baton-"];

/// The headers of `stored` (a delivery's headers as stored: a JSON object text of
/// lower-case names and string values) that are passed on, in their stored order. Names
/// or values that cannot be sent in a header are left out rather than sent broken, and
/// so is everything when `stored` is not such an object.
pub(crate) fn passed_on(stored: &str) -> Vec<(HeaderName, HeaderValue)> {
    let Ok(headers) = serde_json::from_str::<Map<String, Value>>(stored) else {
        return Vec::new();
    };
    let named_by_connection: Vec<String> = headers
        .get("connection")
        .and_then(Value::as_str)
        .map(|listed| {
            listed
                .split(',')
                .map(|token| token.trim().to_ascii_lowercase())
                .filter(|token| !token.is_empty())
                .collect()
        })
        .unwrap_or_default();
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let dropped =
                is_dropped(name.as_str()) || named_by_connection.iter().any(|n| n == name.as_str());
            if dropped {
                return None;
            }
            let value = HeaderValue::from_str(value.as_str()?).ok()?;
            Some((name, value))
        })
        .collect()
}

/// Whether a header (its name in lower case) is never passed on.
fn is_dropped(name: &str) -> bool {
    CONNECTION_HEADERS.contains(&name)
        || CREDENTIAL_HEADERS.contains(&name)
        || DROPPED_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(stored: &str) -> Vec<String> {
        passed_on(stored)
            .into_iter()
            .map(|(n, _)| n.as_str().to_owned())
            .collect()
    }

    #[test]
    fn event_and_delivery_headers_pass_with_their_values() {
        let passed = passed_on(
            r#"{"x-github-event":"push","x-github-delivery":"72d3162e-cc78-11e3-81ab-4c9367dc0958","user-agent":"GitHub-Hookshot/044aadd","x-gitlab-event":"Push Hook"}"#,
        );
        let pairs: Vec<(&str, &str)> = passed
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("x-github-event", "push"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("user-agent", "GitHub-Hookshot/044aadd"),
                ("x-gitlab-event", "Push Hook"),
            ]
        );
    }

    #[test]
    fn hop_by_hop_framing_credential_and_signature_headers_are_dropped() {
        let every_dropped = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "te",
            "trailer",
            "trailers",
            "transfer-encoding",
            "upgrade",
            "host",
            "content-length",
            "content-type",
            "content-encoding",
            "expect",
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-hub-signature",
            "x-hub-signature-256",
            "x-gitlab-token",
            "signature",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "idempotency-key",
            "x-baton-relay",
            "x-baton-anything",
        ];
        let mut stored = Map::new();
        for name in every_dropped {
            stored.insert(name.to_owned(), Value::from("v"));
        }
        stored.insert("x-event-key".to_owned(), Value::from("repo:push"));
        assert_eq!(names(&Value::Object(stored).to_string()), ["x-event-key"]);
    }

    #[test]
    fn headers_named_by_connection_are_dropped() {
        assert_eq!(
            names(
                r#"{"connection":"keep-alive, X-Trace ,x-hop","x-trace":"1","x-hop":"2","x-github-event":"push"}"#
            ),
            ["x-github-event"]
        );
    }

    #[test]
    fn names_and_values_that_cannot_be_sent_are_left_out() {
        assert_eq!(
            names(
                r#"{"bad name":"v","x-newline":"a\r\nx-injected: 1","x-ok":"v","x-number":5,"x-null":null}"#
            ),
            ["x-ok"]
        );
    }

    #[test]
    fn stored_text_that_is_not_an_object_passes_nothing() {
        assert!(names("").is_empty());
        assert!(names("[]").is_empty());
        assert!(names(r#"{"x-a": "#).is_empty());
        assert!(names("{}").is_empty());
    }
}
