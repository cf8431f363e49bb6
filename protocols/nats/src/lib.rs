//! CloudEvents nats binding (in progress).
