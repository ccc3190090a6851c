//! A person's answer to a stage that waits for one: approve or reject.
//!
//! Stages whose adapter kind takes decisions ([`AdapterKind::takes_decisions`]) receive it as
//! the engine's *signal* ([`PollRequest::signal`]), sent by `baton run --approve`, the REST
//! API or the UI. Signals are stored, so the JSON shape is fixed:
//! `{"decision": "approved" | "rejected", "by": "…", "comment": "…"}`.
//!
//! [`AdapterKind::takes_decisions`]: crate::adapter::AdapterKind::takes_decisions
//! [`PollRequest::signal`]: crate::adapter::PollRequest::signal

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a person decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The stage may go on: it succeeds.
    Approved,
    /// The stage fails.
    Rejected,
}

impl Verdict {
    /// The word used in signals and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// The signal that answers a stage waiting for a person:
/// `{"decision": "approved" | "rejected", "by": "…", "comment": "…"}`.
///
/// Other keys are ignored, so senders may add their own (a timestamp, a request id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or rejected.
    pub decision: Verdict,
    /// Who decided (a token name or user name).
    #[serde(default)]
    pub by: Option<String>,
    /// Why, in the person's words.
    #[serde(default)]
    pub comment: Option<String>,
}

impl Decision {
    /// An approval by `by`.
    pub fn approved(by: impl Into<String>) -> Self {
        Self::new(Verdict::Approved, by)
    }

    /// A rejection by `by`.
    pub fn rejected(by: impl Into<String>) -> Self {
        Self::new(Verdict::Rejected, by)
    }

    fn new(decision: Verdict, by: impl Into<String>) -> Self {
        Self {
            decision,
            by: Some(by.into()),
            comment: None,
        }
    }

    /// Adds a comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The signal to send to the attempt.
    pub fn to_signal(&self) -> Value {
        json!({"decision": self.decision, "by": self.by, "comment": self.comment})
    }

    /// Reads a signal; `None` when it has not this shape.
    pub fn from_signal(signal: &Value) -> Option<Self> {
        serde_json::from_value(signal.clone()).ok()
    }

    /// "approved by alice: looks good", for people.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} by {}",
            self.decision.as_str(),
            self.by.as_deref().unwrap_or("an unnamed approver")
        );
        if let Some(comment) = self.comment.as_deref().filter(|c| !c.is_empty()) {
            text.push_str(": ");
            text.push_str(comment);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_as_signals() {
        let d = Decision::rejected("carol").with_comment("no");
        assert_eq!(
            d.to_signal(),
            json!({"decision": "rejected", "by": "carol", "comment": "no"})
        );
        assert_eq!(Decision::from_signal(&d.to_signal()), Some(d));
        assert_eq!(
            Decision::from_signal(&json!({"decision": "approved", "at": 5})),
            Some(Decision {
                decision: Verdict::Approved,
                by: None,
                comment: None
            })
        );
        for bad in [json!("approved"), json!({"decision": "maybe"}), json!({})] {
            assert_eq!(Decision::from_signal(&bad), None, "{bad}");
        }
    }

    #[test]
    fn descriptions_name_who_and_why() {
        assert_eq!(
            Decision::approved("alice").with_comment("go").describe(),
            "approved by alice: go"
        );
        assert_eq!(
            Decision::rejected("bob").with_comment("").describe(),
            "rejected by bob"
        );
        let unnamed = Decision::from_signal(&json!({"decision": "approved"})).unwrap();
        assert_eq!(unnamed.describe(), "approved by an unnamed approver");
    }
}
