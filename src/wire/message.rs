//! The JSON messages between clients and the server, without I/O.
//!
//! Client messages are parsed from the text of a WebSocket message; server messages are encoded
//! straight into complete, unmasked WebSocket frames (`Bytes`, via [`super::frame`]), so that one
//! push is serialized and framed once and the same bytes are shared by every subscriber's queue.
//!
//! Client → server (unknown fields are ignored, so the seed's `{"cmd":"ping","data":null}` works):
//! - `{"topics":[..]}` (the seed's subscribe; accepted at any time to add topics)
//! - `{"cmd":"subscribe","topics":[..]}`, `{"cmd":"unsubscribe","topics":[..]}`; a subscribe may
//!   carry `"claims":[..]`, the signed grants its private topics need (opaque strings here),
//!   `"since":{"<topic>":{"offset":N,"epoch":"E"}}` (resume after a position) and `"recent":K`
//!   (replay the last K held messages of the other topics)
//! - `{"cmd":"ping"}` (answered with `{"cmd":"pong"}`), `{"cmd":"pong"}` (ignored, a sign of life)
//! - `{"cmd":"auth","token":"T"}`: the client token, as the first message of a session that
//!   presented none at the upgrade (answered with `{"cmd":"authenticated"}`)
//!
//! Server → client: `push`, `pong`, `subscribed`, `unsubscribed`, `continuity_lost`,
//! `authenticated`, `error`
//! (see docs/PROTOCOL.md).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::frame::{self, Opcode, Shared};

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    Subscribe {
        topics: Vec<Cow<'a, str>>,
        /// Subscription claims, unverified (empty when the client sent none).
        claims: Vec<Cow<'a, str>>,
        /// `since`: per topic, the last position the client has seen (empty when none).
        since: Vec<(Cow<'a, str>, Resume<'a>)>,
        /// `recent`: replay this many held messages of the topics without a `since`.
        recent: Option<u64>,
    },
    Unsubscribe(Vec<Cow<'a, str>>),
    Ping,
    /// A `pong` (some clients answer our pongs): nothing to do beyond counting as a sign of life.
    Pong,
    /// The client token, sent in the first message instead of the upgrade request's URL.
    Auth {
        token: Cow<'a, str>,
    },
}

/// A position a client resumes after: `since.<topic>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Resume<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// A client request the server cannot act on. Recoverable: answered with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    InvalidJson(String),
    UnknownCommand(String),
    MissingTopics,
    EmptyTopicList,
    InvalidTopic {
        topic: String,
        reason: &'static str,
    },
    TooManyTopics {
        max: usize,
    },
    /// More claims in one subscribe than a connection may hold topics.
    TooManyClaims {
        max: usize,
    },
    /// A private topic of a subscribe has no valid claim among those sent with it.
    ClaimRefused {
        topic: String,
        reason: ClaimRefusal,
    },
    /// An `auth` without a string `token`.
    MissingToken,
    /// An `auth` on a session that awaits none: authenticated already (by an earlier `auth` or
    /// at the upgrade), or on a server that requires no client token.
    UnexpectedAuth,
}

/// Why a private topic's subscription was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// The subscribe carried no claims at all.
    Missing,
    /// A claim is not `PAYLOAD.SIG` of base64url, or its (authentic) payload is not a JSON
    /// object with a string `topic` or `prefix` and an integer `exp`; the detail says which.
    Malformed(&'static str),
    /// A claim's signature does not match its payload: tampered, or signed with another secret.
    BadSignature,
    /// The claim for this topic has expired.
    Expired,
    /// The claims are authentic but for other topics.
    OtherTopic,
}

impl ClaimRefusal {
    /// The `reason` field of the error message, for programs.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_claim",
            Self::Malformed(_) => "malformed_claim",
            Self::BadSignature => "bad_signature",
            Self::Expired => "claim_expired",
            Self::OtherTopic => "wrong_topic",
        }
    }
}

impl fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing claim"),
            Self::Malformed(detail) => write!(f, "malformed claim ({detail})"),
            Self::BadSignature => f.write_str("bad claim signature"),
            Self::Expired => f.write_str("claim expired"),
            Self::OtherTopic => f.write_str("claim is for another topic"),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            Self::UnknownCommand(cmd) => write!(f, "unknown command: {cmd}"),
            Self::MissingTopics => f.write_str("missing \"topics\" array"),
            Self::EmptyTopicList => f.write_str("\"topics\" is empty"),
            Self::InvalidTopic { topic, reason } => write!(f, "invalid topic {topic:?}: {reason}"),
            Self::TooManyTopics { max } => {
                write!(f, "too many topics (at most {max} per connection)")
            }
            Self::TooManyClaims { max } => write!(f, "too many claims (at most {max})"),
            Self::ClaimRefused { topic, reason } => write!(f, "topic {topic:?}: {reason}"),
            Self::MissingToken => f.write_str("missing \"token\" string"),
            Self::UnexpectedAuth => f.write_str(
                "no authentication expected: already authenticated, or no client token required",
            ),
        }
    }
}

impl RequestError {
    /// What went wrong without what the client sent (no topic names, commands or claims):
    /// for log lines above trace.
    pub fn kind(&self) -> Cow<'static, str> {
        match self {
            Self::InvalidJson(_) => "invalid JSON".into(),
            Self::UnknownCommand(_) => "unknown command".into(),
            Self::InvalidTopic { reason, .. } => format!("invalid topic: {reason}").into(),
            Self::ClaimRefused { reason, .. } => format!("claim refused: {}", reason.code()).into(),
            other => other.to_string().into(),
        }
    }
}

impl std::error::Error for RequestError {}

#[derive(Deserialize)]
struct RawClientMessage<'a> {
    #[serde(borrow, default)]
    cmd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topics: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    claims: Option<Vec<Cow<'a, str>>>,
    /// A map keeps the last of repeated keys; shapes other than offset + epoch are refused.
    #[serde(borrow, default)]
    since: Option<BTreeMap<Cow<'a, str>, Resume<'a>>>,
    #[serde(default)]
    recent: Option<u64>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// Parses the text of one client message.
pub fn parse_client_message(text: &str) -> Result<ClientMessage<'_>, RequestError> {
    let raw: RawClientMessage<'_> =
        serde_json::from_str(text).map_err(|e| RequestError::InvalidJson(short_json_error(&e)))?;
    match raw.cmd.as_deref() {
        // The seed's client sends its subscription without a command.
        None | Some("subscribe") | Some("sub") => Ok(ClientMessage::Subscribe {
            topics: require_topics(raw.topics)?,
            claims: raw.claims.unwrap_or_default(),
            since: raw
                .since
                .map(|s| s.into_iter().collect())
                .unwrap_or_default(),
            recent: raw.recent,
        }),
        Some("unsubscribe") | Some("unsub") => {
            require_topics(raw.topics).map(ClientMessage::Unsubscribe)
        }
        Some("ping") => Ok(ClientMessage::Ping),
        Some("pong") => Ok(ClientMessage::Pong),
        Some("auth") => raw
            .token
            .map(|token| ClientMessage::Auth { token })
            .ok_or(RequestError::MissingToken),
        Some(other) => Err(RequestError::UnknownCommand(truncate(other, 64).to_owned())),
    }
}

fn require_topics(topics: Option<Vec<Cow<'_, str>>>) -> Result<Vec<Cow<'_, str>>, RequestError> {
    match topics {
        None => Err(RequestError::MissingTopics),
        Some(t) if t.is_empty() => Err(RequestError::EmptyTopicList),
        Some(t) => Ok(t),
    }
}

fn short_json_error(e: &serde_json::Error) -> String {
    describe_json_error(e, r#"an object like {"cmd":"subscribe","topics":[..]}"#)
}

/// A JSON error for the peer that sent the JSON: where the syntax broke, or, for valid JSON of
/// the wrong shape, what was `expected` (serde's own text names our internal types).
pub fn describe_json_error(e: &serde_json::Error, expected: &str) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => format!("expected {expected}"),
        // serde_json's syntax messages never echo the input back.
        Category::Syntax | Category::Eof | Category::Io => e.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Limits on topic names.
#[derive(Clone, Copy, Debug)]
pub struct TopicRules {
    pub max_len: usize,
}

impl Default for TopicRules {
    fn default() -> Self {
        TopicRules { max_len: 128 }
    }
}

/// Checks a topic name: 1..=max_len bytes of `A-Z a-z 0-9 - _ . : / @`.
///
/// The character set keeps names printable, safe in logs and URLs, and cheap to compare.
pub fn validate_topic(topic: &str, rules: TopicRules) -> Result<(), RequestError> {
    let invalid = |reason| {
        Err(RequestError::InvalidTopic {
            topic: truncate(topic, 64).to_owned(),
            reason,
        })
    };
    if topic.is_empty() {
        return invalid("empty");
    }
    if topic.len() > rules.max_len {
        return invalid("too long");
    }
    if !topic.bytes().all(is_topic_byte) {
        return invalid("allowed characters are A-Z a-z 0-9 - _ . : / @");
    }
    Ok(())
}

pub fn is_topic_byte(b: u8) -> bool {
    TOPIC_BYTES[usize::from(b)]
}

/// A table, not a chain of comparisons: every publish checks every byte of its topic.
const TOPIC_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'@');
        b += 1;
    }
    table
};

/// Encodes `{"cmd":"push","topic":<topic>,"data":<data>}` as one text frame, to be shared.
///
/// `data_json` must already be valid JSON (the API validates it); it is copied verbatim, once.
pub fn encode_push(topic: &str, data_json: &str) -> Shared {
    encode_push_frame(topic, data_json, None)
}

/// Encodes `{"cmd":"push","topic":..,"data":..,"offset":N,"epoch":".."}` (history on): the
/// seed's three fields first, so clients that know only those read it unchanged.
pub fn encode_push_at(topic: &str, data_json: &str, offset: u64, epoch: &str) -> Shared {
    encode_push_frame(topic, data_json, Some((offset, epoch)))
}

fn encode_push_frame(topic: &str, data_json: &str, position: Option<(u64, &str)>) -> Shared {
    const HEAD: &[u8] = br#"{"cmd":"push","topic":"#;
    const DATA: &[u8] = br#","data":"#;
    const OFFSET: &[u8] = br#","offset":"#;
    const EPOCH: &[u8] = br#","epoch":"#;
    let mut digits = [0u8; 20];
    let position = position.map(|(offset, epoch)| (decimal(offset, &mut digits), epoch));
    let position_len = position.map_or(0, |(offset, epoch)| {
        OFFSET.len() + offset.len() + EPOCH.len() + json_string_len(epoch)
    });
    let payload_len =
        HEAD.len() + json_string_len(topic) + DATA.len() + data_json.len() + position_len + 1;
    let frame_len = frame::header_len(payload_len, false) + payload_len;
    frame::shared(frame_len, |mut buf| {
        frame::put_header(&mut buf, Opcode::Text, payload_len, None);
        buf.put_slice(HEAD);
        put_json_string(&mut buf, topic);
        buf.put_slice(DATA);
        buf.put_slice(data_json.as_bytes());
        if let Some((offset, epoch)) = position {
            buf.put_slice(OFFSET);
            buf.put_slice(offset);
            buf.put_slice(EPOCH);
            put_json_string(&mut buf, epoch);
        }
        buf.put_u8(b'}');
        debug_assert!(buf.is_empty());
    })
}

/// `n` in decimal, written at the end of `digits` (no allocation per publish).
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[start..];
        }
    }
}

/// The `data` of a push frame this module encoded, as its JSON text (for `GET /history`).
pub fn push_data(push_frame: &[u8]) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Push<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let push: Push<'_> = serde_json::from_slice(frame::first_payload(push_frame)?).ok()?;
    Some(push.data)
}

/// One topic's entry in the `streams` of a subscribe acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAck<'a> {
    pub topic: &'a str,
    pub epoch: &'a str,
    /// The stream's last offset at the subscribe.
    pub offset: u64,
    /// Whether the `since` sent for the topic is fully recovered (present only with one).
    pub recovered: Option<bool>,
    /// The first offset the client will receive (after a lost resume, or with `recent`).
    pub from: Option<u64>,
}

/// `{"cmd":"subscribed","topics":[..],"streams":{..}}` (history on) as one text frame.
pub fn encode_subscribed_streams<S: AsRef<str>>(topics: &[S], streams: &[StreamAck<'_>]) -> Bytes {
    let topics: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    let mut entries = serde_json::Map::new();
    for ack in streams {
        let mut entry = serde_json::json!({ "epoch": ack.epoch, "offset": ack.offset });
        if let Some(recovered) = ack.recovered {
            entry["recovered"] = recovered.into();
        }
        if let Some(from) = ack.from {
            entry["from"] = from.into();
        }
        entries.insert(ack.topic.to_owned(), entry);
    }
    let body = serde_json::json!({ "cmd": "subscribed", "topics": topics, "streams": entries });
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// `{"cmd":"continuity_lost","topic":..,"epoch":..,"from":N}`: eviction overtook this client's
/// replay; `from` is the next offset it gets.
pub fn encode_continuity_lost(topic: &str, epoch: &str, from: u64) -> Bytes {
    let body = serde_json::json!({
        "cmd": "continuity_lost", "topic": topic, "epoch": epoch, "from": from,
    });
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// `{"cmd":"pong"}`, framed once for the life of the process.
pub fn pong_frame() -> Bytes {
    Bytes::from_static(b"\x81\x0e{\"cmd\":\"pong\"}")
}

/// `{"cmd":"authenticated"}`: the token of an `auth` message was right.
pub fn authenticated_frame() -> Bytes {
    Bytes::from_static(b"\x81\x17{\"cmd\":\"authenticated\"}")
}

/// `{"cmd":"subscribed","topics":[..]}` or `unsubscribed`, as one text frame.
pub fn encode_ack<S: AsRef<str>>(subscribed: bool, topics: &[S]) -> Bytes {
    let cmd = if subscribed {
        "subscribed"
    } else {
        "unsubscribed"
    };
    let topics: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    let body = serde_json::json!({ "cmd": cmd, "topics": topics });
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// `{"cmd":"unsubscribed","topics":[..],"reason":"claim expired"}`: the server ended these
/// private subscriptions because their claims expired.
pub fn encode_claims_expired<S: AsRef<str>>(topics: &[S]) -> Bytes {
    let topics: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    let body =
        serde_json::json!({ "cmd": "unsubscribed", "topics": topics, "reason": "claim expired" });
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// `{"cmd":"error","error":<message>}` as one text frame.
pub fn encode_error(message: &str) -> Bytes {
    let body = serde_json::json!({ "cmd": "error", "error": message });
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// The `error` message for a refused request; a refused claim also names the topic and the
/// reason's code, so that a client can fetch a fresh claim without parsing the text.
pub fn encode_request_error(error: &RequestError) -> Bytes {
    let mut body = serde_json::json!({ "cmd": "error", "error": error.to_string() });
    if let RequestError::ClaimRefused { topic, reason } = error {
        body["topic"] = topic.as_str().into();
        body["reason"] = reason.code().into();
    }
    frame::frame(Opcode::Text, body.to_string().as_bytes())
}

/// Writes `s` as a JSON string literal.
/// One message's place in its topic's stream, as a batch reply names it.
#[derive(Clone, Copy, Debug)]
pub struct ReplyPosition<'a> {
    pub topic: &'a str,
    pub offset: u64,
    pub epoch: &'a str,
}

/// The reply to a batch publish: `{"deliveries":N,"offsets":{"T":{"epoch":"E","offset":O},..},
/// "published":K}`, keys sorted as serde_json writes a map. `offsets` has each topic's last
/// position (of several lines to one topic the last wins) and is left out when there are none.
/// Written directly: a batch to many topics would otherwise build a map and strings per topic.
pub fn encode_batch_reply<'a>(
    published: usize,
    deliveries: usize,
    positions: impl Iterator<Item = ReplyPosition<'a>>,
) -> String {
    let mut last: Vec<ReplyPosition<'a>> = positions.collect();
    // Stable, so a topic's lines stay in publish order; then keep the last of each.
    last.sort_by(|a, b| a.topic.cmp(b.topic));
    last.dedup_by(|later, kept| {
        let same = later.topic == kept.topic;
        if same {
            *kept = *later;
        }
        same
    });
    let mut buf = Vec::with_capacity(48 + last.len() * 48);
    buf.put_slice(br#"{"deliveries":"#);
    buf.put_slice(deliveries.to_string().as_bytes());
    if !last.is_empty() {
        buf.put_slice(br#","offsets":{"#);
        for (i, position) in last.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b',');
            }
            put_json_string(&mut buf, position.topic);
            buf.put_slice(br#":{"epoch":"#);
            put_json_string(&mut buf, position.epoch);
            buf.put_slice(br#","offset":"#);
            buf.put_slice(position.offset.to_string().as_bytes());
            buf.put_u8(b'}');
        }
        buf.put_u8(b'}');
    }
    buf.put_slice(br#","published":"#);
    buf.put_slice(published.to_string().as_bytes());
    buf.put_u8(b'}');
    // Only `&str`s and ASCII went in.
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `s` as a JSON string: runs that need no escape are copied whole (topic names and epochs
/// almost never hold an escape).
fn put_json_string(buf: &mut impl BufMut, s: &str) {
    buf.put_u8(b'"');
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|&b| needs_escape(b)) {
        buf.put_slice(&rest[..at]);
        put_escape(buf, rest[at]);
        rest = &rest[at + 1..];
    }
    buf.put_slice(rest);
    buf.put_u8(b'"');
}

fn json_string_len(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .filter(|&b| needs_escape(b))
        .map(|b| escape_len(b) - 1)
        .sum();
    2 + s.len() + escapes
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

fn escape_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
        _ => 6,
    }
}

/// The escape of a byte [`needs_escape`] accepts.
fn put_escape(buf: &mut impl BufMut, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => buf.put_slice(b"\\\""),
        b'\\' => buf.put_slice(b"\\\\"),
        b'\n' => buf.put_slice(b"\\n"),
        b'\r' => buf.put_slice(b"\\r"),
        b'\t' => buf.put_slice(b"\\t"),
        _ => buf.put_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let len = (frame[1] & 0x7f) as usize;
        match len {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn seed_subscribe_and_ping_parse() {
        assert_eq!(
            parse_client_message(r#"{"topics":["test-topic"]}"#),
            Ok(ClientMessage::Subscribe {
                topics: vec!["test-topic".into()],
                claims: vec![],
                since: vec![],
                recent: None,
            })
        );
        assert_eq!(
            parse_client_message(r#"{"cmd":"ping","data":null}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_client_message(r#"{"cmd":"unsubscribe","topics":["a","b"]}"#),
            Ok(ClientMessage::Unsubscribe(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse_client_message(r#"{"cmd":"subscribe","topics":["a\u0062"]}"#),
            Ok(ClientMessage::Subscribe {
                topics: vec!["ab".into()],
                claims: vec![],
                since: vec![],
                recent: None,
            })
        );
    }

    #[test]
    fn subscribe_carries_claims_in_both_forms() {
        let expected = Ok(ClientMessage::Subscribe {
            topics: vec!["private-42".into(), "news".into()],
            claims: vec!["eyJ0.c2ln".into()],
            since: vec![],
            recent: None,
        });
        assert_eq!(
            parse_client_message(
                r#"{"cmd":"subscribe","topics":["private-42","news"],"claims":["eyJ0.c2ln"]}"#
            ),
            expected
        );
        assert_eq!(
            parse_client_message(r#"{"topics":["private-42","news"],"claims":["eyJ0.c2ln"]}"#),
            expected
        );
        assert!(matches!(
            parse_client_message(r#"{"topics":["a"],"claims":"eyJ0.c2ln"}"#),
            Err(RequestError::InvalidJson(_))
        ));
        // An unsubscribe needs no claim; one sent along is ignored.
        assert_eq!(
            parse_client_message(r#"{"cmd":"unsubscribe","topics":["a"],"claims":["x"]}"#),
            Ok(ClientMessage::Unsubscribe(vec!["a".into()]))
        );
    }

    #[test]
    fn subscribe_carries_since_and_recent_in_both_forms() {
        let expected = Ok(ClientMessage::Subscribe {
            topics: vec!["a".into(), "b".into()],
            claims: vec!["c".into()],
            since: vec![(
                "a".into(),
                Resume {
                    offset: 41,
                    epoch: "k3f9a2x1".into(),
                },
            )],
            recent: Some(5),
        });
        let since = r#""since":{"a":{"offset":41,"epoch":"k3f9a2x1"}},"recent":5"#;
        assert_eq!(
            parse_client_message(&format!(
                r#"{{"cmd":"subscribe","topics":["a","b"],"claims":["c"],{since}}}"#
            )),
            expected
        );
        assert_eq!(
            parse_client_message(&format!(r#"{{"topics":["a","b"],"claims":["c"],{since}}}"#)),
            expected
        );
        for bad in [
            r#"{"topics":["a"],"since":{"a":{"offset":1.5,"epoch":"e"}}}"#,
            r#"{"topics":["a"],"since":{"a":{"offset":-1,"epoch":"e"}}}"#,
            r#"{"topics":["a"],"since":{"a":{"offset":"1","epoch":"e"}}}"#,
            r#"{"topics":["a"],"since":{"a":{"offset":1,"epoch":7}}}"#,
            r#"{"topics":["a"],"since":{"a":{"offset":1}}}"#,
            r#"{"topics":["a"],"since":["a"]}"#,
            r#"{"topics":["a"],"recent":"3"}"#,
            r#"{"topics":["a"],"recent":-3}"#,
        ] {
            assert!(
                matches!(parse_client_message(bad), Err(RequestError::InvalidJson(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn offsets_are_written_in_decimal() {
        let mut digits = [0u8; 20];
        for n in [0, 7, 10, 42, 1_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut digits), n.to_string().as_bytes());
        }
    }

    #[test]
    fn positioned_pushes_and_recovery_messages() {
        let f = encode_push_at("a\"b", r#"{"x":[1]}"#, 42, "k3f9a2x1");
        let v: serde_json::Value = serde_json::from_slice(payload(&f)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"push","topic":"a\"b","data":{"x":[1]},"offset":42,"epoch":"k3f9a2x1"})
        );
        assert!(payload(&f).starts_with(br#"{"cmd":"push","topic":"a\"b","data":{"x":[1]},"#));
        assert_eq!(push_data(&f).map(RawValue::get), Some(r#"{"x":[1]}"#));
        let ack = encode_subscribed_streams(
            &["a", "b"],
            &[
                StreamAck {
                    topic: "a",
                    epoch: "E",
                    offset: 45,
                    recovered: Some(true),
                    from: None,
                },
                StreamAck {
                    topic: "b",
                    epoch: "E2",
                    offset: 7,
                    recovered: Some(false),
                    from: Some(3),
                },
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(payload(&ack)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"subscribed","topics":["a","b"],"streams":{
                "a":{"epoch":"E","offset":45,"recovered":true},
                "b":{"epoch":"E2","offset":7,"recovered":false,"from":3}}})
        );
        let lost = encode_continuity_lost("a", "E", 58);
        let v: serde_json::Value = serde_json::from_slice(payload(&lost)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"continuity_lost","topic":"a","epoch":"E","from":58})
        );
    }

    #[test]
    fn refused_claims_name_topic_and_reason() {
        let error = RequestError::ClaimRefused {
            topic: "private-42".into(),
            reason: ClaimRefusal::Expired,
        };
        let v: serde_json::Value =
            serde_json::from_slice(payload(&encode_request_error(&error))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cmd": "error",
                "error": "topic \"private-42\": claim expired",
                "topic": "private-42",
                "reason": "claim_expired",
            })
        );
        let plain = encode_request_error(&RequestError::EmptyTopicList);
        let v: serde_json::Value = serde_json::from_slice(payload(&plain)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"error","error":"\"topics\" is empty"})
        );
        let expired = encode_claims_expired(&["private-42"]);
        let v: serde_json::Value = serde_json::from_slice(payload(&expired)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"unsubscribed","topics":["private-42"],"reason":"claim expired"})
        );
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        assert!(matches!(
            parse_client_message("not json"),
            Err(RequestError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_client_message("[1,2]"),
            Err(RequestError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_client_message(r#"{"topics":"x"}"#),
            Err(RequestError::InvalidJson(_))
        ));
        assert_eq!(parse_client_message("{}"), Err(RequestError::MissingTopics));
        assert_eq!(
            parse_client_message(r#"{"topics":[]}"#),
            Err(RequestError::EmptyTopicList)
        );
        assert_eq!(
            parse_client_message(r#"{"cmd":"reboot"}"#),
            Err(RequestError::UnknownCommand("reboot".into()))
        );
    }

    #[test]
    fn auth_carries_the_token() {
        assert_eq!(
            parse_client_message(r#"{"cmd":"auth","token":"s3cr\u0065t"}"#),
            Ok(ClientMessage::Auth {
                token: "s3cret".into()
            })
        );
        assert_eq!(
            parse_client_message(r#"{"cmd":"auth"}"#),
            Err(RequestError::MissingToken)
        );
        assert!(matches!(
            parse_client_message(r#"{"cmd":"auth","token":7}"#),
            Err(RequestError::InvalidJson(_))
        ));
        let ok = authenticated_frame();
        assert_eq!(&ok[..2], &[0x81, 23]);
        assert_eq!(payload(&ok), br#"{"cmd":"authenticated"}"#);
        let v: serde_json::Value = serde_json::from_slice(payload(&encode_request_error(
            &RequestError::UnexpectedAuth,
        )))
        .unwrap();
        assert_eq!(v["cmd"], "error");
    }

    #[test]
    fn topic_rules() {
        let rules = TopicRules { max_len: 8 };
        assert!(validate_topic("a-b_c.d", rules).is_ok());
        assert!(validate_topic("user:1/x", rules).is_ok());
        assert!(validate_topic("", rules).is_err());
        assert!(validate_topic("123456789", rules).is_err());
        assert!(validate_topic("a b", rules).is_err());
        assert!(validate_topic("é", rules).is_err());
        assert!(validate_topic("a\"", rules).is_err());
    }

    #[test]
    fn push_frame_is_valid_json_in_a_text_frame() {
        let f = encode_push("test-topic", r#""publish msg""#);
        assert_eq!(f[0], 0x81);
        let v: serde_json::Value = serde_json::from_slice(payload(&f)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"push","topic":"test-topic","data":"publish msg"})
        );
    }

    #[test]
    fn push_frame_lengths_at_boundaries() {
        for n in [0usize, 50, 100, 125, 126, 200, 65_535, 65_536, 70_000] {
            let data = format!("\"{}\"", "x".repeat(n));
            let f = encode_push("t", &data);
            let p = payload(&f);
            let declared = match f[1] & 0x7f {
                126 => u16::from_be_bytes([f[2], f[3]]) as usize,
                127 => u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                n => n as usize,
            };
            assert_eq!(declared, p.len(), "n={n}");
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            assert_eq!(v["data"].as_str().unwrap().len(), n);
        }
    }

    #[test]
    fn topic_is_json_escaped() {
        let f = encode_push("a\"b\\c\n\u{1}", "1");
        let v: serde_json::Value = serde_json::from_slice(payload(&f)).unwrap();
        assert_eq!(v["topic"], "a\"b\\c\n\u{1}");
    }

    #[test]
    fn the_topic_byte_table_allows_exactly_the_documented_set() {
        for b in 0..=u8::MAX {
            let documented =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@');
            assert_eq!(is_topic_byte(b), documented, "{b:#04x}");
        }
    }

    #[test]
    fn every_ascii_byte_round_trips_and_the_length_is_exact() {
        let all: String = (0u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        let mut samples: Vec<String> = (0u8..0x80)
            .map(|b| format!("x{}y", char::from(b)))
            .collect();
        samples.extend([all, String::new(), "\\\"".into(), "plain-topic/42".into()]);
        for s in &samples {
            let mut out = Vec::new();
            put_json_string(&mut out, s);
            assert_eq!(out.len(), json_string_len(s), "{s:?}");
            assert_eq!(
                serde_json::from_slice::<String>(&out).ok().as_ref(),
                Some(s)
            );
            // The same escapes as serde_json for what it escapes alike.
            if !s.contains(['\u{8}', '\u{c}']) {
                assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn static_frames_and_acks() {
        let p = pong_frame();
        assert_eq!(&p[..2], &[0x81, 14]);
        assert_eq!(payload(&p), br#"{"cmd":"pong"}"#);
        let ack = encode_ack(true, &["a", "b"]);
        let v: serde_json::Value = serde_json::from_slice(payload(&ack)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd":"subscribed","topics":["a","b"]})
        );
        let err = encode_error("bad \"thing\"");
        let v: serde_json::Value = serde_json::from_slice(payload(&err)).unwrap();
        assert_eq!(v["error"], "bad \"thing\"");
    }

    #[test]
    fn the_batch_reply_is_what_serde_json_writes_for_the_same_map() {
        let positions = [
            ("b", 1, "e1"),
            ("a\"x", 7, "e2"),
            ("b", 2, "e1"),
            ("c", 3, "e3"),
        ];
        let reply = encode_batch_reply(
            4,
            9,
            positions
                .iter()
                .map(|&(topic, offset, epoch)| ReplyPosition {
                    topic,
                    offset,
                    epoch,
                }),
        );
        let mut offsets = serde_json::Map::new();
        for (topic, offset, epoch) in positions {
            offsets.insert(
                topic.into(),
                serde_json::json!({"offset": offset, "epoch": epoch}),
            );
        }
        let expected =
            serde_json::json!({"published": 4, "deliveries": 9, "offsets": offsets}).to_string();
        assert_eq!(reply, expected);
        assert_eq!(
            encode_batch_reply(2, 0, std::iter::empty()),
            serde_json::json!({"published": 2, "deliveries": 0}).to_string()
        );
    }
}
