//! Signing of outbound events, so partners can check that an event came from this gateway
//! unchanged.
//!
//! - `standard-webhooks` (HTTP sink): the request carries `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, exactly what a
//!   Standard Webhooks verifier (Ferry's `auth.hmac` among them) checks.
//! - `hmac-sha256` (broker sinks, and the HTTP sink): the event carries the extension
//!   attribute `signature = "v1,<base64 HMAC-SHA256 of the core digest>"`. The core digest is
//!   the one of the CloudEvents verifiability extension: SHA-256 over the concatenated
//!   SHA-256 digests of `id`, `source`, `specversion`, `type`, `datacontenttype`, `dataschema`,
//!   `subject`, `time` (UTC, truncated to seconds, `YYYY-MM-DDTHH:MM:SSZ`) and the data bytes,
//!   in that order; an absent attribute hashes as the empty string. It does not depend on the
//!   protocol or content mode the event travels in.

use crate::key_error::KeyError;
use ::hmac::{Hmac, Mac};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_core::{CloudEvent, ExtensionValue};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::hmac::{event_signing_key, standard_webhooks_key};
use super::secret::Secret;

/// The attribute `hmac-sha256` signatures travel in.
pub const SIGNATURE_ATTRIBUTE: &str = "signature";

/// The `sign` table of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignConfig {
    pub scheme: SignScheme,
    /// `standard-webhooks`: base64 after an optional `whsec_` prefix, as the reference
    /// libraries read it. `hmac-sha256`: `whsec_<base64>` (the base64-decoded key) or raw key
    /// text. Either may be `${ENV}` or `file:<path>`.
    pub secret: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignScheme {
    /// Standard Webhooks request headers (HTTP sink only).
    StandardWebhooks,
    /// The `signature` extension attribute over the core digest.
    HmacSha256,
}

impl SignConfig {
    /// Checks that the secret can be read and decoded. Errors are keyed below `sign`.
    pub fn check(&self) -> Result<(), KeyError> {
        self.signer().map(|_| ())
    }

    /// [`SignConfig::check`] for a broker sink, which can only sign the event itself.
    pub fn check_event_signing(&self) -> Result<(), KeyError> {
        if self.scheme != SignScheme::HmacSha256 {
            return Err(KeyError::at("scheme", "broker sinks sign the event: use scheme = \"hmac-sha256\" (standard-webhooks signs HTTP requests)"));
        }
        self.check()
    }

    /// Reads the secret (from its file, if it is a `file:` reference).
    pub fn signer(&self) -> Result<Signer, KeyError> {
        let secret = self
            .secret
            .resolve(std::path::Path::new("."))
            .map_err(|e| {
                let file = self.secret.file().unwrap_or_default();
                KeyError::at("secret", format!("cannot read {file}: {e}"))
            })?;
        if secret.is_empty() {
            return Err(KeyError::at("secret", "the secret is empty"));
        }
        let key = match self.scheme {
            SignScheme::StandardWebhooks => standard_webhooks_key(&secret),
            SignScheme::HmacSha256 => event_signing_key(&secret),
        }
        .map_err(|e| KeyError::at("secret", e.to_string()))?;
        Ok(Signer {
            scheme: self.scheme,
            key,
        })
    }
}

/// A loaded signing key.
#[derive(Clone)]
pub struct Signer {
    scheme: SignScheme,
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.scheme)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Signer {
    pub fn scheme(&self) -> SignScheme {
        self.scheme
    }

    /// The Standard Webhooks `webhook-signature` value for a request.
    pub fn webhook_signature(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The `signature` attribute value of an event.
    pub fn event_signature(&self, event: &CloudEvent) -> String {
        let mut mac = self.mac();
        mac.update(&core_digest(event));
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// A copy of `event` carrying its signature (any `signature` it had is replaced).
    pub fn sign_event(&self, event: &CloudEvent) -> CloudEvent {
        let mut signed = event.clone();
        signed.remove_extension(SIGNATURE_ATTRIBUTE);
        let value = ExtensionValue::String(self.event_signature(&signed));
        // A `v1,<base64>` string is always a valid attribute value.
        let _ = signed.set_extension(SIGNATURE_ATTRIBUTE, value);
        signed
    }

    /// Whether `signature` (a `signature` attribute value, possibly several space-separated
    /// entries) holds a valid signature of `event`. Constant-time comparison.
    pub fn verify_event(&self, event: &CloudEvent, signature: &str) -> bool {
        let digest = core_digest(event);
        signature
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .any(|expected| {
                let mut mac = self.mac();
                mac.update(&digest);
                mac.verify_slice(&expected).is_ok()
            })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }
}

/// The core digest of the CloudEvents verifiability extension (see the module docs).
pub fn core_digest(event: &CloudEvent) -> [u8; 32] {
    let time = event.time().map(|t| {
        let utc = t.to_offset_datetime().to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second()
        )
    });
    let fields: [&[u8]; 9] = [
        event.id().as_bytes(),
        event.source().as_bytes(),
        event.specversion().as_bytes(),
        event.ty().as_bytes(),
        event.datacontenttype().unwrap_or_default().as_bytes(),
        event.dataschema().unwrap_or_default().as_bytes(),
        event.subject().unwrap_or_default().as_bytes(),
        time.as_deref().unwrap_or_default().as_bytes(),
        event.data().map(|d| d.as_bytes()).unwrap_or_default(),
    ];
    let mut outer = Sha256::new();
    for field in fields {
        outer.update(Sha256::digest(field));
    }
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Data, EventBuilder};

    fn signer(scheme: SignScheme, secret: &str) -> Signer {
        SignConfig {
            scheme,
            secret: Secret::new(secret),
        }
        .signer()
        .unwrap()
    }

    fn event() -> CloudEvent {
        EventBuilder::new()
            .specversion("1.0")
            .id("A234-1234-1234")
            .source("/mycontext")
            .ty("com.example.someevent")
            .subject("s")
            .time("2018-04-05T19:31:00.999+02:00")
            .datacontenttype("application/json")
            .data(Data::json(r#"{"a": 1}"#).unwrap())
            .build()
            .unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn core_digest_follows_the_documented_canonical_form() {
        // Recomputed by hand from the documented rule.
        let fields: [&str; 9] = [
            "A234-1234-1234",
            "/mycontext",
            "1.0",
            "com.example.someevent",
            "application/json",
            "",
            "s",
            "2018-04-05T17:31:00Z",
            r#"{"a": 1}"#,
        ];
        let mut outer = Sha256::new();
        for f in fields {
            outer.update(Sha256::digest(f.as_bytes()));
        }
        let want: [u8; 32] = outer.finalize().into();
        assert_eq!(hex(&core_digest(&event())), hex(&want));
        // The same vector as computed by the Python verifier in docs/security.md.
        assert_eq!(
            hex(&want),
            "5a953083e06691f68d17582d4b8229dfe88ee48cb9973307f801c19451c798df"
        );
        let s = signer(
            SignScheme::HmacSha256,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        assert_eq!(
            s.event_signature(&event()),
            "v1,xfpTc4WdXTT8IgTurL8+z9mEtCVVUgUXKl093HerGxw="
        );
        // The empty-input digests of absent attributes are what make it differ from an event
        // without them.
        let bare =
            CloudEvent::new("A234-1234-1234", "/mycontext", "com.example.someevent").unwrap();
        assert_ne!(core_digest(&bare), core_digest(&event()));
    }

    #[test]
    fn time_is_normalised_to_utc_seconds() {
        let mut a = event();
        let b = EventBuilder::new()
            .specversion("1.0")
            .id("A234-1234-1234")
            .source("/mycontext")
            .ty("com.example.someevent")
            .subject("s")
            .time("2018-04-05T17:31:00Z")
            .datacontenttype("application/json")
            .data(Data::json(r#"{"a": 1}"#).unwrap())
            .build()
            .unwrap();
        assert_eq!(core_digest(&a), core_digest(&b));
        // Extensions are not covered; data bytes are.
        a.set_extension("tenant", ExtensionValue::String("x".into()))
            .unwrap();
        assert_eq!(core_digest(&a), core_digest(&b));
        a.set_data(
            Some("application/json".into()),
            Some(Data::json(r#"{"a":1}"#).unwrap()),
        )
        .unwrap();
        assert_ne!(core_digest(&a), core_digest(&b));
    }

    #[test]
    fn signs_and_verifies_events() {
        let s = signer(
            SignScheme::HmacSha256,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let signed = s.sign_event(&event());
        let Some(ExtensionValue::String(sig)) = signed.extension(SIGNATURE_ATTRIBUTE) else {
            panic!("no signature");
        };
        assert!(sig.starts_with("v1,"));
        assert!(s.verify_event(&signed, sig));
        assert!(s.verify_event(&signed, &format!("v1,AAAA {sig}")));
        let other = signer(SignScheme::HmacSha256, "another secret");
        assert!(!other.verify_event(&signed, sig));
        let tampered =
            CloudEvent::new("A234-1234-1234", "/elsewhere", "com.example.someevent").unwrap();
        assert!(!s.verify_event(&tampered, sig));
        // Re-signing replaces a signature the event already carried.
        let again = s.sign_event(&signed);
        assert_eq!(
            again.extension(SIGNATURE_ATTRIBUTE),
            signed.extension(SIGNATURE_ATTRIBUTE)
        );
    }

    #[test]
    fn webhook_signature_matches_the_verifier() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let s = signer(SignScheme::StandardWebhooks, secret);
        assert_eq!(
            s.webhook_signature("msg_1", 1_700_000_000, b"{}"),
            super::super::hmac::sign_standard_webhooks(secret, "msg_1", 1_700_000_000, b"{}")
        );
    }

    #[test]
    fn bad_secrets_are_config_errors() {
        for secret in ["", "whsec_!!!", "file:/nonexistent/ferry-secret"] {
            let err = SignConfig {
                scheme: SignScheme::HmacSha256,
                secret: Secret::new(secret),
            }
            .check()
            .unwrap_err();
            assert_eq!(err.key, ["secret"]);
        }
        assert!(!format!("{:?}", signer(SignScheme::HmacSha256, "hunter2")).contains("hunter2"));
    }
}
