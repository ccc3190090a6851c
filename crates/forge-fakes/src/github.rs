//! GitHub's REST API for Actions, check runs and commit statuses (filled in by the adapter's work).
