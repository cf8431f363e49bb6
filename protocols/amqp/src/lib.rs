//! CloudEvents amqp binding (in progress).
