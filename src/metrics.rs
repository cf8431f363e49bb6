//! Prometheus metrics, served on the admin listener at `GET /metrics`.
//!
//! Labels are component names and fixed reason strings only, so cardinality is bounded by
//! the config: no per-event or per-principal labels.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub component: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkFailureLabels {
    pub sink: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabels {
    pub sink: String,
    pub reason: &'static str,
}

/// Every metric Ferry exports. Cheap to clone (families are shared).
#[derive(Clone)]
pub struct Metrics {
    pub received: Family<SourceLabels, Counter>,
    pub accepted: Family<SourceLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub unrouted: Family<SourceLabels, Counter>,
    pub ack_latency: Family<SourceLabels, Histogram, fn() -> Histogram>,
    pub connections: Family<SourceLabels, Gauge>,
    pub delivered: Family<SinkLabels, Counter>,
    pub delivery_failures: Family<SinkFailureLabels, Counter>,
    pub retried: Family<SinkLabels, Counter>,
    pub dead_lettered: Family<SinkLabels, Counter>,
    pub sink_in_flight: Family<SinkLabels, Gauge>,
    pub sink_queue_capacity: Family<SinkLabels, Gauge>,
    pub websocket_dropped: Family<SinkLabels, Counter>,
    pub websocket_closed: Family<ClosedLabels, Counter>,
    pub connections_closed: Family<ClosedLabels, Counter>,
    pub sink_connections: Family<SinkLabels, Gauge>,
    pub reloads: Family<ResultLabels, Counter>,
    pub config_generation: Gauge,
    pub route_matched: Family<RouteLabels, Counter>,
    pub route_filter_errors: Family<RouteLabels, Counter>,
    pub deduplicated: Family<RouteLabels, Counter>,
    pub dedup_keys: Family<RouteLabels, Gauge>,
    pub circuit_open: Family<SinkLabels, Gauge>,
    pub circuit_rejected: Family<SinkLabels, Counter>,
    pub fail_fast: Family<SinkReasonLabels, Counter>,
    pub connect_failures: Family<SinkLabels, Counter>,
    pub spool_bytes: Family<SinkLabels, Gauge>,
    pub spool_events: Family<SinkLabels, Gauge>,
    pub spooled: Family<SinkLabels, Counter>,
    pub replayed: Family<SinkLabels, Counter>,
    pub spool_quarantined: Family<SinkLabels, Counter>,
    pub mqtt_server: MqttServerMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    pub source: String,
    pub r#type: &'static str,
    pub direction: &'static str,
}

/// The device listener's metrics (`type = "mqtt-server"`).
#[derive(Clone, Default)]
pub struct MqttServerMetrics {
    pub connections: Family<SourceLabels, Gauge>,
    pub sessions: Family<SourceLabels, Gauge>,
    pub packets: Family<PacketLabels, Counter>,
    pub publish_refused: Family<RejectLabels, Counter>,
    pub queued_bytes: Family<SourceLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    /// What a listener counts, for the component `source:<name>` or `sink:<name>`.
    pub fn listener(&self, component: String) -> crate::listener::ListenerStats {
        let closed = self.connections_closed.clone();
        crate::listener::ListenerStats {
            connections: None,
            closed: Some(Arc::new(move |reason| {
                closed
                    .get_or_create(&ClosedLabels {
                        component: component.clone(),
                        reason,
                    })
                    .clone()
            })),
        }
    }

    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            received: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            unrouted: Family::default(),
            ack_latency: Family::new_with_constructor(latency_histogram),
            connections: Family::default(),
            delivered: Family::default(),
            delivery_failures: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            sink_in_flight: Family::default(),
            sink_queue_capacity: Family::default(),
            websocket_dropped: Family::default(),
            websocket_closed: Family::default(),
            connections_closed: Family::default(),
            sink_connections: Family::default(),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            route_matched: Family::default(),
            route_filter_errors: Family::default(),
            deduplicated: Family::default(),
            dedup_keys: Family::default(),
            circuit_open: Family::default(),
            circuit_rejected: Family::default(),
            fail_fast: Family::default(),
            connect_failures: Family::default(),
            spool_bytes: Family::default(),
            spool_events: Family::default(),
            spooled: Family::default(),
            replayed: Family::default(),
            spool_quarantined: Family::default(),
            mqtt_server: MqttServerMetrics::default(),
        };
        let r = registry.sub_registry_with_prefix("ferry");
        r.register(
            "events_received",
            "Events received by a source",
            m.received.clone(),
        );
        r.register(
            "events_accepted",
            "Events acknowledged to their sender",
            m.accepted.clone(),
        );
        r.register(
            "events_rejected",
            "Events refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "events_unrouted",
            "Accepted events that matched no route",
            m.unrouted.clone(),
        );
        r.register(
            "ingress_ack_seconds",
            "Time from receipt to acknowledgement, per source",
            m.ack_latency.clone(),
        );
        r.register(
            "source_connections",
            "Open connections per source",
            m.connections.clone(),
        );
        r.register(
            "events_delivered",
            "Events a sink's target confirmed",
            m.delivered.clone(),
        );
        r.register(
            "delivery_failures",
            "Failed deliveries, by kind",
            m.delivery_failures.clone(),
        );
        r.register(
            "sink_in_flight",
            "Deliveries in progress per sink",
            m.sink_in_flight.clone(),
        );
        r.register(
            "sink_queue_capacity",
            "Capacity of each sink's queue",
            m.sink_queue_capacity.clone(),
        );
        r.register(
            "delivery_retries",
            "Deliveries scheduled for another attempt",
            m.retried.clone(),
        );
        r.register(
            "events_dead_lettered",
            "Events handed to the sink's dead-letter sink",
            m.dead_lettered.clone(),
        );
        r.register(
            "websocket_dropped",
            "Events dropped for slow WebSocket subscribers (drop-oldest)",
            m.websocket_dropped.clone(),
        );
        r.register(
            "websocket_closed",
            "WebSocket connections closed by Ferry or the client, by reason",
            m.websocket_closed.clone(),
        );
        r.register(
            "connections_closed",
            "Connections a listener closed: over max_connections, slow request head, idle",
            m.connections_closed.clone(),
        );
        r.register(
            "sink_connections",
            "Connected subscribers per push sink",
            m.sink_connections.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads, by result",
            m.reloads.clone(),
        );
        r.register(
            "config_generation",
            "The running config generation",
            m.config_generation.clone(),
        );
        r.register(
            "route_matched",
            "Events a route matched",
            m.route_matched.clone(),
        );
        r.register(
            "route_filter_errors",
            "CESQL evaluation errors in a route's filters (counted as no match)",
            m.route_filter_errors.clone(),
        );
        r.register(
            "route_deduplicated",
            "Repeated events a deduplicating route dropped (acknowledged, not delivered again)",
            m.deduplicated.clone(),
        );
        r.register(
            "route_dedup_keys",
            "Keys in a deduplicating route's window",
            m.dedup_keys.clone(),
        );
        r.register(
            "sink_circuit_open",
            "1 while a sink's circuit breaker is open (the sink is marked down)",
            m.circuit_open.clone(),
        );
        r.register(
            "sink_circuit_rejected",
            "Deliveries failed at once because the sink's circuit was open",
            m.circuit_rejected.clone(),
        );
        r.register(
            "sink_fail_fast",
            "Events refused at the door because a sink they go to is known down (its circuit open, or not connected)",
            m.fail_fast.clone(),
        );
        r.register(
            "sink_connect_failures",
            "Failed connection attempts and lost connections of a sink to its target",
            m.connect_failures.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of undelivered events in a sink's spool",
            m.spool_bytes.clone(),
        );
        r.register(
            "spool_events",
            "Undelivered events in a sink's spool",
            m.spool_events.clone(),
        );
        r.register(
            "events_spooled",
            "Events written and synced to a sink's spool (and acknowledged)",
            m.spooled.clone(),
        );
        r.register(
            "events_replayed",
            "Events delivered from a sink's spool and removed from it",
            m.replayed.clone(),
        );
        r.register(
            "spool_quarantined",
            "Corrupt records and refused events a sink's spool moved to its quarantine files",
            m.spool_quarantined.clone(),
        );
        let mqtt = &m.mqtt_server;
        r.register(
            "mqtt_server_connections",
            "Open device connections of an mqtt-server source",
            mqtt.connections.clone(),
        );
        r.register(
            "mqtt_server_sessions",
            "Sessions an mqtt-server source keeps, connected or not",
            mqtt.sessions.clone(),
        );
        r.register(
            "mqtt_server_packets",
            "MQTT packets an mqtt-server source read (in) and wrote (out), by type",
            mqtt.packets.clone(),
        );
        r.register(
            "mqtt_server_publish_refused",
            "Device publishes an mqtt-server source refused, by reason",
            mqtt.publish_refused.clone(),
        );
        r.register(
            "mqtt_server_queued_bytes",
            "Bytes of messages queued for an mqtt-server source's sessions",
            mqtt.queued_bytes.clone(),
        );
        m
    }

    pub fn route(name: &str) -> RouteLabels {
        RouteLabels {
            route: name.to_owned(),
        }
    }

    pub fn source(name: &str) -> SourceLabels {
        SourceLabels {
            source: name.to_owned(),
        }
    }

    pub fn sink(name: &str) -> SinkLabels {
        SinkLabels {
            sink: name.to_owned(),
        }
    }

    /// Counts a closed WebSocket connection of a source or sink.
    pub fn websocket_closed(&self, component: &str, reason: &'static str) {
        self.websocket_closed
            .get_or_create(&ClosedLabels {
                component: component.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn reject(&self, source: &str, reason: &'static str, n: u64) {
        self.rejected
            .get_or_create(&RejectLabels {
                source: source.to_owned(),
                reason,
            })
            .inc_by(n);
    }
}
