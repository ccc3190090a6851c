//! PostgreSQL-specific tests: replicas on one schema.
