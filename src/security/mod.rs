//! Authentication and authorisation of inbound messages.

pub mod hmac;
pub mod jwt;
pub mod secret;
