//! SKELETON (issue 24): the sender work fills it in.
