//! Ferry's core: the CloudEvents v1.0 model every binding decodes into and encodes from.
//!
//! - [`event`]: [`CloudEvent`], its typed extensions and data, and [`EventBuilder`], the one
//!   place where attributes are validated.
//! - [`json`]: the JSON event format and its batch form.
//! - [`metadata`]: transport metadata (headers, topics, subjects) that travels beside an event
//!   so routes can match on it.
//! - [`ack`]: acknowledgement handles that sinks resolve and sources await; a dropped handle
//!   means "not delivered".

pub mod ack;
pub mod error;
pub mod event;
pub mod header_value;
pub mod json;
pub mod metadata;
pub mod validate;

pub use ack::{AckToken, AckWaiter, DeliveryFailure, FailureKind, Outcome};
pub use error::{EventError, EventErrorKind};
pub use event::{AttributeRef, CloudEvent, Data, EventBuilder, ExtensionValue, Timestamp};
pub use metadata::TransportMetadata;

/// How a binding lays an event out in a message: attributes in the transport's headers (or
/// properties) and the data as the body, or the whole event in the body in a CloudEvents
/// format. Each binding's docs say where exactly; config reads it as `"binary"` /
/// `"structured"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Attributes in the transport's headers or properties, data in the body.
    #[default]
    Binary,
    /// The whole event in the body, in the JSON format.
    Structured,
}
