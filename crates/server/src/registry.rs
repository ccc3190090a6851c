//! An OCI registry's notifications: distribution's envelopes of events.
//!
//! The registry posts `{"events": [...]}` to each endpoint of its `notifications` config,
//! with the static headers configured there, and retries a whole envelope until one answer
//! is 2xx or 3xx. Each event becomes a delivery of its own, with the event object as its
//! body, `action` (`push`, `pull`, `mount`, `delete`) as its event type and the event's `id`
//! as its delivery id, so a retried envelope is a duplicate event by event. The envelope's
//! events are stored in one transaction before the answer: never in part.

use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::sources::{Refusal, StoredEvent, body_hash};

/// The content types a registry sends envelopes with: distribution 2.x's, distribution 3's,
/// and plain JSON (for people and other senders).
pub const CONTENT_TYPES: [&str; 3] = [
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
];

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Refuses a body not declared as one of [`CONTENT_TYPES`] (parameters such as `charset`
/// are allowed).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim());
    match declared {
        Some(t) if CONTENT_TYPES.iter().any(|c| c.eq_ignore_ascii_case(t)) => Ok(()),
        found => Err(Refusal::UnsupportedType(format!(
            "expected a registry notification, Content-Type {}; found {}",
            CONTENT_TYPES.join(", "),
            found.map_or_else(|| "none".to_owned(), |t| format!("`{t}`")),
        ))),
    }
}

/// The events of the envelope `body` (JSON text the matcher's parser accepted), in order.
/// An envelope without events gives none.
pub fn split_envelope(body: &str) -> Result<Vec<StoredEvent>, Refusal> {
    let envelope: Envelope<'_> = serde_json::from_str(body).map_err(|e| {
        Refusal::Malformed(format!(
            "expected a registry notification envelope, {{\"events\": [...]}}: {e}"
        ))
    })?;
    envelope
        .events
        .iter()
        .enumerate()
        .map(|(i, raw)| read_event(i, raw.get()))
        .collect()
}

fn read_event(index: usize, text: &str) -> Result<StoredEvent, Refusal> {
    let at = |key: &str| format!("events[{index}]{key}");
    let malformed = |m: String| Err(Refusal::Malformed(m));
    let event: Value =
        serde_json::from_str(text).map_err(|e| Refusal::Malformed(format!("{}: {e}", at(""))))?;
    let Some(fields) = event.as_object() else {
        return malformed(format!(
            "{}: expected an event object, found {text}",
            at("")
        ));
    };
    let action = match fields.get("action") {
        Some(Value::String(action)) if !action.is_empty() => action.clone(),
        found => {
            return malformed(format!(
                "{}: expected the event's action (push, pull, mount or delete), found {}",
                at(".action"),
                found.map_or_else(|| "nothing".to_owned(), Value::to_string)
            ));
        }
    };
    let delivery_id = match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        None | Some(Value::Null) => body_hash(text.as_bytes()),
        Some(other) => {
            return malformed(format!(
                "{}: expected the event's id as a string, found {other}",
                at(".id")
            ));
        }
    };
    Ok(StoredEvent {
        event: action,
        delivery_id,
        body: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use sha2::{Digest, Sha256};

    fn refusal_text(r: Result<Vec<StoredEvent>, Refusal>) -> String {
        match r {
            Err(Refusal::Malformed(m)) => m,
            other => panic!("expected a malformed refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_event_is_kept_byte_for_byte_with_its_action_and_id() {
        let body = r#"{"events": [
            {"id": "e-1", "action": "push", "target": {"tag": "v1", "size": 1.50}},
            {"action":"pull" , "target":{"repository":"a/b"}}
        ]}"#;
        let events = split_envelope(body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "push");
        assert_eq!(events[0].delivery_id, "e-1");
        assert_eq!(
            events[0].body,
            r#"{"id": "e-1", "action": "push", "target": {"tag": "v1", "size": 1.50}}"#
        );
        // Without an id, the event is known by its bytes.
        let bytes = r#"{"action":"pull" , "target":{"repository":"a/b"}}"#;
        assert_eq!(events[1].body, bytes);
        assert_eq!(
            events[1].delivery_id,
            hex::encode(Sha256::digest(bytes.as_bytes()))
        );
        let null_id = split_envelope(r#"{"events": [{"id": null, "action": "delete"}]}"#).unwrap();
        assert_eq!(
            null_id[0].delivery_id,
            hex::encode(Sha256::digest(br#"{"id": null, "action": "delete"}"#))
        );
    }

    #[test]
    fn an_empty_envelope_has_no_events_and_other_bodies_are_refused_in_words() {
        assert_eq!(split_envelope(r#"{"events": []}"#).unwrap(), []);
        let missing = refusal_text(split_envelope(r#"{"event": []}"#));
        assert!(missing.contains("{\"events\": [...]}"), "{missing}");
        assert!(missing.contains("missing field `events`"), "{missing}");
        let not_array = refusal_text(split_envelope(r#"{"events": {"id": "x"}}"#));
        assert!(not_array.contains("expected a sequence"), "{not_array}");
        let not_object = refusal_text(split_envelope(r#"[1]"#));
        assert!(not_object.contains("envelope"), "{not_object}");
        let scalar = refusal_text(split_envelope(r#"{"events": [{"action": "push"}, 3]}"#));
        assert_eq!(scalar, "events[1]: expected an event object, found 3");
        let no_action = refusal_text(split_envelope(r#"{"events": [{"id": "a"}]}"#));
        assert_eq!(
            no_action,
            "events[0].action: expected the event's action (push, pull, mount or delete), found nothing"
        );
        let empty_action = refusal_text(split_envelope(r#"{"events": [{"action": ""}]}"#));
        assert!(empty_action.ends_with("found \"\""), "{empty_action}");
        let number_id = refusal_text(split_envelope(
            r#"{"events": [{"id": 7, "action": "push"}]}"#,
        ));
        assert_eq!(
            number_id,
            "events[0].id: expected the event's id as a string, found 7"
        );
        let empty_id = refusal_text(split_envelope(
            r#"{"events": [{"id": "", "action": "push"}]}"#,
        ));
        assert!(empty_id.starts_with("events[0].id:"), "{empty_id}");
    }

    #[test]
    fn the_registrys_content_types_are_taken_and_others_refused() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            check_content_type(&headers)
        };
        for taken in CONTENT_TYPES {
            assert_eq!(with(taken), Ok(()), "{taken}");
        }
        assert_eq!(with("Application/JSON; charset=utf-8"), Ok(()));
        let Err(Refusal::UnsupportedType(why)) = with("application/x-www-form-urlencoded") else {
            panic!("a form is refused")
        };
        assert!(
            why.ends_with("found `application/x-www-form-urlencoded`"),
            "{why}"
        );
        let Err(Refusal::UnsupportedType(why)) = check_content_type(&HeaderMap::new()) else {
            panic!("no type is refused")
        };
        assert!(
            why.contains("events.v1+json") && why.ends_with("found none"),
            "{why}"
        );
    }
}
