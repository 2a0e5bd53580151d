//! Who may do what: the upgrade policy of the WebSocket port (path, browser origin, client
//! token) and the API's bearer token, both compared in constant time.

use crate::config::Config;
use crate::wire::handshake::UpgradeRequest;
use crate::wire::http::{self, HttpError};

/// Decides at the handshake whether a request may become a WebSocket session.
#[derive(Debug, Default)]
pub struct HandshakePolicy {
    pub path: String,
    /// Browser origins allowed to connect (exact `scheme://host[:port]`, case-insensitive). Empty:
    /// any. Requests without an `Origin` header (non-browser clients) are not affected: the
    /// check protects browsers from cross-site use, it does not authenticate.
    pub allowed_origins: Vec<String>,
    /// Required client token, given as `?token=` in the URL (browsers cannot set headers on a
    /// WebSocket; percent-decoded, `+` is a space) or as `Authorization: Bearer` (verbatim).
    pub client_token: Option<String>,
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
    /// Whether a well-formed upgrade request may become a session.
    pub fn check(&self, request: &UpgradeRequest<'_>) -> Result<(), HttpError> {
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
        if let Some(expected) = &self.client_token {
            // A malformed escape is a 400 from the decoder.
            let from_query = match request.query {
                Some(query) => http::query_value(query, "token")?,
                None => None,
            };
            let from_header = request.authorization.and_then(bearer_token);
            let presented = from_query.as_deref().or(from_header).unwrap_or("");
            if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                return refuse(401, "missing or wrong client token");
            }
        }
        Ok(())
    }
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
        policy.check(&request).map_or_else(|e| e.status, |()| 101)
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
