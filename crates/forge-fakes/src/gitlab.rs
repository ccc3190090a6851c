//! GitLab's REST API for pipelines, jobs and commit statuses (filled in by the adapter's work).
