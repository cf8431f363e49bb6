//! Ferry: a multi-protocol CloudEvents gateway.
//!
//! # Layout
//!
//! Data flows one way, and acknowledgements flow back along the same path:
//!
//! ```text
//! protocol message ─▶ binding decode ─▶ CloudEvent + TransportMetadata ─▶ router ─▶ sink queues ─▶ binding encode ─▶ protocol message
//!   (sources::*)      (protocols/*)      (pipeline::Envelope)            (router)  (pipeline)      (sinks::*)
//!        ▲                                                                                              │
//!        └────────────── AckWaiter resolves when every forked AckToken is confirmed ◀───────────────────┘
//! ```
//!
//! - [`config`]: the TOML file and its component structs; errors carry file, line and key.
//! - [`router`]: routes and the filter dialect.
//! - [`pipeline`]: envelopes, deliveries, config generations and dispatch.
//! - [`sources`], [`sinks`]: the adapters around the pure bindings in `protocols/`.
//! - [`delivery`], [`spool`]: retries, dead letters and circuit breaking of a sink, and the
//!   durable on-disk log that can stand in front of one.
//! - [`normalize`], [`template`]: building events from messages that are not CloudEvents,
//!   and sink addresses from event attributes.
//! - [`problem`]: HTTP errors as `application/problem+json`.
//! - [`admin`], [`health`], [`metrics`]: the admin server, readiness and Prometheus metrics; [`keyed`]: digests
//!   and token comparisons under a per-process key.
//! - [`topology`]: the sinks and generation built from a config, at start and at reload.
//! - [`gateway`]: starts the components in order and shuts them down gracefully.
//! - [`reload`], [`watch`]: config reloads (validate, then swap) and their file trigger.

pub mod admin;
pub mod backoff;
pub mod certs;
pub mod config;
pub mod delivery;
pub mod file_ref;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod key_error;
pub mod keyed;
pub mod listener;
pub mod log_filter;
pub mod metrics;
pub(crate) mod mqtt_client;
pub mod mqtt_hub;
pub mod normalize;
pub mod pipeline;
pub mod problem;
pub mod process_metrics;
pub mod redacted_url;
pub mod reload;
pub mod router;
pub mod security;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod template;
pub mod tls;
pub mod topic;
pub mod topology;
pub mod trace;
pub mod watch;

pub use config::Config;
pub use gateway::Gateway;
