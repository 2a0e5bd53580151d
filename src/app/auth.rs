//! Who may do what: the upgrade policy of the WebSocket port (path, browser origin, client
//! token), the API's bearer token, both compared in constant time, and which topics need a
//! signed claim ([`SubscribePolicy`], the claims themselves in [`super::claim`]).

use std::borrow::Cow;

use super::claim::{self, Claim};
use super::sha256::HmacSha256;
use crate::config::Config;
use crate::conn::ws::{Grant, TopicAccess};
use crate::wire::handshake::UpgradeRequest;
use crate::wire::http::{self, HttpError};
use crate::wire::message::{ClaimRefusal, RequestError};

/// Decides at the handshake whether a request may become a WebSocket session.
#[derive(Debug, Default)]
pub struct HandshakePolicy {
    pub path: String,
    /// Browser origins allowed to connect (exact `scheme://host[:port]`, case-insensitive). Empty:
    /// any. Requests without an `Origin` header (non-browser clients) are not affected: the
    /// check protects browsers from cross-site use, it does not authenticate.
    pub allowed_origins: Vec<String>,
    /// Required client token, given as `?token=` in the URL (browsers cannot set headers on a
    /// WebSocket; percent-decoded, `+` is a space), as `Authorization: Bearer` (verbatim), or,
    /// when the upgrade presents neither, in the session's first message.
    pub client_token: Option<String>,
}

/// What kind of session an accepted upgrade becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// An ordinary session: no token is required, or the right one came with the upgrade.
    Open,
    /// A token is required and none came with the upgrade: the session's first message must
    /// be `{"cmd":"auth","token":..}`.
    AwaitAuth,
}

impl HandshakePolicy {
    pub fn from_config(config: &Config) -> Self {
        HandshakePolicy {
            path: config.path.clone(),
            allowed_origins: config.allowed_origins.clone(),
            client_token: config.client_token.clone(),
        }
    }
}

impl HandshakePolicy {
    /// Whether a well-formed upgrade request may become a session, and which kind. A token
    /// presented at the upgrade (`?token=`, or an `Authorization: Bearer`; other schemes are
    /// not a client token) must be right; without one the token is awaited in the first
    /// message, which keeps it out of URLs and so out of proxies' access logs.
    pub fn check(&self, request: &UpgradeRequest<'_>) -> Result<Admission, HttpError> {
        let refuse = |status, message| Err(HttpError { status, message });
        if request.path != self.path {
            return refuse(404, "no WebSocket endpoint at this path");
        }
        if !self.allowed_origins.is_empty()
            && let Some(origin) = request.origin
            && !self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
        {
            return refuse(403, "origin not allowed");
        }
        if self.client_token.is_some() {
            // A malformed escape is a 400 from the decoder.
            let from_query = match request.query {
                Some(query) => http::query_value(query, "token")?,
                None => None,
            };
            let from_header = request.authorization.and_then(bearer_token);
            let Some(presented) = from_query.as_deref().or(from_header) else {
                return Ok(Admission::AwaitAuth);
            };
            if !self.token_matches(presented) {
                return refuse(401, "wrong client token");
            }
        }
        Ok(Admission::Open)
    }

    /// Whether `presented` is the client token (no token required: never, there is nothing
    /// to authenticate).
    pub fn token_matches(&self, presented: &str) -> bool {
        self.client_token
            .as_deref()
            .is_some_and(|expected| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
    }
}

/// Decides which topics of a subscribe need a claim, and checks the claims sent with it.
#[derive(Debug)]
pub struct SubscribePolicy {
    /// `None`: every topic is public.
    private: Option<PrivateTopics>,
    /// Claims one subscribe may carry (each costs an HMAC): as many as a connection may hold
    /// topics.
    max_claims: usize,
}

#[derive(Debug)]
struct PrivateTopics {
    prefix: String,
    key: HmacSha256,
}

impl SubscribePolicy {
    pub fn from_config(config: &Config) -> Self {
        let private = match (&config.subscribe_secret, &config.private_prefix) {
            (Some(secret), Some(prefix)) => Some(PrivateTopics {
                prefix: prefix.clone(),
                key: HmacSha256::new(secret.as_bytes()),
            }),
            _ => None,
        };
        SubscribePolicy {
            private,
            max_claims: config.max_topics_per_connection,
        }
    }

    pub fn is_private(&self, topic: &str) -> bool {
        self.private
            .as_ref()
            .is_some_and(|p| topic.starts_with(p.prefix.as_str()))
    }
}

impl TopicAccess for SubscribePolicy {
    fn authorize(
        &self,
        topics: &[Cow<'_, str>],
        claims: &[Cow<'_, str>],
        unix_ms: u64,
    ) -> Result<Vec<Grant>, RequestError> {
        let Some(private) = &self.private else {
            return Ok(Vec::new());
        };
        // Public topics only: the claims are not even looked at.
        if !topics.iter().any(|t| self.is_private(t)) {
            return Ok(Vec::new());
        }
        if claims.len() > self.max_claims {
            return Err(RequestError::TooManyClaims {
                max: self.max_claims,
            });
        }
        // Each claim is verified once, whatever the number of topics it may cover.
        let verified: Vec<Result<Claim, ClaimRefusal>> = claims
            .iter()
            .map(|c| claim::verify(&private.key, c))
            .collect();
        let mut grants = Vec::new();
        for (index, topic) in topics.iter().enumerate() {
            if !self.is_private(topic) {
                continue;
            }
            match cover(topic, &verified, unix_ms) {
                Ok(expires_unix_ms) => grants.push(Grant {
                    topic: index,
                    expires_unix_ms,
                }),
                Err(reason) => {
                    return Err(RequestError::ClaimRefused {
                        topic: topic.to_string(),
                        reason,
                    });
                }
            }
        }
        Ok(grants)
    }
}

/// The latest expiry among the live claims that cover `topic`; or why none does. When several
/// claims fail, the most telling reason wins: an expired claim for this very topic, then a
/// forged claim, then a malformed one (either may have been meant for it), then "for another
/// topic".
fn cover(
    topic: &str,
    verified: &[Result<Claim, ClaimRefusal>],
    unix_ms: u64,
) -> Result<u64, ClaimRefusal> {
    let live = verified
        .iter()
        .flatten()
        .filter(|c| c.scope.covers(topic))
        .map(Claim::expires_unix_ms)
        .filter(|&expiry| expiry > unix_ms)
        .max();
    if let Some(expiry) = live {
        return Ok(expiry);
    }
    let rank = |refusal: &ClaimRefusal| match refusal {
        ClaimRefusal::Expired => 0,
        ClaimRefusal::BadSignature => 1,
        ClaimRefusal::Malformed(_) => 2,
        ClaimRefusal::OtherTopic | ClaimRefusal::Missing => 3,
    };
    verified
        .iter()
        .map(|result| match result {
            Ok(c) if c.scope.covers(topic) => ClaimRefusal::Expired,
            Ok(_) => ClaimRefusal::OtherTopic,
            Err(refusal) => *refusal,
        })
        .min_by_key(rank)
        .map_or(Err(ClaimRefusal::Missing), Err)
}

/// Whether an `Authorization` header value satisfies the required bearer token (no token
/// required: always).
pub fn bearer_matches(authorization: Option<&str>, required: Option<&str>) -> bool {
    let Some(required) = required else {
        return true;
    };
    let presented = authorization.and_then(bearer_token).unwrap_or("");
    constant_time_eq(presented.as_bytes(), required.as_bytes())
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = http::trim_ows(authorization).split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| http::trim_ows(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_secrets() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    /// 101 for an ordinary session, 102 for one awaiting its `auth` message, else the status.
    fn check(token: &str, query: Option<&str>, authorization: Option<&str>) -> u16 {
        let policy = HandshakePolicy {
            path: "/ws".to_owned(),
            client_token: Some(token.to_owned()),
            ..HandshakePolicy::default()
        };
        let request = UpgradeRequest {
            path: "/ws",
            query,
            origin: None,
            authorization,
            key: "dGhlIHNhbXBsZSBub25jZQ==",
        };
        match policy.check(&request) {
            Ok(Admission::Open) => 101,
            Ok(Admission::AwaitAuth) => 102,
            Err(e) => e.status,
        }
    }

    #[test]
    fn without_a_token_at_the_upgrade_the_first_message_must_bring_it() {
        assert_eq!(check("t", None, None), 102);
        assert_eq!(check("t", Some("a=1"), None), 102);
        // Another scheme is not a client token (a browser may send cached Basic credentials).
        assert_eq!(check("t", None, Some("Basic dTpw")), 102);
        // A token presented is checked there: wrong (even empty) is refused at once.
        assert_eq!(check("t", Some("token="), None), 401);
        assert_eq!(check("t", Some("token=u"), None), 401);
        assert_eq!(check("t", None, Some("Bearer u")), 401);
        assert_eq!(check("t", Some("token=t"), None), 101);
        assert_eq!(check("t", None, Some("Bearer t")), 101);
        let open = HandshakePolicy {
            path: "/ws".to_owned(),
            ..HandshakePolicy::default()
        };
        assert!(
            !open.token_matches(""),
            "no token required: nothing to match"
        );
        let policy = HandshakePolicy {
            client_token: Some("t".to_owned()),
            ..open
        };
        assert!(policy.token_matches("t"));
        assert!(!policy.token_matches("T"));
    }

    #[test]
    fn the_query_token_is_percent_decoded() {
        let token = "p%ss+w&rd";
        assert_eq!(check(token, Some("token=p%25ss%2Bw%26rd"), None), 101);
        assert_eq!(check(token, Some("a=1&token=p%25ss%2bw%26rd&b"), None), 101);
        assert_eq!(check(token, Some("token=p%25ss+w%26rd"), None), 401);
        assert_eq!(check(token, Some("token=p%ss+w&rd"), None), 400);
        assert_eq!(check(token, Some("token=%zz"), None), 400);
        assert_eq!(check(token, None, Some("Bearer p%ss+w&rd")), 101);
        assert_eq!(check("a+b", Some("token=a%2Bb"), None), 101);
        assert_eq!(check("a+b", Some("token=a+b"), None), 401);
        assert_eq!(check("a b", Some("token=a+b"), None), 101);
    }

    fn policy(prefix: Option<&str>) -> SubscribePolicy {
        SubscribePolicy::from_config(&Config {
            subscribe_secret: prefix.map(|_| "0123456789abcdef".to_owned()),
            private_prefix: prefix.map(str::to_owned),
            max_topics_per_connection: 4,
            ..Config::default()
        })
    }

    fn claim_for(scope: claim::Scope, expires_unix_secs: u64) -> Cow<'static, str> {
        claim::sign(
            &HmacSha256::new(b"0123456789abcdef"),
            &scope,
            expires_unix_secs,
        )
        .into()
    }

    fn topics(names: &[&'static str]) -> Vec<Cow<'static, str>> {
        names.iter().map(|&n| Cow::Borrowed(n)).collect()
    }

    const NOW_MS: u64 = 1_000_000;

    fn refusal(result: Result<Vec<Grant>, RequestError>) -> ClaimRefusal {
        match result {
            Err(RequestError::ClaimRefused { reason, .. }) => reason,
            other => panic!("expected a refused claim, got {other:?}"),
        }
    }

    #[test]
    fn without_a_prefix_every_topic_is_public() {
        let open = policy(None);
        assert!(!open.is_private("private-x"));
        assert_eq!(
            open.authorize(&topics(&["private-x"]), &[], NOW_MS),
            Ok(vec![])
        );
    }

    #[test]
    fn private_topics_get_grants_and_public_ones_need_none() {
        use claim::Scope;
        let p = policy(Some("private-"));
        let claims = [
            claim_for(Scope::Topic("private-42".into()), 1_100),
            claim_for(Scope::Prefix("private-team/".into()), 1_200),
            claim_for(Scope::Topic("private-42".into()), 1_050),
        ];
        let grants = p.authorize(
            &topics(&["news", "private-42", "private-team/a"]),
            &claims,
            NOW_MS,
        );
        assert_eq!(
            grants,
            Ok(vec![
                Grant {
                    topic: 1,
                    expires_unix_ms: 1_100_000
                },
                Grant {
                    topic: 2,
                    expires_unix_ms: 1_200_000
                },
            ])
        );
        // Public topics only: even garbage claims are not looked at.
        assert_eq!(
            p.authorize(&topics(&["news"]), &["garbage".into()], NOW_MS),
            Ok(vec![])
        );
    }

    #[test]
    fn refusals_say_why() {
        use claim::Scope;
        let p = policy(Some("private-"));
        let one = |claims: &[Cow<'static, str>]| {
            refusal(p.authorize(&topics(&["news", "private-42"]), claims, NOW_MS))
        };
        let expired = claim_for(Scope::Topic("private-42".into()), 1_000);
        let other = claim_for(Scope::Topic("private-43".into()), 2_000);
        // The payload's first character changed: the JSON starts with another byte.
        let forged: Cow<'_, str> = format!("f{}", &other[1..]).into();
        let malformed: Cow<'_, str> = "not a claim".into();
        assert_eq!(one(&[]), ClaimRefusal::Missing);
        assert_eq!(one(std::slice::from_ref(&expired)), ClaimRefusal::Expired);
        assert_eq!(one(std::slice::from_ref(&other)), ClaimRefusal::OtherTopic);
        assert_eq!(
            one(std::slice::from_ref(&forged)),
            ClaimRefusal::BadSignature
        );
        assert!(matches!(
            one(std::slice::from_ref(&malformed)),
            ClaimRefusal::Malformed(_)
        ));
        // The most telling reason among several.
        assert_eq!(
            one(&[other.clone(), malformed.clone(), forged.clone(), expired]),
            ClaimRefusal::Expired
        );
        assert_eq!(
            one(&[other.clone(), malformed.clone(), forged]),
            ClaimRefusal::BadSignature
        );
        assert!(matches!(
            one(&[other, malformed]),
            ClaimRefusal::Malformed(_)
        ));
        let too_many = vec![Cow::Borrowed("x"); 5];
        assert_eq!(
            p.authorize(&topics(&["private-42"]), &too_many, NOW_MS),
            Err(RequestError::TooManyClaims { max: 4 })
        );
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer\tabc"), None);
        assert_eq!(bearer_token("Bearer \u{a0}abc"), Some("\u{a0}abc"));
    }
}
