//! The graph rules, as a pure function: given the stages' states, what happens next.
//!
//! - A pending stage whose needs are all finished is decided in one of three ways:
//!   - some need is *unsatisfied* (failed without `ignore`, cancelled, or skipped because its
//!     own upstream failed) → skipped, reason `upstream_failed`;
//!   - every need was skipped (by its `if` or because its needs were skipped) → skipped,
//!     reason `needs_skipped`;
//!   - otherwise its `if` decides: false → skipped (`condition`); a jq error fails the stage;
//!     true → ready to start.
//! - A failure with `on_failure: halt`, or a cancel request, *halts* the run: pending stages
//!   are cancelled and running ones are cancelled through their adapters.
//! - When every stage is finished the run ends: cancelled if someone cancelled it; failed if a
//!   stage failed without `ignore`; cancelled if a stage was cancelled; else succeeded.

use baton_core::{OnFailure, RunStatus, StageStatus, Workflow};

/// Reasons recorded on stages (the `reason` column).
pub(crate) mod reason {
    /// The stage's `if` was false.
    pub(crate) const CONDITION: &str = "condition";
    /// Every stage it needs was skipped.
    pub(crate) const NEEDS_SKIPPED: &str = "needs_skipped";
    /// A stage it needs failed or was cancelled.
    pub(crate) const UPSTREAM_FAILED: &str = "upstream_failed";
    /// Its `if` or a template raised a jq error.
    pub(crate) const EXPRESSION: &str = "expression";
    /// The attempt ran longer than the stage's timeout.
    pub(crate) const TIMED_OUT: &str = "timed_out";
    /// The run was cancelled, or halted by a failure elsewhere.
    pub(crate) const CANCELLED: &str = "cancelled";
    /// A cancel of the external work is under way.
    pub(crate) const CANCELLING: &str = "cancelling";
    /// A timeout's cancel of the external work is under way.
    pub(crate) const TIMING_OUT: &str = "timing_out";
    /// Waiting for the backoff before a retry.
    pub(crate) const RETRYING: &str = "retrying";
    /// The adapter failed or the external work failed.
    pub(crate) const FAILED: &str = "failed";
    /// The external system reported the work cancelled or skipped.
    pub(crate) const EXTERNAL: &str = "external";
}

/// What the planner needs to know of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageView {
    /// Current status.
    pub status: StageStatus,
    /// Current reason.
    pub reason: Option<String>,
    /// A start is already scheduled (the stage is pending with an attempt number).
    pub scheduled: bool,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Skip a pending stage.
    Skip {
        /// Stage index.
        stage: usize,
        /// A [`reason`] constant.
        reason: &'static str,
        /// For people.
        message: String,
    },
    /// Fail a pending stage before it starts (its `if` raised an error).
    Fail {
        /// Stage index.
        stage: usize,
        /// The jq error.
        message: String,
    },
    /// Start the stage's first attempt.
    Start(usize),
    /// Cancel a pending (possibly retry-scheduled) stage.
    CancelPending {
        /// Stage index.
        stage: usize,
        /// For people.
        message: String,
    },
    /// Cancel a running stage through its adapter.
    CancelActive(usize),
    /// End the run.
    Finish {
        /// The final status.
        status: RunStatus,
        /// For people.
        message: Option<String>,
    },
}

fn satisfied(view: &StageView, on_failure: OnFailure) -> bool {
    match view.status {
        StageStatus::Succeeded => true,
        StageStatus::Failed => on_failure == OnFailure::Ignore,
        StageStatus::Skipped => view.reason.as_deref() != Some(reason::UPSTREAM_FAILED),
        _ => false,
    }
}

/// Decides what happens next. `views` is updated as decisions are made, so dependents are
/// decided in the same pass. `condition` evaluates a stage's `if` (true when it has none).
pub(crate) fn plan(
    workflow: &Workflow,
    views: &mut [StageView],
    cancel_requested: bool,
    mut condition: impl FnMut(usize, &[StageView]) -> Result<bool, String>,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let halted_by = || {
        workflow
            .stages
            .iter()
            .zip(views.iter())
            .find_map(|(stage, v)| {
                (v.status == StageStatus::Failed && stage.on_failure == OnFailure::Halt)
                    .then(|| stage.id.clone())
            })
    };
    let mut halt = if cancel_requested {
        Some("the run was cancelled".to_owned())
    } else {
        halted_by().map(|id| format!("stage `{id}` failed"))
    };

    for i in 0..workflow.stages.len() {
        let stage = &workflow.stages[i];
        if views[i].status != StageStatus::Pending {
            continue;
        }
        if let Some(why) = &halt {
            decisions.push(Decision::CancelPending {
                stage: i,
                message: why.clone(),
            });
            views[i].status = StageStatus::Cancelled;
            views[i].reason = Some(reason::CANCELLED.into());
            continue;
        }
        if views[i].scheduled || !stage.needs.iter().all(|&n| views[n].status.is_terminal()) {
            continue;
        }
        let unsatisfied = stage
            .needs
            .iter()
            .find(|&&n| !satisfied(&views[n], workflow.stages[n].on_failure));
        let (status, why) = if let Some(&n) = unsatisfied {
            let need = &workflow.stages[n].id;
            decisions.push(Decision::Skip {
                stage: i,
                reason: reason::UPSTREAM_FAILED,
                message: format!("`{need}` {}", views[n].status),
            });
            (StageStatus::Skipped, Some(reason::UPSTREAM_FAILED))
        } else if !stage.needs.is_empty()
            && stage
                .needs
                .iter()
                .all(|&n| views[n].status == StageStatus::Skipped)
        {
            decisions.push(Decision::Skip {
                stage: i,
                reason: reason::NEEDS_SKIPPED,
                message: "every stage it needs was skipped".into(),
            });
            (StageStatus::Skipped, Some(reason::NEEDS_SKIPPED))
        } else {
            match condition(i, views) {
                Ok(true) => {
                    decisions.push(Decision::Start(i));
                    views[i].scheduled = true;
                    continue;
                }
                Ok(false) => {
                    decisions.push(Decision::Skip {
                        stage: i,
                        reason: reason::CONDITION,
                        message: "its `if` is false".into(),
                    });
                    (StageStatus::Skipped, Some(reason::CONDITION))
                }
                Err(message) => {
                    decisions.push(Decision::Fail { stage: i, message });
                    if stage.on_failure == OnFailure::Halt {
                        halt = Some(format!("stage `{}` failed", stage.id));
                    }
                    (StageStatus::Failed, Some(reason::EXPRESSION))
                }
            }
        };
        views[i].status = status;
        views[i].reason = why.map(Into::into);
    }

    if let Some(why) = &halt {
        // A halt that arose in this pass must also reach stages decided before it.
        for (i, v) in views.iter_mut().enumerate() {
            if v.status == StageStatus::Pending {
                decisions.retain(|d| *d != Decision::Start(i));
                decisions.push(Decision::CancelPending {
                    stage: i,
                    message: why.clone(),
                });
                v.status = StageStatus::Cancelled;
                v.reason = Some(reason::CANCELLED.into());
            } else if v.status.is_active()
                && !matches!(
                    v.reason.as_deref(),
                    Some(reason::CANCELLING | reason::TIMING_OUT)
                )
            {
                decisions.push(Decision::CancelActive(i));
                v.reason = Some(reason::CANCELLING.into());
            }
        }
    }

    if views.iter().all(|v| v.status.is_terminal()) {
        let failed =
            workflow.stages.iter().zip(views.iter()).find(|(s, v)| {
                v.status == StageStatus::Failed && s.on_failure != OnFailure::Ignore
            });
        let cancelled = workflow
            .stages
            .iter()
            .zip(views.iter())
            .find(|(_, v)| v.status == StageStatus::Cancelled);
        let (status, message) = if cancel_requested {
            (RunStatus::Cancelled, Some("cancelled".to_owned()))
        } else if let Some((s, _)) = failed {
            (RunStatus::Failed, Some(format!("stage `{}` failed", s.id)))
        } else if let Some((s, _)) = cancelled {
            (
                RunStatus::Cancelled,
                Some(format!("stage `{}` was cancelled", s.id)),
            )
        } else {
            (RunStatus::Succeeded, None)
        };
        decisions.push(Decision::Finish { status, message });
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{StageDefaults, WorkflowSpec};
    use serde_json::json;

    fn workflow(stages: serde_json::Value) -> Workflow {
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"name": "t", "stages": stages})).unwrap();
        Workflow::compile(spec, StageDefaults::default()).unwrap()
    }

    fn views(wf: &Workflow, states: &[(&str, StageStatus)]) -> Vec<StageView> {
        wf.stages
            .iter()
            .map(|s| {
                let status = states
                    .iter()
                    .find(|(id, _)| *id == s.id)
                    .map_or(StageStatus::Pending, |(_, st)| *st);
                StageView {
                    status,
                    reason: None,
                    scheduled: false,
                }
            })
            .collect()
    }

    fn idx(wf: &Workflow, id: &str) -> usize {
        wf.stage_index(id).unwrap()
    }

    const DIAMOND: &str = r#"{"a": {"uses": "exec"}, "b": {"uses": "exec", "needs": ["a"]},
        "c": {"uses": "exec", "needs": ["a"]}, "d": {"uses": "exec", "needs": ["b", "c"]}}"#;

    #[test]
    fn independent_stages_start_together_and_fan_in_waits() {
        let wf = workflow(serde_json::from_str(DIAMOND).unwrap());
        let mut v = views(&wf, &[]);
        assert_eq!(
            plan(&wf, &mut v, false, |_, _| Ok(true)),
            vec![Decision::Start(idx(&wf, "a"))]
        );
        let mut v = views(&wf, &[("a", StageStatus::Succeeded)]);
        let d = plan(&wf, &mut v, false, |_, _| Ok(true));
        assert_eq!(
            d,
            vec![
                Decision::Start(idx(&wf, "b")),
                Decision::Start(idx(&wf, "c"))
            ]
        );
        let mut v = views(
            &wf,
            &[
                ("a", StageStatus::Succeeded),
                ("b", StageStatus::Succeeded),
                ("c", StageStatus::Running),
            ],
        );
        assert!(
            plan(&wf, &mut v, false, |_, _| Ok(true)).is_empty(),
            "d waits for c"
        );
    }

    #[test]
    fn false_condition_skips_and_skips_propagate_only_when_all_needs_skipped() {
        let wf = workflow(serde_json::from_str(DIAMOND).unwrap());
        let (b, c, d) = (idx(&wf, "b"), idx(&wf, "c"), idx(&wf, "d"));
        let mut v = views(&wf, &[("a", StageStatus::Succeeded)]);
        let decisions = plan(&wf, &mut v, false, |i, _| Ok(i != b));
        assert!(decisions.contains(&Decision::Skip {
            stage: b,
            reason: reason::CONDITION,
            message: "its `if` is false".into()
        }));
        assert!(decisions.contains(&Decision::Start(c)));
        // d needs b (skipped) and c: it runs once c succeeds.
        v[c].status = StageStatus::Succeeded;
        v[c].scheduled = false;
        assert_eq!(
            plan(&wf, &mut v, false, |_, _| Ok(true)),
            vec![Decision::Start(d),]
        );
        // When both are skipped, d is skipped too, and the run succeeds.
        let mut v = views(&wf, &[("a", StageStatus::Succeeded)]);
        let decisions = plan(&wf, &mut v, false, |i, _| Ok(i != b && i != c));
        assert!(decisions.iter().any(|x| matches!(x, Decision::Skip { stage, reason: reason::NEEDS_SKIPPED, .. } if *stage == d)));
        assert_eq!(
            decisions.last(),
            Some(&Decision::Finish {
                status: RunStatus::Succeeded,
                message: None
            })
        );
    }

    #[test]
    fn halt_cancels_pending_and_running_and_fails_the_run() {
        let wf = workflow(serde_json::from_str(DIAMOND).unwrap());
        let (b, c, d) = (idx(&wf, "b"), idx(&wf, "c"), idx(&wf, "d"));
        let mut v = views(
            &wf,
            &[
                ("a", StageStatus::Succeeded),
                ("b", StageStatus::Failed),
                ("c", StageStatus::Running),
            ],
        );
        let decisions = plan(&wf, &mut v, false, |_, _| Ok(true));
        assert!(decisions.contains(&Decision::CancelPending {
            stage: d,
            message: "stage `b` failed".into()
        }));
        assert!(decisions.contains(&Decision::CancelActive(c)));
        // Once c is cancelled, the run fails.
        v[c].status = StageStatus::Cancelled;
        let decisions = plan(&wf, &mut v, false, |_, _| Ok(true));
        assert_eq!(
            decisions,
            vec![Decision::Finish {
                status: RunStatus::Failed,
                message: Some("stage `b` failed".into())
            }]
        );
        let _ = b;
    }

    #[test]
    fn continue_lets_other_branches_finish_then_fails() {
        let wf = workflow(
            json!({"a": {"uses": "exec", "on_failure": "continue"}, "b": {"uses": "exec"},
                                 "c": {"uses": "exec", "needs": ["a"]}}),
        );
        let (b, c) = (idx(&wf, "b"), idx(&wf, "c"));
        let mut v = views(
            &wf,
            &[("a", StageStatus::Failed), ("b", StageStatus::Running)],
        );
        let decisions = plan(&wf, &mut v, false, |_, _| Ok(true));
        assert_eq!(
            decisions,
            vec![Decision::Skip {
                stage: c,
                reason: reason::UPSTREAM_FAILED,
                message: "`a` failed".into()
            }]
        );
        v[b].status = StageStatus::Succeeded;
        let decisions = plan(&wf, &mut v, false, |_, _| Ok(true));
        assert_eq!(
            decisions,
            vec![Decision::Finish {
                status: RunStatus::Failed,
                message: Some("stage `a` failed".into())
            }]
        );
    }

    #[test]
    fn ignore_counts_as_success_for_needs_and_the_run() {
        let wf = workflow(
            json!({"a": {"uses": "exec", "on_failure": "ignore"}, "b": {"uses": "exec", "needs": ["a"]}}),
        );
        let b = idx(&wf, "b");
        let mut v = views(&wf, &[("a", StageStatus::Failed)]);
        assert_eq!(
            plan(&wf, &mut v, false, |_, _| Ok(true)),
            vec![Decision::Start(b)]
        );
        v[b] = StageView {
            status: StageStatus::Succeeded,
            reason: None,
            scheduled: false,
        };
        assert_eq!(
            plan(&wf, &mut v, false, |_, _| Ok(true)),
            vec![Decision::Finish {
                status: RunStatus::Succeeded,
                message: None
            }]
        );
    }

    #[test]
    fn upstream_failure_skips_cascade_past_stages_that_need_them() {
        let wf = workflow(
            json!({"a": {"uses": "exec", "on_failure": "continue"}, "b": {"uses": "exec", "needs": ["a"]},
                                 "c": {"uses": "exec", "needs": ["b"]}}),
        );
        let mut v = views(&wf, &[("a", StageStatus::Failed)]);
        let decisions = plan(&wf, &mut v, false, |_, _| Ok(true));
        let skipped: Vec<_> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Skip { stage, reason, .. } => Some((*stage, *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            skipped,
            [
                (idx(&wf, "b"), reason::UPSTREAM_FAILED),
                (idx(&wf, "c"), reason::UPSTREAM_FAILED)
            ]
        );
        assert_eq!(
            decisions.last(),
            Some(&Decision::Finish {
                status: RunStatus::Failed,
                message: Some("stage `a` failed".into())
            })
        );
    }

    #[test]
    fn condition_errors_fail_the_stage_and_halt() {
        let wf = workflow(json!({"a": {"uses": "exec"}, "b": {"uses": "exec"}}));
        let (a, b) = (idx(&wf, "a"), idx(&wf, "b"));
        let mut v = views(&wf, &[]);
        let decisions = plan(&wf, &mut v, false, |i, _| {
            if i == a {
                Err("jq: boom".into())
            } else {
                Ok(true)
            }
        });
        assert!(decisions.contains(&Decision::Fail {
            stage: a,
            message: "jq: boom".into()
        }));
        assert!(decisions.contains(&Decision::CancelPending {
            stage: b,
            message: "stage `a` failed".into()
        }));
        assert!(!decisions.contains(&Decision::Start(b)));
    }

    #[test]
    fn cancel_request_cancels_everything_and_ends_cancelled() {
        let wf = workflow(serde_json::from_str(DIAMOND).unwrap());
        let mut v = views(&wf, &[("a", StageStatus::Running)]);
        let decisions = plan(&wf, &mut v, true, |_, _| Ok(true));
        assert!(decisions.contains(&Decision::CancelActive(idx(&wf, "a"))));
        assert_eq!(
            decisions
                .iter()
                .filter(|d| matches!(d, Decision::CancelPending { .. }))
                .count(),
            3
        );
        v[idx(&wf, "a")].status = StageStatus::Cancelled;
        assert_eq!(
            plan(&wf, &mut v, true, |_, _| Ok(true)).last(),
            Some(&Decision::Finish {
                status: RunStatus::Cancelled,
                message: Some("cancelled".into())
            })
        );
    }
}
