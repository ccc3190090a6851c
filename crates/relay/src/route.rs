//! Which relay messages a delivery makes: one per target of every relay whose `from` names
//! the delivery's source and whose `if` holds.
//!
//! The matcher calls [`Relays::route`](crate::Relays::route) for each new delivery of a
//! pass and puts the messages in the commit that marks the pass matched, so a delivery
//! acknowledged is a delivery relayed and a restart never relays it twice from the start.
//! A message bound for a target with room in its queue is written already leased and
//! handed to that target's worker in memory once the commit is done
//! ([`Relays::committed`](crate::Relays::committed)): the fast path needs no claim.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_core::Expr;
use baton_store::{DueRelay, Millis, NewRelayMessage, PendingDelivery};
use serde_json::{Map, Value};

use crate::dispatch::{LEASE, TargetShared};

/// One relay as the matcher sees it.
pub(crate) struct Route {
    /// The relay's name.
    pub(crate) name: String,
    /// The sources it takes deliveries of.
    pub(crate) from: Vec<String>,
    /// Its `if`.
    pub(crate) condition: Option<Expr>,
    /// Its targets.
    pub(crate) targets: Vec<Arc<TargetShared>>,
}

/// The messages a matching pass made, and the ones to hand over after its commit.
#[derive(Default)]
pub struct Routed {
    /// Messages to write in the pass's commit.
    pub messages: Vec<NewRelayMessage>,
    /// Leased messages for the workers, once the commit is done.
    pub(crate) handoffs: Vec<Handoff>,
    /// Targets to wake after the commit to claim from the store (their messages were
    /// written unleased).
    pub(crate) wake: Vec<Arc<TargetShared>>,
}

impl Routed {
    /// True when the pass made no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A leased message waiting for its commit, holding a place in its target's queue. Dropped
/// without being handed over (the commit failed), it gives the place back; the message
/// itself was never stored.
pub(crate) struct Handoff {
    pub(crate) target: Arc<TargetShared>,
    pub(crate) message: Option<DueRelay>,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if self.message.is_some() {
            self.target.room.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Route {
    /// True when this relay takes deliveries of `source`.
    pub(crate) fn takes(&self, source: &str) -> bool {
        self.from.iter().any(|s| s == source)
    }

    /// Whether `delivery` passes the relay's `if`, which sees the payload with the
    /// request's headers at `.headers`.
    pub(crate) fn admits(&self, delivery: &PendingDelivery) -> Result<bool, String> {
        let Some(condition) = &self.condition else {
            return Ok(true);
        };
        let input = condition_input(delivery)?;
        condition
            .is_true(&input)
            .map_err(|e| format!("relay `{}` if: {e}", self.name))
    }
}

/// The `if` input: the payload, with the request's headers at `.headers` (they replace a
/// payload's own top-level `headers`; a payload that is not an object is under `.payload`).
fn condition_input(delivery: &PendingDelivery) -> Result<Value, String> {
    let payload: Value = serde_json::from_str(&delivery.body)
        .map_err(|e| format!("the stored body is not JSON: {e}"))?;
    let headers: Value =
        serde_json::from_str(&delivery.headers).unwrap_or_else(|_| Value::Object(Map::new()));
    Ok(match payload {
        Value::Object(mut map) => {
            map.insert("headers".to_owned(), headers);
            Value::Object(map)
        }
        other => {
            let mut map = Map::new();
            map.insert("payload".to_owned(), other);
            map.insert("headers".to_owned(), headers);
            Value::Object(map)
        }
    })
}

/// A new message key: `msg_` and a UUIDv7 in hex, so keys sort by the time they were made
/// and no two stores make the same one.
pub(crate) fn new_key() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Adds `delivery`'s message for `target` to `routed`: leased and handed over in memory
/// when the target's queue has room and order does not matter, otherwise left in the
/// store for the worker to claim.
pub(crate) fn add_message(
    routed: &mut Routed,
    relay: &str,
    target: &Arc<TargetShared>,
    delivery: &PendingDelivery,
    now: Millis,
) {
    let key = new_key();
    let leased = !target.target.ordered && target.reserve_room();
    let message = NewRelayMessage {
        key: key.clone(),
        relay: relay.to_owned(),
        target: target.target.name.clone(),
        delivery: delivery.id,
        created_at: now,
        due_at: now,
        lease_until: leased.then_some(now + LEASE.as_millis() as Millis),
    };
    routed.messages.push(message);
    if leased {
        routed.handoffs.push(Handoff {
            target: target.clone(),
            message: Some(DueRelay {
                key,
                relay: relay.to_owned(),
                target: target.target.name.clone(),
                tries: 0,
                attempts: 0,
                due_at: now,
                delivery: delivery.id,
                source: delivery.source.clone(),
                delivery_id: delivery.delivery_id.clone(),
                event: delivery.event.clone(),
                headers: delivery.headers.clone(),
                body: delivery.body.clone(),
            }),
        });
    } else if !routed.wake.iter().any(|t| Arc::ptr_eq(t, target)) {
        routed.wake.push(target.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &str, headers: &str) -> PendingDelivery {
        PendingDelivery {
            id: 7,
            source: "github".into(),
            delivery_id: "d-7".into(),
            event: "push".into(),
            headers: headers.into(),
            body: body.into(),
            replay: false,
        }
    }

    fn route(condition: Option<&str>) -> Route {
        Route {
            name: "mirror".into(),
            from: vec!["github".into(), "gitlab".into()],
            condition: condition.map(|c| Expr::compile(c).unwrap()),
            targets: Vec::new(),
        }
    }

    #[test]
    fn a_relay_takes_only_the_sources_it_names() {
        let r = route(None);
        assert!(r.takes("github"));
        assert!(r.takes("gitlab"));
        assert!(!r.takes("registry"));
    }

    #[test]
    fn the_condition_sees_the_payload_and_the_request_headers() {
        let d = delivery(
            r#"{"ref":"refs/heads/main","headers":"payload's own"}"#,
            r#"{"x-github-event":"push"}"#,
        );
        assert_eq!(route(None).admits(&d), Ok(true));
        assert_eq!(
            route(Some(r#".ref == "refs/heads/main""#)).admits(&d),
            Ok(true)
        );
        assert_eq!(
            route(Some(r#".ref == "refs/heads/dev""#)).admits(&d),
            Ok(false)
        );
        assert_eq!(
            route(Some(r#".headers["x-github-event"] == "push""#)).admits(&d),
            Ok(true)
        );
        let array = delivery("[1,2]", "{}");
        assert_eq!(route(Some(".payload[1] == 2")).admits(&array), Ok(true));
    }

    #[test]
    fn a_failing_condition_is_a_problem_naming_the_relay() {
        let d = delivery(r#"{"n":"x"}"#, "{}");
        let problem = route(Some(".n + 1")).admits(&d).unwrap_err();
        assert!(problem.starts_with("relay `mirror` if:"), "{problem}");
    }

    #[test]
    fn keys_are_unique_and_grow_with_time() {
        let a = new_key();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_key();
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert!(b > a, "{a} then {b}");
    }
}
