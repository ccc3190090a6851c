//! The timeout step: an attempt that outlived its stage's timeout is marked timing out and
//! handed to a cancel task, which fails it once the work is stopped.

use std::sync::Arc;

use baton_store::{Change, Task, TaskKind, now_millis};

use crate::plan::reason;
use crate::{EngineError, Inner};

impl Inner {
    pub(crate) async fn time_out(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let mut guard = self.lock_task(task).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(&mut guard, task).await;
        };
        let mut changes = vec![Self::done(task)];
        let Some(i) = state.workflow.stage_index(&task.stage_id) else {
            return self.commit(&mut guard, changes, Vec::new()).await;
        };
        let record = &mut state.stages[i];
        if record.attempt == task.attempt
            && record.status.is_active()
            && record.reason.as_deref() != Some(reason::TIMING_OUT)
        {
            record.reason = Some(reason::TIMING_OUT.into());
            record.message = Some(format!(
                "timed out after {}; stopping the work",
                baton_core::HumanDuration(state.workflow.stages[i].timeout)
            ));
            changes.push(Change::PutStage(record.clone()));
            changes.push(self.task(
                &task.run_id,
                &task.stage_id,
                TaskKind::Cancel,
                task.attempt,
                now_millis(),
                true,
            ));
            let event = Self::stage_event(state, i);
            return self.commit(&mut guard, changes, vec![event]).await;
        }
        self.commit(&mut guard, changes, Vec::new()).await
    }
}
