//! Subscription claims: what a backend signs to let one client subscribe to private topics,
//! checked here without asking the backend.
//!
//! A claim is `PAYLOAD.SIG`: `PAYLOAD` is base64url (no padding) of a JSON object
//! `{"topic":"private-42","exp":1767225600}` or `{"prefix":"private-team-7/","exp":..}` (exactly
//! one of `topic` and `prefix`, non-empty; `exp` in Unix seconds; other fields are ignored), and
//! `SIG` is base64url of HMAC-SHA256(secret, the ASCII bytes of `PAYLOAD`). The signature is
//! checked, in constant time, before the payload is decoded: nothing a forger wrote is parsed.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::auth::constant_time_eq;
use super::sha256::HmacSha256;
use crate::wire::base64url;
use crate::wire::message::ClaimRefusal;

/// What a claim covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this topic.
    Topic(String),
    /// Every topic that starts with this.
    Prefix(String),
}

impl Scope {
    pub fn covers(&self, topic: &str) -> bool {
        match self {
            Scope::Topic(name) => name == topic,
            Scope::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// An authentic claim (its expiry not yet compared with the clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub scope: Scope,
    pub expires_unix_secs: u64,
}

impl Claim {
    pub fn expires_unix_ms(&self) -> u64 {
        self.expires_unix_secs.saturating_mul(1000)
    }
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
    exp: u64,
}

#[derive(Deserialize)]
struct PayloadIn<'a> {
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prefix: Option<Cow<'a, str>>,
    #[serde(default)]
    exp: Option<u64>,
}

/// Makes a claim, as a backend would (Rust backends embedding the library, and tests).
pub fn sign(key: &HmacSha256, scope: &Scope, expires_unix_secs: u64) -> String {
    let (topic, prefix) = match scope {
        Scope::Topic(t) => (Some(t.as_str()), None),
        Scope::Prefix(p) => (None, Some(p.as_str())),
    };
    let json = serde_json::to_vec(&PayloadOut {
        topic,
        prefix,
        exp: expires_unix_secs,
    })
    // A struct of strings and an integer always serializes.
    .unwrap_or_default();
    sign_payload(key, &json)
}

/// `PAYLOAD.SIG` for the given payload bytes, whatever they are (tests forge odd payloads).
pub fn sign_payload(key: &HmacSha256, payload_json: &[u8]) -> String {
    let payload = base64url::encode(payload_json);
    let signature = base64url::encode(&key.sign(payload.as_bytes()));
    format!("{payload}.{signature}")
}

/// Checks a claim's form and signature, then reads its payload.
pub fn verify(key: &HmacSha256, claim: &str) -> Result<Claim, ClaimRefusal> {
    let malformed = ClaimRefusal::Malformed;
    let Some((payload, signature)) = claim.split_once('.') else {
        return Err(malformed("not PAYLOAD.SIG"));
    };
    let signature =
        base64url::decode(signature).map_err(|_| malformed("the signature is not base64url"))?;
    if signature.len() != 32 {
        return Err(malformed("the signature is not 32 bytes"));
    }
    // A '.' in the payload is no base64url: it fails the signature, or the decoding below.
    if !constant_time_eq(&key.sign(payload.as_bytes()), &signature) {
        return Err(ClaimRefusal::BadSignature);
    }
    let json = base64url::decode(payload).map_err(|_| malformed("the payload is not base64url"))?;
    let fields: PayloadIn<'_> = serde_json::from_slice(&json).map_err(|_| {
        malformed(
            "the payload is not a JSON object with a string topic or prefix and an integer exp",
        )
    })?;
    let scope = match (fields.topic, fields.prefix) {
        (Some(topic), None) if !topic.is_empty() => Scope::Topic(topic.into_owned()),
        (None, Some(prefix)) if !prefix.is_empty() => Scope::Prefix(prefix.into_owned()),
        (Some(_), None) | (None, Some(_)) => return Err(malformed("an empty topic or prefix")),
        _ => return Err(malformed("not exactly one of topic and prefix")),
    };
    let expires_unix_secs = fields.exp.ok_or(malformed("no exp"))?;
    Ok(Claim {
        scope,
        expires_unix_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HmacSha256 {
        HmacSha256::new(b"0123456789abcdef0123")
    }

    #[test]
    fn a_signed_claim_verifies() {
        let scope = Scope::Topic("private-42".into());
        let claim = sign(&key(), &scope, 1_767_225_600);
        let (payload, _) = claim.split_once('.').unwrap();
        assert_eq!(
            base64url::decode(payload).unwrap(),
            br#"{"topic":"private-42","exp":1767225600}"#
        );
        assert_eq!(
            verify(&key(), &claim),
            Ok(Claim {
                scope,
                expires_unix_secs: 1_767_225_600
            })
        );
        let prefix = Scope::Prefix("private-team-7/".into());
        assert_eq!(
            verify(&key(), &sign(&key(), &prefix, 5)).unwrap().scope,
            prefix
        );
    }

    #[test]
    fn matches_a_claim_made_by_hand() {
        // Made with Python's hmac, hashlib and base64 from {"topic":"a","exp":1}.
        let claim = "eyJ0b3BpYyI6ImEiLCJleHAiOjF9.MXyY0UVksAFfMA31obZOMxyJKzIuuPcztPDQVpq-HpU";
        assert_eq!(sign_payload(&key(), br#"{"topic":"a","exp":1}"#), claim);
        assert_eq!(
            verify(&key(), claim),
            Ok(Claim {
                scope: Scope::Topic("a".into()),
                expires_unix_secs: 1
            })
        );
    }

    #[test]
    fn the_example_of_docs_protocol_verifies() {
        let key = HmacSha256::new(b"change-me-to-32-random-bytes!!!!");
        let claim = "eyJ0b3BpYyI6InByaXZhdGUtNDIiLCJleHAiOjE3NjcyMjU2MDB9.Q3edqEnKegRKiXm9tobBH7G3VKbzrbCGP25iyvOBE-I";
        assert_eq!(
            sign(&key, &Scope::Topic("private-42".into()), 1_767_225_600),
            claim
        );
        assert_eq!(
            verify(&key, claim).unwrap().expires_unix_secs,
            1_767_225_600
        );
    }

    #[test]
    fn scopes_cover_their_topics() {
        let topic = Scope::Topic("private-42".into());
        assert!(topic.covers("private-42"));
        assert!(!topic.covers("private-420"));
        let prefix = Scope::Prefix("private-team-7/".into());
        assert!(prefix.covers("private-team-7/chat"));
        assert!(!prefix.covers("private-team-70/chat"));
    }

    #[test]
    fn tampering_is_a_bad_signature() {
        let claim = sign(&key(), &Scope::Topic("private-42".into()), 99);
        let (payload, signature) = claim.split_once('.').unwrap();
        let forged_payload = base64url::encode(br#"{"topic":"private-43","exp":99}"#);
        assert_eq!(
            verify(&key(), &format!("{forged_payload}.{signature}")),
            Err(ClaimRefusal::BadSignature)
        );
        let mut flipped = base64url::decode(signature).unwrap();
        flipped[0] ^= 1;
        let forged_signature = base64url::encode(&flipped);
        assert_eq!(
            verify(&key(), &format!("{payload}.{forged_signature}")),
            Err(ClaimRefusal::BadSignature)
        );
        let other_key = HmacSha256::new(b"another secret of 16+ bytes");
        assert_eq!(verify(&other_key, &claim), Err(ClaimRefusal::BadSignature));
    }

    #[test]
    fn malformed_claims_are_named() {
        let is_malformed =
            |claim: &str| matches!(verify(&key(), claim), Err(ClaimRefusal::Malformed(_)));
        let good = sign(&key(), &Scope::Topic("t".into()), 1);
        let (payload, signature) = good.split_once('.').unwrap();
        assert!(is_malformed(""));
        assert!(is_malformed("no-dot"));
        assert!(is_malformed(&format!("{payload}.{signature}=")));
        assert!(is_malformed(&format!("{payload}.{}", &signature[..20])));
        assert!(is_malformed(&format!("{payload}.{signature}.x")));
        // Authentic payloads that are not claims.
        for json in [
            "not json",
            "[1]",
            r#"{"exp":1}"#,
            r#"{"topic":"a","prefix":"b","exp":1}"#,
            r#"{"topic":"","exp":1}"#,
            r#"{"prefix":"","exp":1}"#,
            r#"{"topic":"a"}"#,
            r#"{"topic":"a","exp":-1}"#,
            r#"{"topic":"a","exp":1.5}"#,
            r#"{"topic":"a","exp":"1"}"#,
            r#"{"topic":7,"exp":1}"#,
        ] {
            assert!(
                is_malformed(&sign_payload(&key(), json.as_bytes())),
                "{json}"
            );
        }
        // Unknown fields are ignored.
        let extra = sign_payload(&key(), br#"{"topic":"a","exp":1,"user":"u7","n":[1]}"#);
        assert!(verify(&key(), &extra).is_ok());
    }
}
