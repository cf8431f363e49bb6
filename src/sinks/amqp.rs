//! `amqp` sink: publishes each event to an exchange (RabbitMQ, AMQP 0-9-1) with publisher
//! confirms. A delivery is confirmed only when the broker acked the publish and did not return
//! it as unroutable (`mandatory`).
//!
//! The sink driver (`driver.rs`) connects with backoff, publishes within the `in_flight`
//! window and reconnects when the channel or connection drops; this file says how to open a
//! confirm-mode channel (declaring the exchange if configured) and how to publish one event.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};

use super::driver::{self, Attempt, Publisher, Refusal};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::AmqpSinkConfig;
use crate::pipeline::Envelope;
use crate::security::signing::{SignConfig, Signer};
use crate::template::{self, Template};

/// How long connecting (TCP + AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every publish needs, shared by the publish tasks.
struct Target {
    name: Arc<str>,
    config: AmqpSinkConfig,
    routing_key: Template,
    mode: ferry_amqp::Mode,
    prefix: ferry_amqp::HeaderPrefix,
    signer: Option<Signer>,
}

pub(super) fn start(
    name: &Arc<str>,
    config: &AmqpSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let routing_key =
        Template::parse(&config.routing_key).map_err(|message| SinkError::Config {
            sink: name.to_string(),
            message: format!("routing_key: {message}"),
        })?;
    let target = Arc::new(Target {
        name: Arc::clone(name),
        config: config.clone(),
        routing_key,
        mode: config.mode,
        prefix: config.header_prefix.binding(),
        signer: config
            .sign
            .as_ref()
            .map(SignConfig::signer)
            .transpose()
            .map_err(|e| SinkError::Config {
                sink: name.to_string(),
                message: e.under(&["sign"]).to_string(),
            })?,
    });
    cx.set_ready(name, false);
    driver::spawn(Amqp(target), rx, stats, config.in_flight, cx);
    Ok(())
}

struct Amqp(Arc<Target>);

impl Publisher for Amqp {
    type Link = Session;
    const KIND: &'static str = "AMQP";

    async fn connect(&self, lost: Option<&Session>) -> Result<Session, String> {
        // A channel closed by the broker (e.g. publishing to a missing exchange) leaves the
        // connection usable: keep it and open a new channel.
        let connection = lost
            .filter(|s| s.connection.status().connected())
            .map(|s| Arc::clone(&s.connection));
        open_session(&self.0, connection)
            .await
            .map_err(|e| e.to_string())
    }

    fn is_open(&self, session: &Session) -> bool {
        session.channel.status().connected() && session.connection.status().connected()
    }

    fn publish(
        &self,
        session: &Arc<Session>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let (target, session) = (Arc::clone(&self.0), Arc::clone(session));
        let event = Arc::clone(&events[0]);
        async move { vec![publish(&target, &session.channel, &event).await] }
    }

    async fn close(&self, session: Arc<Session>) {
        let _ = session.connection.close(200, "shutting down".into()).await;
    }
}

/// An open connection with a confirm-mode channel.
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
}

/// Connects (or reuses a live connection), opens a confirm-mode channel and declares the
/// exchange if configured.
async fn open_session(
    target: &Target,
    connection: Option<Arc<Connection>>,
) -> Result<Session, lapin::Error> {
    let connection = match connection {
        Some(c) => c,
        None => {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("ferry sink {}", target.name).into());
            let tls =
                crate::config::amqp_client_tls(&target.config.url, target.config.tls.as_ref())
                    .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
            Arc::new(connect(&target.config.url, properties, tls).await?)
        }
    };
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    if let Some(d) = &target.config.declare {
        channel
            .exchange_declare(
                target.config.exchange.as_str().into(),
                d.kind(),
                ExchangeDeclareOptions {
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    Ok(Session {
        connection,
        channel,
    })
}

/// Connects within [`CONNECT_TIMEOUT`].
async fn connect(
    url: &str,
    properties: ConnectionProperties,
    tls: lapin::tcp::OwnedTLSConfig,
) -> Result<Connection, lapin::Error> {
    let runtime = lapin::runtime::default_runtime()?;
    let connect = Connection::connect_with_config(url, properties, tls, runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(c) => c,
        Err(_) => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

/// Publishes one event; the broker's answer decides.
async fn publish(target: &Target, channel: &Channel, envelope: &Envelope) -> Attempt {
    let signed = (target.signer.as_ref()).map(|s| s.sign_event(&envelope.event));
    let event = signed.as_ref().unwrap_or(&envelope.event);
    let rendered = target.routing_key.render_address(
        &template::AMQP_ROUTING_KEY,
        target.config.template_values,
        |name| template::event_attribute(event, name),
    );
    let routing_key = match rendered {
        Ok(k) if k.len() <= 255 => k,
        Ok(k) => {
            let message = format!("routing key is {} bytes; AMQP allows 255", k.len());
            return Err(Refusal::permanent(message));
        }
        Err(e) => return Err(Refusal::permanent(format!("routing_key: {e}"))),
    };
    let (mut properties, body) = ferry_amqp::encode(event, target.mode, target.prefix);
    if target.config.persistent {
        properties = properties.with_delivery_mode(2);
    }
    let options = BasicPublishOptions {
        mandatory: target.config.mandatory,
        immediate: false,
    };
    let confirmed = tokio::time::timeout(
        Duration::from_millis(target.config.confirm_timeout_ms),
        async {
            channel
                .basic_publish(
                    target.config.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &body,
                    properties,
                )
                .await?
                .await
        },
    )
    .await;
    let exchange = &target.config.exchange;
    match confirmed {
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(Refusal::permanent(format!(
            "exchange {exchange:?} returned the message with routing key {routing_key:?}: {} {} (no queue is bound for it)",
            returned.reply_code, returned.reply_text
        ))),
        Ok(Ok(Confirmation::Nack(_))) => Err(Refusal::retryable(format!(
            "the broker nacked the publish to exchange {exchange:?}"
        ))),
        Ok(Err(e)) => Err(Refusal::retryable(format!(
            "publish to exchange {exchange:?} failed: {e}"
        ))),
        Err(_) => Err(Refusal::retryable(format!(
            "no publisher confirm from exchange {exchange:?} within {} ms",
            target.config.confirm_timeout_ms
        ))),
    }
}
