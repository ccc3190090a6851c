//! Live progress: the [`Event`]s a step publishes once its commit is stored.

use baton_core::{RunStatus, StageStatus};

use crate::Inner;
use crate::state::RunState;

/// Something that changed, for live progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage changed status or message.
    Stage {
        /// Run id.
        run_id: String,
        /// Stage id.
        stage_id: String,
        /// New status.
        status: StageStatus,
        /// Attempt number.
        attempt: u32,
        /// Current message.
        message: Option<String>,
        /// The adapter instance (`uses`).
        uses: String,
    },
    /// A run changed status.
    Run {
        /// Run id.
        run_id: String,
        /// New status.
        status: RunStatus,
        /// Why.
        message: Option<String>,
    },
}

impl Inner {
    pub(crate) fn stage_event(state: &RunState, i: usize) -> Event {
        let s = &state.stages[i];
        Event::Stage {
            run_id: s.run_id.clone(),
            stage_id: s.stage_id.clone(),
            status: s.status,
            attempt: s.attempt,
            message: s.message.clone(),
            uses: state.workflow.stages[i].uses.clone(),
        }
    }

    pub(crate) fn run_event(state: &RunState) -> Event {
        Event::Run {
            run_id: state.header.id.clone(),
            status: state.header.status,
            message: state.header.message.clone(),
        }
    }
}
