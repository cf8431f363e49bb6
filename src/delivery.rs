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

use crate::key_error::KeyError;
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

/// The `circuit_breaker` table of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that open the circuit; `0` turns the breaker off.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// While open, one delivery goes through as a probe this often.
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            probe_interval_ms: default_probe_interval(),
        }
    }
}

fn default_failures() -> u32 {
    10
}
fn default_probe_interval() -> u64 {
    5_000
}

impl BreakerConfig {
    pub(crate) fn check(&self) -> Result<(), KeyError> {
        if self.probe_interval_ms == 0 {
            return Err(KeyError::at("probe_interval_ms", "must be greater than 0"));
        }
        Ok(())
    }
}

/// What to do with a failed delivery.
pub enum Decision {
    Retry(Duration),
    DeadLetter(crate::pipeline::PendingDeadLetter),
    Fail,
}

/// A failed attempt, as the sink saw it.
pub struct Failure<'a> {
    pub kind: FailureKind,
    pub message: &'a str,
    /// The earliest the next attempt may go: the target's `Retry-After`, or the circuit
    /// breaker's next probe. The delay is at least this, capped by `max_backoff_ms`.
    pub not_before: Option<Duration>,
}

/// Decides the fate of a failed delivery.
pub fn decide(
    retry: Option<&RetryConfig>,
    dead_letter: bool,
    sink: &Arc<str>,
    delivery: &Delivery,
    failure: &Failure<'_>,
) -> Decision {
    let Failure {
        kind,
        message,
        not_before,
    } = *failure;
    let attempts = delivery.attempt + 1;
    if kind == FailureKind::Retryable {
        if let Some(r) = retry.filter(|r| attempts < r.max_attempts) {
            let backoff = r.backoff(delivery.attempt);
            let delay = match not_before {
                Some(at_least) => {
                    backoff.max(at_least.min(Duration::from_millis(r.max_backoff_ms)))
                }
                None => backoff,
            };
            return Decision::Retry(delay);
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
        span: delivery.envelope.span.clone(),
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

/// The circuit breaker of one sink: closed (deliveries go through), open (they fail at once,
/// except one probe per interval), and back to closed on the first success.
///
/// Only retryable failures count: a permanent one (a 400) means the target is up.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    probe_interval: Duration,
    state: std::sync::Mutex<BreakerState>,
    /// Told when the next probe may go, so dispatch can refuse until then.
    health: Option<Arc<crate::pipeline::SinkHealth>>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    /// While open: when the next probe may go.
    open_until: Option<std::time::Instant>,
}

/// What the breaker says about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Deliver it (a normal delivery, or the probe of an open circuit).
    Go,
    /// The circuit is open: fail it without trying; the next probe is this far away.
    Reject(Duration),
}

/// A change of the breaker's state, for readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    /// `None` when the config turns the breaker off.
    pub fn new(config: &BreakerConfig) -> Option<Breaker> {
        (config.failures > 0).then(|| Breaker {
            failures: config.failures,
            probe_interval: Duration::from_millis(config.probe_interval_ms),
            state: std::sync::Mutex::default(),
            health: None,
        })
    }

    /// Keeps `health` told of the next probe time while the circuit is open.
    pub fn reporting_to(mut self, health: Arc<crate::pipeline::SinkHealth>) -> Breaker {
        self.health = Some(health);
        self
    }

    fn report(&self, open_until: Option<std::time::Instant>) {
        if let Some(h) = &self.health {
            h.set_probe_at(open_until);
        }
    }

    /// Whether a delivery may go now. The first delivery after the probe time goes through
    /// and pushes the next probe a whole interval away.
    pub fn admit(&self) -> Admission {
        let Ok(mut s) = self.state.lock() else {
            return Admission::Go;
        };
        let Some(until) = s.open_until else {
            return Admission::Go;
        };
        let now = std::time::Instant::now();
        if now >= until {
            s.open_until = Some(now + self.probe_interval);
            self.report(s.open_until);
            Admission::Go
        } else {
            Admission::Reject(until - now)
        }
    }

    pub fn success(&self) -> Option<Transition> {
        let mut s = self.state.lock().ok()?;
        s.consecutive = 0;
        let closed = s.open_until.take().map(|_| Transition::Closed);
        if closed.is_some() {
            self.report(None);
        }
        closed
    }

    pub fn failure(&self) -> Option<Transition> {
        let mut s = self.state.lock().ok()?;
        s.consecutive = s.consecutive.saturating_add(1);
        if s.consecutive >= self.failures && s.open_until.is_none() {
            s.open_until = Some(std::time::Instant::now() + self.probe_interval);
            self.report(s.open_until);
            return Some(Transition::Opened);
        }
        None
    }
}

/// The delay a `Retry-After` header asks for: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breaker::new(&BreakerConfig {
            failures: 3,
            probe_interval_ms: 50,
        })
        .unwrap();
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(b.admit(), Admission::Go);
        assert_eq!(b.failure(), Some(Transition::Opened));
        assert!(matches!(b.admit(), Admission::Reject(_)));
        #[allow(clippy::disallowed_methods)]
        // synchronous code polling a child process or a clock, off any runtime
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Go, "the probe");
        assert!(
            matches!(b.admit(), Admission::Reject(_)),
            "one probe at a time"
        );
        assert_eq!(b.failure(), None, "still open");
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.admit(), Admission::Go);
        assert!(Breaker::new(&BreakerConfig {
            failures: 0,
            probe_interval_ms: 1
        })
        .is_none());
    }

    #[test]
    fn retry_after_stretches_the_backoff_within_the_cap() {
        let r = RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 10,
            max_backoff_ms: 1_000,
        };
        let (root, _w) = ferry_core::AckToken::new();
        let event = ferry_core::CloudEvent::new("1", "/s", "t").unwrap();
        let d = Delivery::new(
            Arc::new(Envelope::new(event, ferry_core::TransportMetadata::new())),
            root,
        );
        let sink: Arc<str> = "s".into();
        let at = |not_before| Failure {
            kind: FailureKind::Retryable,
            message: "503",
            not_before,
        };
        match decide(
            Some(&r),
            false,
            &sink,
            &d,
            &at(Some(Duration::from_millis(500))),
        ) {
            Decision::Retry(delay) => assert_eq!(delay, Duration::from_millis(500)),
            _ => panic!("retry expected"),
        }
        match decide(
            Some(&r),
            false,
            &sink,
            &d,
            &at(Some(Duration::from_secs(60))),
        ) {
            Decision::Retry(delay) => assert_eq!(delay, Duration::from_secs(1)),
            _ => panic!("retry expected"),
        }
    }
}
