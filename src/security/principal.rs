//! Principals: who sent an event, as authentication established it.

use std::fmt;

use ferry_core::{CloudEvent, ExtensionValue};

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Mtls,
    Jwt,
    Hmac,
    /// A username and password from the source's `auth.passwords` (MQTT devices).
    Password,
    /// The source requires no authentication.
    None,
}

impl Method {
    /// The prefix used in policy principal names (`jwt:partner-a`).
    pub fn prefix(self) -> &'static str {
        match self {
            Method::Mtls => "mtls",
            Method::Jwt => "jwt",
            Method::Hmac => "hmac",
            Method::Password => "user",
            Method::None => "anonymous",
        }
    }

    /// The CloudEvents auth-context `authtype` value.
    pub fn authtype(self) -> &'static str {
        match self {
            Method::Mtls => "service_account",
            Method::Jwt => "user",
            Method::Hmac => "api_key",
            Method::Password => "user",
            Method::None => "unauthenticated",
        }
    }
}

/// An authenticated sender: the method and the identity it vouches for (certificate URI/DNS
/// SAN or CN, JWT `sub`, the source name for an HMAC secret, or a password's username).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub method: Method,
    pub id: String,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            method: Method::None,
            id: String::new(),
        }
    }

    /// Stamps the auth-context extension (`authtype`, `authid`) into the event, replacing
    /// whatever the sender set (including `authclaims`): only Ferry vouches for these. An
    /// anonymous principal removes them and adds nothing.
    pub fn stamp(&self, event: &mut CloudEvent) {
        event.remove_extension("authclaims");
        event.remove_extension("authid");
        event.remove_extension("authtype");
        if self.method == Method::None {
            return;
        }
        let authtype = ExtensionValue::String(self.method.authtype().to_owned());
        let _ = event.set_extension("authtype", authtype);
        if !self.id.is_empty() {
            let _ = event.set_extension("authid", ExtensionValue::String(self.id.clone()));
        }
    }
}

/// `jwt:partner-a`, `mtls:spiffe://…`, `hmac:webhooks`, `user:thermo-7`, `anonymous:`.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.method.prefix(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::AttributeRef;

    #[test]
    fn stamping_replaces_what_the_sender_set() {
        let mut e = CloudEvent::new("1", "/s", "t").unwrap();
        e.set_extension("authid", ExtensionValue::String("admin".into()))
            .unwrap();
        e.set_extension("authtype", ExtensionValue::String("system".into()))
            .unwrap();
        e.set_extension("authclaims", ExtensionValue::String("{}".into()))
            .unwrap();
        Principal {
            method: Method::Jwt,
            id: "partner-a".into(),
        }
        .stamp(&mut e);
        assert_eq!(e.attribute("authid"), Some(AttributeRef::Str("partner-a")));
        assert_eq!(e.attribute("authtype"), Some(AttributeRef::Str("user")));
        assert_eq!(e.attribute("authclaims"), None);
        Principal::anonymous().stamp(&mut e);
        assert_eq!(e.attribute("authid"), None);
        assert_eq!(e.attribute("authtype"), None);
    }
}
