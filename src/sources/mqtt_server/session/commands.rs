//! Commands to the device (the `mqtt-server` sink's): its queue, packet ids, the window of
//! unacknowledged QoS 1 publishes, and their PUBACKs.

use super::*;

impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    /// Publishes a command to the device: QoS 1 under a fresh packet id, answered by the
    /// device's PUBACK; QoS 0 answered once written.
    pub(super) fn push_out(&mut self, o: Outbound) {
        let command = &o.command;
        let (payload, properties) = match self.identity.version {
            Version::V5 => (command.v5_payload.clone(), command.v5_properties.clone()),
            Version::V311 => (command.v311_payload.clone(), None),
        };
        let mut publish = p5::Publish::new(command.topic.as_str(), o.qos, payload, properties);
        if o.qos != QoS::AtMostOnce {
            publish.pkid = self.packet_id();
        }
        let packet = Packet::Publish(publish);
        if self
            .device_max_packet
            .is_some_and(|max| packet.size() > max)
        {
            if let Some(done) = o.done {
                let _ = done.send(Err(format!(
                    "the message is larger than device `{}` takes",
                    self.identity.client_id
                )));
            }
            return;
        }
        let pkid = match &packet {
            Packet::Publish(p) => p.pkid,
            _ => 0,
        };
        self.send(packet);
        if o.qos == QoS::AtMostOnce {
            if let Some(done) = o.done {
                let _ = done.send(Ok(()));
            }
        } else {
            self.out_inflight.insert(pkid, o.done);
        }
    }

    /// The next free packet id for a publish to the device.
    pub(super) fn packet_id(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.out_inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Opens the connection's queue of commands (on its first subscription: a device that
    /// subscribes to nothing costs no queue).
    pub(super) fn open_queue(&mut self) {
        if self.outbound.is_some() {
            return;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(self.state.config.max_queued_messages);
        let mut sessions = self.shared.sessions.lock().expect("sessions lock");
        let holder = sessions
            .by_client
            .get_mut(&self.identity.client_id)
            .and_then(|e| e.holder.as_mut())
            .filter(|h| h.id == self.holder);
        if let Some(h) = holder {
            h.outbound = Some(tx);
            self.outbound = Some(rx);
        }
    }

    /// Sends what a resumed session kept, as the window allows.
    pub(super) fn send_resent(&mut self) {
        while self.out_inflight.len() < self.out_window {
            let Some(o) = self.resend.pop_front() else {
                return;
            };
            self.push_out(o);
        }
    }

    /// The device's PUBACK of a command.
    pub(super) fn command_acknowledged(&mut self, ack: &p5::PubAck) {
        if let Some(Some(done)) = self.out_inflight.remove(&ack.pkid) {
            let result = match ack.reason {
                p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => Ok(()),
                other => Err(format!(
                    "device `{}` answered {other:?}",
                    self.identity.client_id
                )),
            };
            let _ = done.send(result);
        }
    }
}

/// The next command for the device, if the connection has a queue.
pub(super) async fn recv_outbound(
    rx: &mut Option<tokio::sync::mpsc::Receiver<Outbound>>,
) -> Option<Outbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
