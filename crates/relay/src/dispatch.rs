//! The dispatcher.
