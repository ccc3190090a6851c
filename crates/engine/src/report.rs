//! Status reports in the store's outbox (`baton_store::outbox`): for a run whose workflow
//! has `report:`, each change of the run or of a stage adds an outbox row per source, in the
//! same commit as the change, so a report is never lost to a restart nor written for a
//! change that was not stored. A run without `report:` costs one look at an empty list.

use baton_core::Workflow;
use baton_store::{Change, ReportKey, now_millis};

/// Appends to `changes` an outbox row for every run or stage written in `changes[from..]`,
/// for each source `workflow` reports to, due now.
pub(crate) fn add_reports(workflow: &Workflow, changes: &mut Vec<Change>, from: usize) {
    let sources = &workflow.spec.report;
    if sources.is_empty() {
        return;
    }
    let now = now_millis();
    let mut wanted: Vec<ReportKey> = Vec::new();
    for change in &changes[from..] {
        let (run_id, stage_id) = match change {
            Change::InsertRun(header, _) | Change::PutRun(header) => (&header.id, ""),
            Change::PutStage(stage) => (&stage.run_id, stage.stage_id.as_str()),
            _ => continue,
        };
        for source in sources {
            let key = ReportKey {
                run_id: run_id.clone(),
                source: source.clone(),
                stage_id: stage_id.to_owned(),
            };
            if !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    changes.extend(
        wanted
            .into_iter()
            .map(|key| Change::Report { key, due_at: now }),
    );
}

#[cfg(test)]
mod tests {
    use baton_core::{StageDefaults, StageStatus, WorkflowSpec};
    use baton_store::{Millis, RunHeader, StageRecord, TaskKind};
    use serde_json::json;

    use super::*;

    fn workflow(report: &[&str]) -> Workflow {
        let spec: WorkflowSpec = serde_json::from_value(json!({
            "name": "ci",
            "stages": {"build": {"uses": "x"}, "test": {"uses": "x", "needs": ["build"]}},
            "report": report,
        }))
        .unwrap();
        Workflow::compile(spec, StageDefaults::default()).unwrap()
    }

    fn header(id: &str) -> RunHeader {
        RunHeader {
            id: id.into(),
            workflow: "ci".into(),
            status: baton_core::RunStatus::Running,
            cancel_requested: false,
            message: None,
            created_at: 1,
            started_at: None,
            finished_at: None,
        }
    }

    /// The outbox rows in `changes`, checking each is due between `since` and now.
    fn keys(changes: &[Change], since: Millis) -> Vec<(String, String)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Report { key, due_at } => {
                    assert!((since..=now_millis()).contains(due_at), "{due_at}");
                    assert_eq!(key.run_id, "r1");
                    Some((key.source.clone(), key.stage_id.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_run_and_stage_change_is_reported_once_per_source() {
        let mut stage = StageRecord::pending("r1", "build", 0);
        stage.status = StageStatus::Running;
        let mut changes = vec![
            Change::PutStage(StageRecord::pending("r1", "test", 1)),
            Change::PutStage(stage.clone()),
            Change::PutStage(stage),
            Change::PutRun(header("r1")),
            Change::Unschedule {
                run_id: "r1".into(),
                stage_id: "build".into(),
                kind: TaskKind::Poll,
            },
        ];
        let since = now_millis();
        add_reports(&workflow(&["github", "gitlab"]), &mut changes, 1);
        assert_eq!(
            keys(&changes, since),
            [
                ("github".into(), "build".into()),
                ("gitlab".into(), "build".into()),
                ("github".into(), "".into()),
                ("gitlab".into(), "".into()),
            ],
            "changes before `from` are not looked at; a stage written twice is reported once"
        );
    }

    #[test]
    fn a_workflow_without_report_adds_nothing() {
        let mut changes = vec![Change::PutRun(header("r1"))];
        add_reports(&workflow(&[]), &mut changes, 0);
        assert_eq!(changes, [Change::PutRun(header("r1"))]);
    }
}
