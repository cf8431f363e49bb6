//! CONNECT: the first packet, authentication, the session (taken over), CONNACK.

use super::*;

pub(super) enum ConnectError {
    /// Answer with a refusing CONNACK.
    Refuse(Version, p5::ConnectReturnCode, String),
    /// A protocol level Ferry does not speak.
    Unsupported(u8),
    /// Close without an answer.
    Close(String),
}

/// Reads the first packet, which must be a CONNECT of protocol level 4 (3.1.1) or 5.
pub(super) async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(Version, Packet), ConnectError> {
    use p5::ConnectReturnCode as C;
    loop {
        match wire::connect_level(buf, max) {
            Ok(Some(level)) => {
                let version = match level {
                    4 => Version::V311,
                    5 => Version::V5,
                    other => return Err(ConnectError::Unsupported(other)),
                };
                match wire::read(version, buf, max) {
                    Ok(Some(p)) => return Ok((version, p)),
                    Ok(None) => {}
                    Err(ReadError::TooLarge(n)) => {
                        return Err(ConnectError::Refuse(
                            version,
                            C::PacketTooLarge,
                            format!("CONNECT of {n} bytes; the limit is {max}"),
                        ))
                    }
                    Err(ReadError::Malformed(m)) => {
                        return Err(ConnectError::Refuse(version, C::MalformedPacket, m))
                    }
                }
            }
            Ok(None) => {}
            Err(ReadError::TooLarge(n)) => {
                return Err(ConnectError::Close(format!("first packet of {n} bytes")))
            }
            Err(ReadError::Malformed(m)) => return Err(ConnectError::Close(m)),
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Close("closed".into())),
            Ok(_) => {}
        }
    }
}
impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    pub(super) async fn refuse_connect(&mut self, code: p5::ConnectReturnCode, reason: &str) {
        tracing::debug!(peer = %self.identity.peer.addr, client_id = %self.identity.client_id, ?code, reason, "CONNECT refused");
        let properties = self.v5().then(|| p5::ConnAckProperties {
            reason_string: Some(truncate(reason)),
            ..connack_properties()
        });
        self.send(Packet::ConnAck(p5::ConnAck {
            session_present: false,
            code,
            properties,
        }));
        let _ = self.flush().await;
    }

    /// Checks the CONNECT, authenticates, takes the session (over) and answers CONNACK.
    pub(super) async fn open(
        &mut self,
        connect: p5::Connect,
        will: Option<p5::LastWill>,
        login: Option<p5::Login>,
    ) -> Option<Session> {
        use p5::ConnectReturnCode as C;
        let state = Arc::clone(&self.state);
        let config = &state.config;
        let props = connect.properties.clone().unwrap_or_default();
        let mut assigned = None;
        let mut client_id = connect.client_id.clone();
        if client_id.is_empty() {
            // 3.1.1: a zero-length client id needs clean session 1 [MQTT-3.1.3-7, -8].
            if !self.v5() && !connect.clean_start {
                self.refuse_connect(
                    C::ClientIdentifierNotValid,
                    "an empty client id needs clean session",
                )
                .await;
                return None;
            }
            client_id = format!("ferry-{}", uuid::Uuid::now_v7().simple());
            assigned = Some(client_id.clone());
        }
        if client_id.len() > MAX_CLIENT_ID {
            self.refuse_connect(
                C::ClientIdentifierNotValid,
                "client id longer than 256 bytes",
            )
            .await;
            return None;
        }
        self.identity.client_id = client_id.clone();
        if props.authentication_method.is_some() {
            self.refuse_connect(
                C::BadAuthenticationMethod,
                "enhanced authentication is not supported",
            )
            .await;
            return None;
        }
        self.problem_info = props.request_problem_info != Some(0);
        self.device_max_packet = props.max_packet_size.map(|m| m as usize);
        // Authenticate.
        let (username, password) = match login {
            Some(l) => (
                Some(l.username).filter(|u| !u.is_empty()),
                Some(l.password.into_bytes()).filter(|p| !p.is_empty()),
            ),
            None => (None, None),
        };
        let authenticated = match self.state.security.authenticate_connect(
            Some(&self.identity.peer),
            username.as_deref(),
            password.as_deref(),
        ) {
            Ok(a) => a,
            Err(refusal) => {
                let code = match refusal {
                    ConnectRefusal::BadCredentials(_) => C::BadUserNamePassword,
                    ConnectRefusal::NotAuthorized(_) => C::NotAuthorized,
                };
                self.shared.stats.refused("unauthenticated");
                self.refuse_connect(code, refusal.reason()).await;
                return None;
            }
        };
        self.identity.principal = authenticated.principal.clone();
        self.identity.username = username;
        if matches!(
            self.identity.principal.method,
            Method::Jwt | Method::Password
        ) {
            self.password = password;
        }
        self.identity.render(&state);
        // The will's topic must be one the device may publish to.
        if let Some(w) = &will {
            let allowed = std::str::from_utf8(&w.topic)
                .ok()
                .filter(|t| topic::valid_topic(t))
                .map(|t| self.identity.may_publish(&state, t));
            match allowed {
                None => {
                    self.refuse_connect(
                        C::TopicNameInvalid,
                        "the will topic is not a valid topic name",
                    )
                    .await;
                    return None;
                }
                Some(false) => {
                    self.refuse_connect(
                        C::NotAuthorized,
                        "not allowed to publish to the will topic",
                    )
                    .await;
                    return None;
                }
                Some(true) => {}
            }
        }
        // Keep-alive: 0 or more than the maximum becomes the maximum (MQTT 5 devices are
        // told so; 3.1.1 has no way to say it).
        let max_keep_alive = config.keep_alive_max_secs;
        let keep_alive = match connect.keep_alive {
            0 => max_keep_alive,
            k => k.min(max_keep_alive),
        };
        let server_keep_alive =
            (self.v5() && keep_alive != connect.keep_alive).then_some(keep_alive);
        // One and a half times the keep-alive [MQTT-3.1.2-22].
        self.keep_alive = Some(Duration::from_millis(u64::from(keep_alive) * 1500));
        // Session expiry.
        self.connect_expiry = if self.v5() {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        self.session_expiry = self.connect_expiry.min(config.session_expiry_max_secs);
        let expiry_told = (self.v5() && self.session_expiry != self.connect_expiry)
            .then_some(self.session_expiry);
        // Take the session (over).
        let Some((session, resumed)) = self.claim(connect.clean_start).await else {
            self.refuse_connect(C::QuotaExceeded, "too many sessions")
                .await;
            return None;
        };
        self.out_window = usize::from(
            props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(config.receive_maximum),
        )
        .max(1);
        let session_present = match resumed {
            Some(stored) => {
                *self.subscriptions() = stored.subscriptions;
                self.awaiting_release = stored.awaiting_release;
                self.shared.remove_queued(stored.queued.bytes);
                self.resend = stored
                    .queued
                    .messages
                    .into_iter()
                    .map(|command| Outbound {
                        command,
                        qos: QoS::AtLeastOnce,
                        done: None,
                    })
                    .collect();
                true
            }
            None => false,
        };
        self.holder = session.holder;
        if !self.subscriptions().is_empty() {
            self.open_queue();
        }
        self.will = will;
        let properties = self.v5().then(|| p5::ConnAckProperties {
            session_expiry_interval: expiry_told,
            receive_max: Some(config.receive_maximum),
            max_packet_size: Some(config.max_packet_bytes),
            assigned_client_identifier: assigned,
            topic_alias_max: Some(config.topic_alias_maximum),
            server_keep_alive,
            ..connack_properties()
        });
        self.send(Packet::ConnAck(p5::ConnAck {
            session_present,
            code: C::Success,
            properties,
        }));
        tracing::debug!(client_id = %client_id, principal = %self.identity.principal, version = ?self.identity.version, session_present, "device connected");
        Some(Session {
            expires: authenticated.expires,
            ..session
        })
    }

    /// Registers this connection as the holder of its client id's session: a connection
    /// holding it already is told to give it up (takeover) and awaited. Returns the stored
    /// session to resume, if there is one and `clean_start` is false; `None` when the
    /// session limit is reached.
    pub(super) async fn claim(&mut self, clean_start: bool) -> Option<(Session, Option<Stored>)> {
        let client_id = self.identity.client_id.clone();
        let max_sessions = self.state.config.max_sessions;
        let (ended_tx, ended_rx) = tokio::sync::watch::channel(false);
        let take_over = CancellationToken::new();
        let (id, previous) = {
            let mut sessions = self.shared.sessions.lock().expect("sessions lock");
            if !sessions.by_client.contains_key(&client_id)
                && sessions.by_client.len() >= max_sessions
            {
                let mut released = 0;
                sessions.by_client.retain(|_, e| {
                    let keep =
                        e.holder.is_some() || e.stored.as_ref().is_some_and(|s| !s.expired());
                    if !keep {
                        released += e.stored.as_ref().map_or(0, |s| s.queued.bytes);
                    }
                    keep
                });
                self.shared.remove_queued(released);
                if sessions.by_client.len() >= max_sessions {
                    return None;
                }
            }
            sessions.next_connection += 1;
            let id = sessions.next_connection;
            let entry = sessions
                .by_client
                .entry(client_id.clone())
                .or_insert_with(|| SessionEntry {
                    holder: None,
                    stored: None,
                    will: None,
                });
            if let Some(will) = entry.will.take() {
                // The device is back before its will's delay ran out: it is not sent.
                will.cancel();
            }
            let previous = entry.holder.replace(Holder {
                id,
                take_over: take_over.clone(),
                ended: ended_rx,
                outbound: None,
                subscriptions: Arc::clone(&self.subscriptions),
            });
            self.shared
                .stats
                .sessions
                .set(sessions.by_client.len() as i64);
            (id, previous)
        };
        if let Some(previous) = previous {
            previous.take_over.cancel();
            let mut ended = previous.ended;
            let _ = tokio::time::timeout(TAKEOVER_WAIT, ended.wait_for(|e| *e)).await;
        }
        let stored = {
            let mut sessions = self.shared.sessions.lock().expect("sessions lock");
            sessions
                .by_client
                .get_mut(&client_id)
                .and_then(|e| e.stored.take())
        };
        let (resumed, discarded): (Option<Stored>, Option<Stored>) = match stored {
            Some(s) if !clean_start && !s.expired() => (Some(s), None),
            other => (None, other),
        };
        if let Some(d) = discarded {
            self.shared.remove_queued(d.queued.bytes);
        }
        Some((
            Session {
                expires: None,
                holder: id,
                take_over,
                ended: ended_tx,
            },
            resumed,
        ))
    }
}

/// The CONNACK properties Ferry always states: no shared subscriptions, no subscription
/// identifiers.
pub(super) fn connack_properties() -> p5::ConnAckProperties {
    p5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
