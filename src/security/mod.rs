//! Authentication and authorisation of inbound messages.

pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod source;
