//! CloudEvents mqtt binding (in progress).
