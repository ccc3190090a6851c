//! Which relay messages a delivery makes.
