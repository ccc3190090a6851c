//! Recording what became of stored deliveries: a matching pass (the runs it starts and the
//! deliveries it marks, in one commit) and a replay asked for by hand.

use std::ops::Range;

use baton_store::{Change, now_millis};

use crate::{Engine, EngineError, NewRun};

/// What a matching pass made of one delivery that started runs, met a problem or was
/// replayed. Deliveries that started nothing and met no problem need none: the pass's
/// `through` mark covers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// The delivery's public id (its store sequence number).
    pub delivery: i64,
    /// The runs it started, as positions in the `runs` handed to
    /// [`Engine::match_deliveries`] with it; empty when it started none.
    pub runs: Range<usize>,
    /// A problem met while matching it, for people; the delivery is then marked failed.
    pub problem: Option<String>,
}

impl Engine {
    /// Records one matching pass in one commit: creates `runs`, marks every delivery of
    /// `outcomes` processed (with the ids of the runs it started) or failed, and, with
    /// `through`, that every delivery up to that id was matched, with the pass's other
    /// `writes` (its relay messages). A crash therefore either keeps all of it or none, and
    /// cannot start a delivery's runs, or relay it, twice. Returns the ids of the new runs,
    /// in the order of `runs`.
    pub async fn match_deliveries(
        &self,
        runs: Vec<NewRun>,
        outcomes: Vec<DeliveryOutcome>,
        through: Option<i64>,
        writes: Vec<Change>,
    ) -> Result<Vec<String>, EngineError> {
        let now = now_millis();
        self.create_runs(runs, |ids| {
            let mut changes = writes;
            changes.reserve(outcomes.len() + usize::from(through.is_some()));
            changes.extend(outcomes.into_iter().map(|o| Change::DeliveryProcessed {
                seq: o.delivery,
                runs: ids[o.runs].to_vec(),
                message: o.problem,
                now,
            }));
            if let Some(through) = through {
                changes.push(Change::DeliveriesMatched { through, now });
            }
            changes
        })
        .await
    }

    /// Marks the stored delivery `delivery` for matching again; the matcher's next pass
    /// starts the runs it matches then.
    pub async fn replay_delivery(&self, delivery: i64) -> Result<(), EngineError> {
        self.store()
            .commit(vec![Change::ReplayDelivery { seq: delivery }])
            .await?;
        Ok(())
    }
}
