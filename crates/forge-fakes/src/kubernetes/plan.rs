//! What the simulated controllers and kubelet do: how a workload's rollouts move
//! ([`RolloutPlan`]) and what a container image does when a pod runs it ([`PodInput`] in,
//! [`PodOutcome`] out).

use std::collections::BTreeMap;
use std::time::Duration;

/// How the next rollouts of one workload (Deployment, StatefulSet or DaemonSet) behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPlan {
    pub(super) observed_after: Duration,
    pub(super) step: Duration,
    pub(super) stalls: bool,
    pub(super) image_pull_backoff: bool,
    pub(super) old_pods_terminate_after: Duration,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        Self::completes()
    }
}

impl RolloutPlan {
    /// The controller notices a new generation after 20 ms, one replica moves every 50 ms,
    /// and the rollout completes.
    pub fn completes() -> Self {
        Self {
            observed_after: Duration::from_millis(20),
            step: Duration::from_millis(50),
            stalls: false,
            image_pull_backoff: false,
            old_pods_terminate_after: Duration::ZERO,
        }
    }

    /// The controller notices a new generation this late (`status.observedGeneration`
    /// lags the `metadata.generation` until then).
    pub fn observed_after(mut self, d: Duration) -> Self {
        self.observed_after = d;
        self
    }

    /// One replica moves every `d`.
    pub fn step(mut self, d: Duration) -> Self {
        self.step = d;
        self
    }

    /// New pods never become available: once `spec.progressDeadlineSeconds` passes without
    /// progress, a Deployment's `Progressing` condition turns `False` with reason
    /// `ProgressDeadlineExceeded`.
    pub fn stalls(mut self) -> Self {
        self.stalls = true;
        self
    }

    /// Stalls, and the new pods wait with reason `ImagePullBackOff`.
    pub fn image_pull_backoff(mut self) -> Self {
        self.stalls = true;
        self.image_pull_backoff = true;
        self
    }

    /// After every new replica is available, the last old pod takes `d` to terminate
    /// (`status.replicas` stays above `status.updatedReplicas` meanwhile).
    pub fn old_pods_terminate_after(mut self, d: Duration) -> Self {
        self.old_pods_terminate_after = d;
        self
    }
}

/// What a pod's container starts with: its image, environment, the files of its ConfigMap
/// volumes, command and arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInput {
    /// The container image.
    pub image: String,
    /// The container's `env` (plain values; `valueFrom` a ConfigMap key is resolved).
    pub env: BTreeMap<String, String>,
    /// Files from ConfigMap volumes: the mount path, `/`, the key, to the content.
    pub files: BTreeMap<String, String>,
    /// The container's `command`.
    pub command: Vec<String>,
    /// The container's `args`.
    pub args: Vec<String>,
}

/// How a pod's container ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOutcome {
    /// What it writes to stdout and stderr (served by `pods/{name}/log`).
    pub log: String,
    /// Its exit code: 0 is `Completed` (pod `Succeeded`), anything else `Error` (`Failed`).
    pub exit_code: i32,
    /// What it writes to its `terminationMessagePath`, shown as the terminated state's
    /// `message`.
    pub termination_message: Option<String>,
    /// How long it runs.
    pub runs_for: Duration,
}

impl PodOutcome {
    /// Exits 0 after `runs_for`, having logged `log`.
    pub fn succeeds(log: &str, runs_for: Duration) -> Self {
        Self {
            log: log.to_owned(),
            exit_code: 0,
            termination_message: None,
            runs_for,
        }
    }

    /// Exits `exit_code` after `runs_for`, having logged `log`.
    pub fn fails(log: &str, exit_code: i32, runs_for: Duration) -> Self {
        Self {
            exit_code,
            ..Self::succeeds(log, runs_for)
        }
    }

    /// The same, with `message` written to the termination message file.
    pub fn with_termination_message(mut self, message: &str) -> Self {
        self.termination_message = Some(message.to_owned());
        self
    }
}
