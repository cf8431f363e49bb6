//! Acknowledgement handles: how a sink's confirmation travels back to the source.
//!
//! A source creates one [`AckToken`] per inbound message (or batch) and keeps the
//! [`AckWaiter`]. The router forks the token once per sink delivery. Each sink resolves its
//! fork with [`AckToken::confirm`] once the target confirmed, or [`AckToken::fail`]. When the
//! last fork is gone the waiter resolves: [`Outcome::Delivered`] only if every fork was
//! confirmed. A fork dropped unresolved (a sink that shut down, a task that panicked) counts
//! as a failure, so the safe default is redelivery, never loss.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::sync::oneshot;

/// Why a delivery failed, as the inbound protocol needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying: connection errors, timeouts, 5xx, broker nacks.
    Retryable,
    /// Retrying will not help: 4xx, unroutable, encoding errors.
    Permanent,
    /// The event is larger than the sink can ever take: permanent, and HTTP says `413`.
    TooLarge,
    /// The sink is full and cannot take the event now.
    Overloaded,
    /// The handle was dropped without an answer (shutdown, crash).
    Abandoned,
}

/// A failed delivery to one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// The sink that failed.
    pub sink: Arc<str>,
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for DeliveryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sink `{}`: {}", self.sink, self.message)
    }
}

/// The final answer for one inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every sink confirmed (or there was none).
    Delivered,
    /// At least one sink did not confirm; the first failure is kept.
    Failed(DeliveryFailure),
}

struct AckState {
    failure: OnceLock<DeliveryFailure>,
    done: Option<oneshot::Sender<Outcome>>,
}

impl Drop for AckState {
    fn drop(&mut self) {
        let outcome = match self.failure.take() {
            Some(f) => Outcome::Failed(f),
            None => Outcome::Delivered,
        };
        if let Some(done) = self.done.take() {
            // The source may have given up waiting; nothing to do then.
            let _ = done.send(outcome);
        }
    }
}

/// One outstanding obligation to confirm a message. See the module docs.
pub struct AckToken {
    state: Arc<AckState>,
    sink: Option<Arc<str>>,
    resolved: bool,
}

/// Resolves when every fork of the token was confirmed, failed or dropped.
pub struct AckWaiter {
    rx: oneshot::Receiver<Outcome>,
}

impl AckToken {
    /// A root token and the waiter that resolves when it and all its forks are done.
    pub fn new() -> (AckToken, AckWaiter) {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AckState {
            failure: OnceLock::new(),
            done: Some(tx),
        });
        (
            AckToken {
                state,
                sink: None,
                resolved: false,
            },
            AckWaiter { rx },
        )
    }

    /// A new obligation on the same message, for delivery to `sink`.
    pub fn fork(&self, sink: Arc<str>) -> AckToken {
        AckToken {
            state: Arc::clone(&self.state),
            sink: Some(sink),
            resolved: false,
        }
    }

    /// The sink this fork belongs to.
    pub fn sink(&self) -> Option<&str> {
        self.sink.as_deref()
    }

    /// The target confirmed the message.
    pub fn confirm(mut self) {
        self.resolved = true;
    }

    /// The delivery failed.
    pub fn fail(mut self, kind: FailureKind, message: impl Into<String>) {
        self.resolved = true;
        let sink = self.sink.clone().unwrap_or_else(|| Arc::from("-"));
        let _ = self.state.failure.set(DeliveryFailure {
            sink,
            kind,
            message: message.into(),
        });
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.resolved {
            let sink = self.sink.clone().unwrap_or_else(|| Arc::from("-"));
            let _ = self.state.failure.set(DeliveryFailure {
                sink,
                kind: FailureKind::Abandoned,
                message: "delivery abandoned before it was confirmed".into(),
            });
        }
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckToken")
            .field("sink", &self.sink)
            .field("resolved", &self.resolved)
            .finish()
    }
}

impl AckWaiter {
    /// Waits for the outcome.
    pub async fn wait(self) -> Outcome {
        self.rx.await.unwrap_or_else(|_| {
            Outcome::Failed(DeliveryFailure {
                sink: Arc::from("-"),
                kind: FailureKind::Abandoned,
                message: "acknowledgement lost".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(w: AckWaiter) -> Outcome {
        let mut rx = w.rx;
        rx.try_recv().expect("outcome ready")
    }

    #[test]
    fn no_forks_is_delivered() {
        let (root, waiter) = AckToken::new();
        root.confirm();
        assert_eq!(now(waiter), Outcome::Delivered);
    }

    #[test]
    fn all_confirmed_is_delivered() {
        let (root, waiter) = AckToken::new();
        let a = root.fork("a".into());
        let b = root.fork("b".into());
        root.confirm();
        a.confirm();
        b.confirm();
        assert_eq!(now(waiter), Outcome::Delivered);
    }

    #[test]
    fn one_failure_fails_the_message() {
        let (root, waiter) = AckToken::new();
        let a = root.fork("a".into());
        let b = root.fork("b".into());
        root.confirm();
        a.confirm();
        b.fail(FailureKind::Retryable, "503");
        match now(waiter) {
            Outcome::Failed(f) => {
                assert_eq!(&*f.sink, "b");
                assert_eq!(f.kind, FailureKind::Retryable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dropped_fork_is_a_failure() {
        let (root, waiter) = AckToken::new();
        let a = root.fork("a".into());
        root.confirm();
        drop(a);
        assert!(matches!(now(waiter), Outcome::Failed(f) if f.kind == FailureKind::Abandoned));
    }

    #[test]
    fn pending_until_last_fork() {
        let (root, waiter) = AckToken::new();
        let a = root.fork("a".into());
        root.confirm();
        let mut rx = waiter.rx;
        assert!(rx.try_recv().is_err());
        a.confirm();
        assert_eq!(rx.try_recv().ok(), Some(Outcome::Delivered));
    }
}
