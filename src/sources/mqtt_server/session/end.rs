//! The end of a connection: DISCONNECT, the will, what a persistent session keeps.

use super::publish::{confirmed, deliver};
use super::*;

impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    /// Ends the connection: outstanding answers on shutdown, the DISCONNECT (MQTT 5), the
    /// will, and what a persistent session keeps.
    pub(super) async fn finish(&mut self, end: End, session: Session) {
        use p5::DisconnectReasonCode as D;
        if matches!(end, End::Shutdown) {
            // Every publish under way is answered before the connection closes.
            while let Some(answer) = self.pending.next().await {
                if self.answer(answer).is_some() {
                    break;
                }
            }
        }
        let reason = match &end {
            End::Server(code, reason) => Some((*code, reason.clone())),
            End::TakenOver => Some((
                D::SessionTakenOver,
                "another connection took the session over".into(),
            )),
            End::Shutdown => Some((D::ServerShuttingDown, "server shutting down".into())),
            _ => None,
        };
        if let Some((code, reason)) = reason {
            tracing::debug!(client_id = %self.identity.client_id, ?code, %reason, "closing the connection");
            if self.v5() && !matches!(end, End::Lost) {
                let reason_string = self.problem_info.then(|| truncate(&reason));
                self.send(Packet::Disconnect(p5::Disconnect {
                    reason_code: code,
                    // Always with properties: the codec miscounts a reason code alone.
                    properties: Some(p5::DisconnectProperties {
                        session_expiry_interval: None,
                        reason_string,
                        user_properties: Vec::new(),
                        server_reference: None,
                    }),
                }));
            }
        }
        if !matches!(end, End::Lost) {
            let _ = self.flush().await;
        }
        self.shared.stats.closed(end.label());
        let will = self.will.take().filter(|_| end.sends_will());
        self.store(session.holder, will);
        let _ = session.ended.send(true);
    }

    /// Keeps a persistent session's state, hands the will to its delay, and lets go of the
    /// session.
    pub(super) fn store(&mut self, holder: u64, will: Option<p5::LastWill>) {
        let client_id = self.identity.client_id.clone();
        let will_delay = will
            .as_ref()
            .and_then(|w| w.properties.as_ref())
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(self.session_expiry);
        let will_cancel = (will.is_some() && will_delay > 0).then(CancellationToken::new);
        {
            let mut sessions = self.shared.sessions.lock().expect("sessions lock");
            if let Some(entry) = sessions.by_client.get_mut(&client_id) {
                let ours = entry.holder.as_ref().is_some_and(|h| h.id == holder);
                if ours {
                    entry.holder = None;
                }
                if self.session_expiry > 0 {
                    let subscriptions = std::mem::take(&mut *self.subscriptions());
                    entry.stored = Some(Stored {
                        subscriptions,
                        queued: Queued::default(),
                        awaiting_release: std::mem::take(&mut self.awaiting_release),
                        expires: (self.session_expiry != u32::MAX).then(|| {
                            tokio::time::Instant::now()
                                + Duration::from_secs(u64::from(self.session_expiry))
                        }),
                    });
                }
                if ours {
                    entry.will.clone_from(&will_cancel);
                    if self.session_expiry == 0 && will_cancel.is_none() {
                        sessions.by_client.remove(&client_id);
                    }
                }
            }
            self.shared
                .stats
                .sessions
                .set(sessions.by_client.len() as i64);
        }
        if let Some(will) = will {
            self.send_will(will, will_delay, will_cancel);
        }
    }

    /// Routes the will as an event, after its delay unless the device came back.
    pub(super) fn send_will(
        &self,
        will: p5::LastWill,
        delay: u32,
        cancel: Option<CancellationToken>,
    ) {
        let state = Arc::clone(&self.state);
        let identity = self.identity.clone();
        let tracker = state.cx.tracker.clone();
        tracker.spawn(async move {
            if let Some(cancel) = cancel {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    () = cancel.cancelled() => return,
                    () = state.cx.shutdown.cancelled() => return,
                }
            }
            let topic = String::from_utf8_lossy(&will.topic).into_owned();
            let publish = p5::Publish {
                dup: false,
                qos: will.qos,
                retain: will.retain,
                topic: will.topic.clone(),
                pkid: 0,
                payload: will.message.clone(),
                properties: will.properties.map(|w| p5::PublishProperties {
                    payload_format_indicator: w.payload_format_indicator,
                    message_expiry_interval: w.message_expiry_interval,
                    topic_alias: None,
                    response_topic: w.response_topic,
                    correlation_data: w.correlation_data,
                    user_properties: w.user_properties,
                    subscription_identifiers: Vec::new(),
                    content_type: w.content_type,
                }),
            };
            match deliver(&state, &identity, &topic, &publish).await {
                Ok(waiter) => match confirmed(waiter, state.config.ack_timeout_ms).await {
                    Ok(()) => {
                        state.cx.stats.accepted.inc();
                    }
                    Err(r) => tracing::warn!(source = %state.cx.name(), client_id = %identity.client_id, reason = %r.reason, "will not delivered"),
                },
                Err(r) => {
                    state.cx.stats.reject(r.label, 1);
                    tracing::warn!(source = %state.cx.name(), client_id = %identity.client_id, reason = %r.reason, "will refused");
                }
            }
        });
    }
}
