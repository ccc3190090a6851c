//! The `kubernetes` adapter.

pub mod config;
pub mod job;
pub mod rollout;
pub mod undo;
