//! Delivery policy of a sink: retries with capped exponential backoff and jitter, then the
//! dead-letter sink.
//!
//! A failed delivery is classified by the sink: retryable (connection errors, timeouts, 5xx,
//! 429, broker nacks) or permanent (other 4xx, unroutable, encoding errors). A retryable
//! failure goes back into the sink's own bounded queue after a backoff, up to `max_attempts`
//! attempts in all. A permanent failure, or the last failed attempt, goes to the
//! `dead_letter` sink when one is configured — with extensions that say why — and that sink's
//! confirmation counts as handled for the inbound acknowledgement. Otherwise the sender gets
//! the failure (5xx, nack, no PUBACK) and retries itself.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{ExtensionValue, FailureKind};
use serde::Deserialize;

use crate::pipeline::{Delivery, Envelope};

/// Extension names on dead-lettered events.
pub mod extensions {
    /// `permanent` or `retries-exhausted`.
    pub const REASON: &str = "deadletterreason";
    /// Integer: delivery attempts made.
    pub const ATTEMPTS: &str = "deadletterattempts";
    /// The last error.
    pub const ERROR: &str = "deadlettererror";
    /// The sink that could not deliver.
    pub const SINK: &str = "deadlettersink";
}

/// The `retry` table of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max")]
    pub max_backoff_ms: u64,
}

fn default_attempts() -> u32 {
    5
}
fn default_initial() -> u64 {
    100
}
fn default_max() -> u64 {
    10_000
}

impl RetryConfig {
    /// The delay before attempt `attempt + 1` (0-based `attempt` just failed).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let mut b = crate::backoff::Backoff::new(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        );
        (0..attempt).for_each(|_| {
            b.next_delay();
        });
        b.next_delay()
    }
}

/// What to do with a failed delivery.
pub enum Decision {
    Retry(Duration),
    DeadLetter(crate::pipeline::PendingDeadLetter),
    Fail,
}

/// Decides the fate of a failed delivery.
pub fn decide(
    retry: Option<&RetryConfig>,
    dead_letter: bool,
    sink: &Arc<str>,
    delivery: &Delivery,
    kind: FailureKind,
    message: &str,
) -> Decision {
    let attempts = delivery.attempt + 1;
    if kind == FailureKind::Retryable {
        if let Some(r) = retry.filter(|r| attempts < r.max_attempts) {
            return Decision::Retry(r.backoff(delivery.attempt));
        }
    }
    if !dead_letter || delivery.dead_lettered {
        return Decision::Fail;
    }
    let reason = if kind == FailureKind::Retryable {
        "retries-exhausted"
    } else {
        "permanent"
    };
    let mut event = delivery.envelope.event.clone();
    let _ = event.set_extension(extensions::REASON, ExtensionValue::String(reason.into()));
    let _ = event.set_extension(
        extensions::ATTEMPTS,
        ExtensionValue::Integer(attempts.min(i32::MAX as u32) as i32),
    );
    let _ = event.set_extension(extensions::ERROR, ExtensionValue::String(sanitize(message)));
    let _ = event.set_extension(extensions::SINK, ExtensionValue::String(sink.to_string()));
    let envelope = Envelope {
        event,
        metadata: delivery.envelope.metadata.clone(),
        routes: None,
    };
    Decision::DeadLetter(Delivery::dead_letter(Arc::new(envelope)))
}

/// Error text as a valid CloudEvents String (no control characters), bounded in length.
fn sanitize(message: &str) -> String {
    message
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect()
}
