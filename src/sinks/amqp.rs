//! `amqp` sink: publishes each event to an exchange (RabbitMQ, AMQP 0-9-1) with publisher
//! confirms. A delivery is confirmed only when the broker acked the publish and did not return
//! it as unroutable (`mandatory`).
//!
//! One task owns the connection: it connects with backoff (declaring the exchange if
//! configured), hands each delivery to a publish task within the `in_flight` window, and
//! reconnects when the channel or connection drops. While disconnected, deliveries wait in the
//! sink queue.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use ferry_core::FailureKind;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use super::{SinkContext, SinkError, SinkStats};
use crate::backoff::Backoff;
use crate::config::AmqpSinkConfig;
use crate::pipeline::Delivery;
use crate::security::signing::{SignConfig, Signer};
use crate::template::{self, Template};

/// How long connecting (TCP + AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle sink checks its channel, so readiness drops soon after a disconnect.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

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
    config.check().map_err(|(key, message)| SinkError::Config {
        sink: name.to_string(),
        message: format!("{}: {message}", key.join(".")),
    })?;
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
            .map_err(|(key, message)| SinkError::Config {
                sink: name.to_string(),
                message: format!("sign.{key}: {message}"),
            })?,
    });
    cx.set_ready(name, false);
    cx.tracker.spawn(
        run(rx, target, stats, cx.clone()).instrument(tracing::info_span!("sink", sink = %name)),
    );
    Ok(())
}

/// An open connection with a confirm-mode channel.
struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    fn is_open(&self) -> bool {
        self.channel.status().connected() && self.connection.status().connected()
    }
}

async fn run(mut rx: super::SinkQueue, target: Arc<Target>, stats: SinkStats, cx: SinkContext) {
    let permits = Arc::new(Semaphore::new(target.config.in_flight));
    let mut backoff = Backoff::reconnect();
    // A delivery taken from the queue while the channel was down, published after reconnect.
    let mut pending: Option<Delivery> = None;
    let mut connection: Option<Connection> = None;
    'connect: loop {
        let session = match open(&target, connection.take()).await {
            Ok(session) => session,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %target.name, error = %e, retry_in_ms = delay.as_millis() as u64, "AMQP sink cannot connect");
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => continue 'connect,
                        d = rx.recv(), if pending.is_none() => match d {
                            Some(d) => pending = Some(d),
                            // Shutdown while disconnected: unresolved deliveries are not
                            // delivered, so their senders redeliver.
                            None => break 'connect,
                        },
                    }
                }
            }
        };
        backoff.reset();
        tracing::info!(sink = %target.name, exchange = %target.config.exchange, "AMQP sink connected");
        cx.set_ready(&target.name, true);
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            let delivery = match pending.take() {
                Some(d) => d,
                None => tokio::select! {
                    d = rx.recv() => match d {
                        Some(d) => d,
                        None => {
                            finish(&permits, &target, session).await;
                            cx.set_ready(&target.name, false);
                            return;
                        }
                    },
                    _ = health.tick() => {
                        if session.is_open() { continue } else { break }
                    }
                },
            };
            if !session.is_open() {
                pending = Some(delivery);
                break;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break 'connect;
            };
            let (target, stats, channel) =
                (Arc::clone(&target), stats.clone(), session.channel.clone());
            cx.tracker.spawn(async move {
                stats.in_flight.inc();
                publish(&target, &channel, delivery, &stats).await;
                stats.in_flight.dec();
                drop(permit);
            });
        }
        cx.set_ready(&target.name, false);
        tracing::warn!(sink = %target.name, "AMQP sink disconnected; reconnecting");
        // A channel closed by the broker (e.g. publishing to a missing exchange) leaves the
        // connection usable: keep it and open a new channel.
        if session.connection.status().connected() {
            connection = Some(session.connection);
        }
    }
    cx.set_ready(&target.name, false);
}

/// Connects (or reuses a live connection), opens a confirm-mode channel and declares the
/// exchange if configured.
async fn open(target: &Target, connection: Option<Connection>) -> Result<Session, String> {
    open_session(target, connection)
        .await
        .map_err(|e| e.to_string())
}

async fn open_session(
    target: &Target,
    connection: Option<Connection>,
) -> Result<Session, lapin::Error> {
    let connection = match connection {
        Some(c) => c,
        None => {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("ferry sink {}", target.name).into());
            let tls =
                crate::config::amqp_client_tls(&target.config.url, target.config.tls.as_ref())
                    .map_err(|(key, m)| {
                        lapin::Error::from(std::io::Error::other(format!("{}: {m}", key.join("."))))
                    })?;
            connect(&target.config.url, properties, tls).await?
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

/// Publishes one delivery and resolves it from the broker's answer.
async fn publish(target: &Target, channel: &Channel, delivery: Delivery, stats: &SinkStats) {
    let signed = (target.signer.as_ref()).map(|s| s.sign_event(&delivery.envelope.event));
    let event = signed.as_ref().unwrap_or(&delivery.envelope.event);
    let rendered = target.routing_key.render_address(
        &template::AMQP_ROUTING_KEY,
        target.config.template_values,
        |name| template::event_attribute(event, name),
    );
    let routing_key = match rendered {
        Ok(k) if k.len() <= 255 => k,
        Ok(k) => {
            let message = format!("routing key is {} bytes; AMQP allows 255", k.len());
            return stats.fail(delivery, FailureKind::Permanent, message);
        }
        Err(e) => {
            let message = format!("routing_key: {e}");
            return stats.fail(delivery, FailureKind::Permanent, message);
        }
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
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => stats.confirm(delivery),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            let message = format!(
                "exchange {exchange:?} returned the message with routing key {routing_key:?}: {} {} (no queue is bound for it)",
                returned.reply_code, returned.reply_text
            );
            stats.fail(delivery, FailureKind::Permanent, message);
        }
        Ok(Ok(Confirmation::Nack(_))) => stats.fail(
            delivery,
            FailureKind::Retryable,
            format!("the broker nacked the publish to exchange {exchange:?}"),
        ),
        Ok(Err(e)) => stats.fail(
            delivery,
            FailureKind::Retryable,
            format!("publish to exchange {exchange:?} failed: {e}"),
        ),
        Err(_) => stats.fail(
            delivery,
            FailureKind::Retryable,
            format!(
                "no publisher confirm from exchange {exchange:?} within {} ms",
                target.config.confirm_timeout_ms
            ),
        ),
    }
}

/// After the queue closed: waits for in-flight publishes, then closes the connection.
async fn finish(permits: &Semaphore, target: &Target, session: Session) {
    let all = u32::try_from(target.config.in_flight).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    let _ = session.connection.close(200, "shutting down".into()).await;
    tracing::info!(sink = %target.name, "AMQP sink closed");
}
