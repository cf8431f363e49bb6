//! PUBLISH from a device: checks, decoding, routing, and the answer once the sinks confirmed.

use super::*;

/// Why a publish was not accepted, as an MQTT 5 reason code and string.
pub(super) struct Refusal {
    pub(super) code: Code,
    pub(super) reason: String,
    /// Trying again cannot help (3.1.1 devices get a PUBACK and the publish is dropped,
    /// counted; otherwise the connection closes so the device sends it again).
    pub(super) permanent: bool,
    pub(super) label: &'static str,
}

#[derive(Clone, Copy)]
pub(super) enum Code {
    Unspecified,
    ImplementationSpecific,
    NotAuthorized,
    QuotaExceeded,
    PayloadFormatInvalid,
}

impl Refusal {
    pub(super) fn from_problem(p: &Problem) -> Refusal {
        let (code, permanent) = match p.status.as_u16() {
            401 | 403 => (Code::NotAuthorized, true),
            429 => (Code::QuotaExceeded, false),
            400 | 415 | 422 => (Code::PayloadFormatInvalid, true),
            404 => (Code::Unspecified, true),
            413 => (Code::ImplementationSpecific, true),
            _ => (Code::Unspecified, false),
        };
        Refusal {
            code,
            reason: p.detail.clone(),
            permanent,
            label: p.reason(),
        }
    }
}

/// The answer to one QoS 1 or 2 publish, when it is known.
pub(super) struct Answer {
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) result: Result<(), Refusal>,
}
impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    /// The number of QoS 1 and 2 publishes not yet completed, as Receive Maximum counts
    /// them (QoS 2 until PUBCOMP).
    pub(super) fn unanswered(&self) -> usize {
        self.pending.len() + self.awaiting_release.len()
    }

    pub(super) async fn publish(&mut self, p: p5::Publish) -> Option<End> {
        use p5::DisconnectReasonCode as D;
        let topic = match self.resolve_topic(&p) {
            Ok(t) => t,
            Err(end) => return Some(end),
        };
        let Ok(topic) = String::from_utf8(topic.to_vec()) else {
            return Some(End::Server(
                D::TopicNameInvalid,
                "the topic is not UTF-8".into(),
            ));
        };
        if !topic::valid_topic(&topic) {
            return Some(End::Server(
                D::TopicNameInvalid,
                format!("`{topic}` is not a topic name"),
            ));
        }
        if p.qos == QoS::ExactlyOnce {
            if self.awaiting_release.contains(&p.pkid) {
                // Delivered already: answer again, deliver nothing [MQTT-4.3.3].
                self.pending.push_back(
                    std::future::ready(Answer {
                        pkid: p.pkid,
                        qos: p.qos,
                        result: Ok(()),
                    })
                    .boxed(),
                );
                return None;
            }
            if self.delivering.contains(&p.pkid) {
                return None;
            }
        }
        if p.qos != QoS::AtMostOnce
            && self.v5()
            && self.unanswered() >= usize::from(self.state.config.receive_maximum)
        {
            return Some(End::Server(
                D::ReceiveMaximumExceeded,
                format!(
                    "more than {} publishes unacknowledged",
                    self.state.config.receive_maximum
                ),
            ));
        }
        let received = Instant::now();
        let state = Arc::clone(&self.state);
        let delivered = deliver(&state, &self.identity, &topic, &p).await;
        let stats = state.cx.stats.clone();
        let server_stats_source = state.cx.name().to_owned();
        if p.qos == QoS::AtMostOnce {
            match delivered {
                Ok(waiter) => {
                    state.cx.tracker.spawn(async move {
                        if waiter.wait().await == Outcome::Delivered {
                            stats.accepted.inc();
                        }
                    });
                }
                Err(r) => {
                    self.count_refusal(&r);
                    tracing::debug!(source = %server_stats_source, client_id = %self.identity.client_id, topic, reason = %r.reason, "QoS 0 publish refused");
                }
            }
            return None;
        }
        if p.qos == QoS::ExactlyOnce {
            self.delivering.insert(p.pkid);
        }
        let (pkid, qos) = (p.pkid, p.qos);
        let timeout_ms = state.config.ack_timeout_ms;
        let answer = match delivered {
            Err(r) => std::future::ready(Answer {
                pkid,
                qos,
                result: Err(r),
            })
            .boxed(),
            Ok(waiter) => async move {
                let result = confirmed(waiter, timeout_ms).await;
                if result.is_ok() {
                    stats.accepted.inc();
                    stats.ack_latency.observe(received.elapsed().as_secs_f64());
                }
                Answer { pkid, qos, result }
            }
            .boxed(),
        };
        self.pending.push_back(answer);
        None
    }

    /// The topic of a publish, through its Topic Alias (MQTT 5 §3.3.2.3.4).
    pub(super) fn resolve_topic(&mut self, p: &p5::Publish) -> Result<Bytes, End> {
        use p5::DisconnectReasonCode as D;
        let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) else {
            return Ok(p.topic.clone());
        };
        if alias == 0 || alias > self.state.config.topic_alias_maximum {
            return Err(End::Server(
                D::TopicAliasInvalid,
                format!(
                    "topic alias {alias}; the maximum is {}",
                    self.state.config.topic_alias_maximum
                ),
            ));
        }
        if p.topic.is_empty() {
            self.aliases.get(&alias).cloned().ok_or_else(|| {
                End::Server(D::ProtocolError, format!("topic alias {alias} is not set"))
            })
        } else {
            self.aliases.insert(alias, p.topic.clone());
            Ok(p.topic.clone())
        }
    }

    pub(super) fn count_refusal(&self, r: &Refusal) {
        self.shared.stats.refused(r.label);
        self.state.cx.stats.reject(r.label, 1);
    }

    /// Sends the answer of a QoS 1 or 2 publish; a 3.1.1 connection whose publish failed
    /// for now is closed without one, so the device sends it again.
    pub(super) fn answer(&mut self, a: Answer) -> Option<End> {
        if a.qos == QoS::ExactlyOnce {
            self.delivering.remove(&a.pkid);
        }
        let refusal = match a.result {
            Ok(()) => None,
            Err(r) => {
                self.count_refusal(&r);
                tracing::debug!(source = %self.state.cx.name(), client_id = %self.identity.client_id, reason = %r.reason, "publish refused");
                if !self.v5() && !r.permanent {
                    return Some(End::Server(
                        p5::DisconnectReasonCode::UnspecifiedError,
                        r.reason,
                    ));
                }
                Some(r).filter(|_| self.v5())
            }
        };
        let reason_string = refusal
            .as_ref()
            .filter(|_| self.problem_info)
            .map(|r| truncate(&r.reason));
        if a.qos == QoS::ExactlyOnce {
            let mut rec = p5::PubRec::new(
                a.pkid,
                reason_string.map(|reason_string| p5::PubRecProperties {
                    reason_string: Some(reason_string),
                    user_properties: Vec::new(),
                }),
            );
            match &refusal {
                None => {
                    self.awaiting_release.insert(a.pkid);
                }
                Some(r) => rec.reason = pubrec_reason(r.code),
            }
            self.send(Packet::PubRec(rec));
        } else {
            let mut ack = p5::PubAck::new(
                a.pkid,
                reason_string.map(|reason_string| p5::PubAckProperties {
                    reason_string: Some(reason_string),
                    user_properties: Vec::new(),
                }),
            );
            if let Some(r) = &refusal {
                ack.reason = puback_reason(r.code);
            }
            self.send(Packet::PubAck(ack));
        }
        None
    }
}

/// Checks, decodes, authorises and routes one publish; the waiter resolves once every sink
/// confirmed.
pub(super) async fn deliver(
    state: &ServerState,
    identity: &Identity,
    topic: &str,
    p: &p5::Publish,
) -> Result<Waiter, Refusal> {
    if !identity.may_publish(state, topic) {
        return Err(Refusal {
            code: Code::NotAuthorized,
            reason: format!("not allowed to publish to `{topic}`"),
            permanent: true,
            label: "forbidden",
        });
    }
    let properties = p.properties.as_ref();
    let mut metadata = match identity.version {
        Version::V5 => ferry_mqtt::metadata_v5(topic, properties),
        Version::V311 => ferry_mqtt::metadata_v311(topic),
    };
    metadata.push_property("mqtt.client_id", identity.client_id.as_str());
    if let Some(u) = &identity.username {
        metadata.push_property("mqtt.username", u.as_str());
    }
    metadata.push_property(
        "mqtt.qos",
        match p.qos {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        },
    );
    metadata.push_property("mqtt.retain", if p.retain { "true" } else { "false" });
    metadata.push_property("principal", identity.principal.to_string());
    metadata.push_property(
        "peer.ip",
        identity.peer.addr.ip().to_canonical().to_string(),
    );
    let invalid = |reason: String| Refusal {
        code: Code::PayloadFormatInvalid,
        reason,
        permanent: true,
        label: "invalid",
    };
    if properties.and_then(|pr| pr.payload_format_indicator) == Some(1)
        && std::str::from_utf8(&p.payload).is_err()
    {
        return Err(invalid("the payload is marked UTF-8 but is not".into()));
    }
    let decoded = match identity.version {
        Version::V5 => ferry_mqtt::decode_v5(p.payload.clone(), properties),
        Version::V311 => ferry_mqtt::decode_v311(&p.payload),
    };
    let event = match (decoded, &state.normalizer) {
        (Ok(event), _) => event,
        (Err(ferry_mqtt::DecodeError::NotCloudEvent), Some(n)) => {
            let declared = properties
                .and_then(|pr| pr.content_type.as_deref())
                .or(state
                    .config
                    .normalize
                    .as_ref()
                    .and_then(|n| n.datacontenttype.as_deref()));
            let content_type = match declared {
                Some(ct) => Some(ct),
                None if serde_json::from_slice::<serde::de::IgnoredAny>(&p.payload).is_ok() => {
                    Some("application/json")
                }
                None => None,
            };
            n.apply(Raw {
                metadata: &metadata,
                body: p.payload.clone(),
                content_type,
                message_id: None,
            })
            .map_err(|e| invalid(e.to_string()))?
        }
        (Err(e), _) => return Err(invalid(e.to_string())),
    };
    if let Err(wait) =
        state
            .security
            .rate_limit(&identity.principal, Some(identity.peer.addr.ip()), 1)
    {
        return Err(Refusal::from_problem(&Problem::rate_limited(wait)));
    }
    let generation = state.cx.generation.load_full();
    let mut envelopes = vec![Envelope::new(event, metadata)];
    match state.security.authorize(
        &generation.policies,
        &identity.principal,
        envelopes.iter_mut().map(|e| &mut e.event),
    ) {
        Ok(grants) => pipeline::grant_routes(&mut envelopes, grants),
        Err((_, denied)) => {
            return Err(Refusal::from_problem(&Problem::forbidden(0, denied, false)));
        }
    }
    let enqueue = Duration::from_millis(state.config.enqueue_timeout_ms);
    pipeline::ingest_with(
        &generation,
        &state.cx.stats,
        envelopes,
        state.config.unrouted,
        enqueue,
    )
    .await
    .map_err(|e| {
        let unrouted = matches!(e, IngestError::Unrouted { .. });
        let mut r = Refusal::from_problem(&Problem::from_ingest(e, false));
        r.permanent = unrouted;
        r
    })
}

/// Waits for every sink to confirm, up to the ack timeout.
pub(super) async fn confirmed(waiter: Waiter, timeout_ms: u64) -> Result<(), Refusal> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), waiter.wait()).await {
        Ok(Outcome::Delivered) => Ok(()),
        Ok(Outcome::Failed(f)) => {
            let permanent = matches!(f.kind, FailureKind::Permanent | FailureKind::TooLarge);
            Err(Refusal {
                code: if permanent {
                    Code::ImplementationSpecific
                } else {
                    Code::Unspecified
                },
                reason: f.to_string(),
                permanent,
                label: "delivery_failed",
            })
        }
        Err(_) => Err(Refusal {
            code: Code::Unspecified,
            reason: format!("the sinks did not confirm within {timeout_ms} ms"),
            permanent: false,
            label: "timeout",
        }),
    }
}

pub(super) fn puback_reason(code: Code) -> p5::PubAckReason {
    match code {
        Code::Unspecified => p5::PubAckReason::UnspecifiedError,
        Code::ImplementationSpecific => p5::PubAckReason::ImplementationSpecificError,
        Code::NotAuthorized => p5::PubAckReason::NotAuthorized,
        Code::QuotaExceeded => p5::PubAckReason::QuotaExceeded,
        Code::PayloadFormatInvalid => p5::PubAckReason::PayloadFormatInvalid,
    }
}

pub(super) fn pubrec_reason(code: Code) -> p5::PubRecReason {
    match code {
        Code::Unspecified => p5::PubRecReason::UnspecifiedError,
        Code::ImplementationSpecific => p5::PubRecReason::ImplementationSpecificError,
        Code::NotAuthorized => p5::PubRecReason::NotAuthorized,
        Code::QuotaExceeded => p5::PubRecReason::QuotaExceeded,
        Code::PayloadFormatInvalid => p5::PubRecReason::PayloadFormatInvalid,
    }
}
