//! Turns stored deliveries into runs, after the sender got its answer.
//!
//! Every workflow with an `on:` entry that names the delivery's source and event, and whose
//! `if` holds for the payload, gets one run. The runs and the "processed" mark are one
//! commit, so a crash in between cannot start a run twice; a restarted server picks up the
//! deliveries still marked `received`.

use std::sync::Arc;
use std::time::Duration;

use baton_core::context::TriggerInfo;
use baton_engine::NewRun;
use baton_store::{Change, DeliveryRecord, now_millis};

use crate::AppState;

/// Processes pending deliveries until the process stops.
pub async fn run(state: Arc<AppState>) {
    loop {
        match state.engine.store().pending_deliveries(256).await {
            Ok(batch) if !batch.is_empty() => {
                if let Err(e) = process(&state, batch).await {
                    tracing::error!(error = %e, "matching deliveries failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "reading pending deliveries failed"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), state.matcher.notified()).await;
    }
}

async fn process(
    state: &AppState,
    batch: Vec<DeliveryRecord>,
) -> Result<(), baton_engine::EngineError> {
    let mut runs = Vec::new();
    let mut marks = Vec::new();
    for delivery in &batch {
        let mut problems = Vec::new();
        let first = runs.len();
        for workflow in &state.workflows {
            for (i, trigger) in workflow.triggers.iter().enumerate() {
                if trigger.source != delivery.source {
                    continue;
                }
                match trigger.matches(&delivery.source, &delivery.event, &delivery.body) {
                    Ok(true) => {
                        runs.push(NewRun {
                            workflow: workflow.clone(),
                            event: delivery.body.clone(),
                            trigger: TriggerInfo {
                                source: delivery.source.clone(),
                                event: delivery.event.clone(),
                                delivery_id: Some(delivery.delivery_id.clone()),
                            },
                        });
                        break; // one run per workflow per delivery
                    }
                    Ok(false) => {}
                    Err(e) => {
                        problems.push(format!("workflow `{}` on[{i}].if: {e}", workflow.name()))
                    }
                }
            }
        }
        marks.push((
            delivery.id,
            first..runs.len(),
            (!problems.is_empty()).then(|| problems.join("; ")),
        ));
    }
    let now = now_millis();
    let created = runs.len();
    // Deliveries that started nothing and had no problem are marked in one statement.
    let (quiet, marks): (Vec<_>, Vec<_>) = marks
        .into_iter()
        .partition(|(_, range, message)| range.is_empty() && message.is_none());
    let ignored: Vec<i64> = quiet.into_iter().map(|(seq, _, _)| seq).collect();
    state
        .engine
        .create_runs(runs, |ids| {
            let mut changes: Vec<Change> = marks
                .into_iter()
                .map(|(seq, range, message)| Change::DeliveryProcessed {
                    seq,
                    runs: ids[range].to_vec(),
                    message,
                    now,
                })
                .collect();
            if !ignored.is_empty() {
                changes.push(Change::DeliveriesIgnored { seqs: ignored, now });
            }
            changes
        })
        .await?;
    tracing::debug!(
        deliveries = batch.len(),
        runs = created,
        "deliveries matched"
    );
    Ok(())
}
