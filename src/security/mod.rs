//! Authentication and authorisation of inbound messages, and signing of outbound ones.
//!
//! - [`principal`]: who sent a message, and stamping it into the auth-context extension.
//! - [`jwt`], [`hmac`]: bearer-token and webhook-signature verification; [`secret`] keeps
//!   secrets out of logs.
//! - [`source`]: the checks a listening source runs per message (authenticate, rate-limit,
//!   authorise).
//! - [`policy`], [`ratelimit`]: authorisation rules and bounded rate limits.
//! - [`signing`]: signatures on outbound events (Standard Webhooks, the `signature` attribute).

pub mod hmac;
pub mod jwt;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod secret;
pub mod signing;
pub mod source;
