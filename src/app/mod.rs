//! What requests mean: the route table of the API, authorization and the browser-origin
//! policy, and the counters `/stats` reports. No I/O: a route turns a parsed request into an
//! [`Action`] the server carries out (publishing moves frames into queues, which is the server's
//! job), and the results into a [`Response`].
//!
//! Knows [`crate::wire`], [`crate::hub`] and [`crate::conn`]; nothing below knows it.

pub mod auth;
pub mod claim;
pub mod metrics;
pub mod page;
pub mod sha256;
pub mod summary;
pub mod tick;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::conn::ws::{WsRoute, WsRoutes};
use crate::hub::{Position, Stream};
use crate::oplog::{AuthFailure, AuthFailureKind, AuthLog};
use crate::stats::Stats;
use crate::wire::forwarded::TrustedProxies;
use crate::wire::handshake;
use crate::wire::http::{Head, HttpError, HttpLimits, Method, Request, Response};
use crate::wire::message::{self, ReplyPosition, TopicRules};
pub use auth::{Admission, HandshakePolicy, SubscribePolicy};
use metrics::{Figures, PrefixFigures, Process, TopicPrefixes};

/// Batch lines a publish reserves room for up front (a longer batch grows as it is parsed).
const MAX_RESERVED_LINES: usize = 1024;

/// The `\n` bytes in `body`, counted in 64-byte blocks (a block's count fits a `u8`), which
/// the compiler turns into vector compares: about 8 times fewer instructions than a filter.
fn count_newlines(body: &[u8]) -> usize {
    body.chunks(64)
        .map(|block| usize::from(block.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>()))
        .sum()
}

/// The application: policies derived from the configuration, and the counters.
pub struct App {
    pub stats: Stats,
    /// Per-prefix counters of `--metrics-topic-prefix` (empty without it).
    pub topic_prefixes: TopicPrefixes,
    pub ws_port: WsPort,
    /// Failed authentications of both ports, logged at info and rate-limited together.
    pub auth_log: AuthLog,
    trusted_proxies: TrustedProxies,
    api_token: Option<String>,
    /// Browser origins that may call the API (`--api-allowed-origin`).
    api_origins: Vec<String>,
    topic_rules: TopicRules,
    api_limits: HttpLimits,
}

/// The route table of the WebSocket port: the upgrade on `--path`, checked against the policy,
/// and which topics its sessions may subscribe to; the demo page and the client module on
/// other paths (`--path` wins where they meet).
pub struct WsPort {
    pub policy: HandshakePolicy,
    pub subscribe: SubscribePolicy,
    pages: page::Pages,
}

impl WsPort {
    pub fn from_config(config: &Config) -> Self {
        WsPort {
            policy: HandshakePolicy::from_config(config),
            subscribe: SubscribePolicy::from_config(config),
            pages: page::Pages::new(config.demo_page),
        }
    }
}

impl WsRoutes for WsPort {
    fn route(&self, head: &Head<'_, '_>) -> WsRoute {
        let (path, _) = head.path_and_query();
        if path != self.policy.path {
            return match self.pages.answer(head, path) {
                Some(response) => WsRoute::Respond(response),
                None => WsRoute::Refuse(HttpError {
                    status: 404,
                    message: "nothing at this path (the WebSocket endpoint is --path)",
                }),
            };
        }
        let accepted = handshake::upgrade_request(head)
            .and_then(|request| Ok((self.policy.check(&request)?, request)));
        match accepted {
            Ok((Admission::Open, request)) => {
                WsRoute::Upgrade(handshake::accept_response(request.key))
            }
            Ok((Admission::AwaitAuth, request)) => {
                WsRoute::UpgradeAwaitingAuth(handshake::accept_response(request.key))
            }
            Err(e) => WsRoute::Refuse(e),
        }
    }

    fn token_matches(&self, token: &str) -> bool {
        self.policy.token_matches(token)
    }
}

/// Where an API request comes from, for its log lines.
pub struct Requester<'a> {
    /// The connection as other log lines name it (`API connection #3`).
    pub connection: &'a dyn fmt::Display,
    /// The TCP peer, asked only when a line needs it (a system call).
    pub peer: &'a dyn Fn() -> Option<SocketAddr>,
    pub now_ms: u64,
}

/// Live values reported next to the counters in `/stats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Gauges {
    pub connections: usize,
    pub api_connections: usize,
    pub topics: usize,
    pub subscriptions: usize,
    pub uptime_secs: u64,
    /// Messages the history holds, the bytes charged for them, and those evicted so far.
    pub history_messages: usize,
    pub history_bytes: usize,
    pub history_evictions: u64,
}

/// What the server is to do for a request.
pub enum Action<'r> {
    Respond(Response),
    /// Publish each `(topic, data)` (all validated), then answer with [`App::published`].
    Publish(Publish<'r>),
    /// Answer with [`App::stats_response`].
    Stats {
        format: Format,
        keep_alive: bool,
        head_only: bool,
    },
    /// Answer with [`App::history_response`] for this topic's stream.
    History(HistoryQuery<'r>),
}

/// How a report of the figures is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `GET /stats`: one JSON object.
    Json,
    /// `GET /metrics`: Prometheus text format 0.0.4.
    Prometheus,
}

/// `GET /history?topic=T&since=N`, validated.
pub struct HistoryQuery<'r> {
    pub topic: &'r str,
    /// The messages after this offset (0: all held).
    pub since: u64,
    keep_alive: bool,
    head_only: bool,
}

/// What one message of a publish request reached: its subscribers and, with history on, its
/// position in the topic's stream.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub subscribers: usize,
    pub position: Option<Position>,
}

/// `(topic, data)` pairs of a publish request, borrowed from it.
pub type Messages<'r> = Vec<(Cow<'r, str>, &'r RawValue)>;

/// A validated publish request: one message (`?topic=`) or a batch (one per line).
pub struct Publish<'r> {
    pub messages: Messages<'r>,
    batch: bool,
    keep_alive: bool,
}

/// A batch line's shape, as error messages name it.
const BATCH_LINE: &str = r#"{"topic":"T","data":<JSON>}"#;

/// Whether a `Content-Type` names `expected` (parameters such as `charset` aside).
fn media_type_is(content_type: Option<&str>, expected: &str) -> bool {
    content_type.is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or("");
        media_type
            .trim_matches([' ', '\t'])
            .eq_ignore_ascii_case(expected)
    })
}

#[derive(Deserialize)]
struct BatchLine<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl App {
    pub fn new(config: &Config) -> Self {
        App {
            stats: Stats::default(),
            topic_prefixes: TopicPrefixes::new(&config.metrics_topic_prefixes),
            ws_port: WsPort::from_config(config),
            auth_log: AuthLog::default(),
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            api_token: config.api_token.clone(),
            api_origins: config.api_allowed_origins.clone(),
            topic_rules: TopicRules {
                max_len: config.max_topic_length,
            },
            api_limits: HttpLimits {
                max_body_bytes: config.api_max_body,
                ..HttpLimits::default()
            },
        }
    }

    pub fn api_limits(&self) -> HttpLimits {
        self.api_limits
    }

    /// The API's route table. Every request is counted; errors are answered here, and a
    /// missing or wrong token is logged (with the client's address, never the token).
    pub fn route<'r>(&mut self, request: &'r Request, from: &Requester<'_>) -> Action<'r> {
        self.stats.api_requests += 1;
        let action = self.route_request(request);
        if let Action::Respond(response) = &action {
            self.stats.api_errors += u64::from(response.status >= 400);
            // Only a missing or wrong bearer token is answered with 401.
            if response.status == 401 {
                self.stats.api_token_failures += 1;
                let client = request
                    .forwarding
                    .client(&self.trusted_proxies, (from.peer)());
                self.auth_log.failed(
                    from.now_ms,
                    &AuthFailure {
                        kind: AuthFailureKind::ApiToken,
                        connection: from.connection,
                        client,
                        // 401 is only given on the API's own routes: one of ours.
                        path: &request.path,
                    },
                );
            }
        }
        action
    }

    /// Whether a request's `Origin` may use the API: requests without one (backends, curl)
    /// may; a browser page only from a listed origin.
    fn origin_allowed(&self, request: &Request) -> bool {
        request.origin.as_deref().is_none_or(|origin| {
            self.api_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        })
    }

    /// Lets the browser page that sent `request` read `response`, when its origin is allowed.
    pub fn for_origin(&self, request: &Request, response: Response) -> Response {
        match &request.origin {
            Some(origin) if self.origin_allowed(request) => Response {
                allow_origin: Some(origin.clone()),
                ..response
            },
            _ => response,
        }
    }

    fn route_request<'r>(&self, request: &'r Request) -> Action<'r> {
        let ka = request.keep_alive;
        let head_only = request.method == Method::Head;
        let authorized =
            auth::bearer_matches(request.authorization.as_deref(), self.api_token.as_deref());
        let respond = |response: Response| {
            Action::Respond(Response {
                head_only,
                ..response
            })
        };
        if !self.origin_allowed(request) {
            // Any page the user visits could otherwise publish through a browser on this host.
            return respond(Response::error(
                403,
                "cross-origin API requests are refused (see --api-allowed-origin)",
                ka,
            ));
        }
        match (request.method, request.path.as_str()) {
            // The CORS preflight of an allowed origin (others were refused above).
            (Method::Options, "/publish" | "/stats" | "/metrics" | "/healthz" | "/history")
                if request.origin.is_some() =>
            {
                respond(Response {
                    extra_headers: &[
                        ("Access-Control-Allow-Methods", "GET, HEAD, POST"),
                        (
                            "Access-Control-Allow-Headers",
                            "Authorization, Content-Type",
                        ),
                        ("Access-Control-Max-Age", "600"),
                    ],
                    ..Response::json(200, &serde_json::json!({}), ka)
                })
            }
            (Method::Get | Method::Head, "/healthz") => respond(Response::json(
                200,
                &serde_json::json!({"status": "ok"}),
                ka,
            )),
            (_, "/healthz" | "/stats" | "/metrics" | "/publish" | "/history") if !authorized => {
                respond(Response {
                    extra_headers: &[("WWW-Authenticate", "Bearer")],
                    ..Response::error(401, "missing or wrong bearer token", ka)
                })
            }
            (Method::Post, "/publish") => {
                let topic = request.query_param("topic");
                // A type a browser cannot send without a preflight, which only an allowed
                // origin gets: a plain form or `fetch(.., {mode: 'no-cors'})` cannot publish.
                let (expected, message) = match topic {
                    Some(_) => ("application/json", "Content-Type must be application/json"),
                    None => (
                        "application/x-ndjson",
                        "Content-Type must be application/x-ndjson (one message per line)",
                    ),
                };
                if !media_type_is(request.content_type.as_deref(), expected) {
                    return respond(Response::error(415, message, ka));
                }
                let parsed = match topic {
                    Some(topic) => self.one_message(topic, &request.body),
                    None => self.batch(&request.body),
                };
                match parsed {
                    Ok(messages) => Action::Publish(Publish {
                        batch: topic.is_none(),
                        messages,
                        keep_alive: ka,
                    }),
                    Err(message) => respond(Response::error(400, &message, ka)),
                }
            }
            (Method::Get | Method::Head, "/stats") => Action::Stats {
                format: Format::Json,
                keep_alive: ka,
                head_only,
            },
            (Method::Get | Method::Head, "/metrics") => Action::Stats {
                format: Format::Prometheus,
                keep_alive: ka,
                head_only,
            },
            (Method::Get | Method::Head, "/history") => {
                let Some(topic) = request.query_param("topic") else {
                    return respond(Response::error(400, "use GET /history?topic=T&since=N", ka));
                };
                if let Err(e) = message::validate_topic(topic, self.topic_rules) {
                    return respond(Response::error(400, &e.to_string(), ka));
                }
                let since = match request.query_param("since").map(|n| n.parse::<u64>()) {
                    None => 0,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        return respond(Response::error(400, "since must be a whole number", ka));
                    }
                };
                Action::History(HistoryQuery {
                    topic,
                    since,
                    keep_alive: ka,
                    head_only,
                })
            }
            (_, "/publish") => respond(Response {
                extra_headers: &[("Allow", "POST")],
                ..Response::error(405, "use POST /publish?topic=T", ka)
            }),
            (_, "/stats" | "/metrics" | "/healthz" | "/history") => respond(Response {
                extra_headers: &[("Allow", "GET")],
                ..Response::error(405, "use GET", ka)
            }),
            _ => respond(Response::error(
                404,
                "no such endpoint: try POST /publish?topic=T, GET /history?topic=T, GET /stats, \
                 GET /metrics, GET /healthz",
                ka,
            )),
        }
    }

    fn one_message<'r>(&self, topic: &'r str, body: &'r [u8]) -> Result<Messages<'r>, String> {
        message::validate_topic(topic, self.topic_rules).map_err(|e| e.to_string())?;
        let data = serde_json::from_slice::<&RawValue>(body).map_err(|e| {
            let why = message::describe_json_error(&e, "one JSON value");
            format!("the body must be one JSON value: {why}")
        })?;
        Ok(vec![(Cow::Borrowed(topic), data)])
    }

    /// One `{"topic":..,"data":..}` per line. All lines are checked before any is published, so
    /// a bad batch publishes nothing.
    fn batch<'r>(&self, body: &'r [u8]) -> Result<Messages<'r>, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
        // Sized once: growing it by doubling reallocates up to the large sizes at which malloc
        // consolidates its free lists, a cost that showed in every batch request. At most
        // 1,024 lines (40 KiB) up front, so a body of blank lines reserves little.
        let lines = count_newlines(body) + 1;
        let mut messages = Vec::with_capacity(lines.min(MAX_RESERVED_LINES));
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parsed: BatchLine<'_> = serde_json::from_str(line).map_err(|e| {
                let why = message::describe_json_error(&e, BATCH_LINE);
                format!("line {}: {why}", n + 1)
            })?;
            message::validate_topic(&parsed.topic, self.topic_rules)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            messages.push((parsed.topic, parsed.data));
        }
        if messages.is_empty() {
            return Err(
                "no messages: use ?topic=T, or one {\"topic\":..,\"data\":..} per line".to_owned(),
            );
        }
        Ok(messages)
    }

    /// The answer to a publish; `reached[i]`: what message `i` reached. With history on, a
    /// single publish names its position, a batch the last position per topic.
    pub fn published(&mut self, publish: &Publish<'_>, reached: &[Published]) -> Response {
        if publish.batch {
            let deliveries = reached.iter().map(|r| r.subscribers).sum::<usize>();
            let positions = publish
                .messages
                .iter()
                .zip(reached)
                .filter_map(|((topic, _), r)| {
                    r.position.as_ref().map(|p| ReplyPosition {
                        topic,
                        offset: p.offset,
                        epoch: p.epoch.as_str(),
                    })
                });
            let body = message::encode_batch_reply(publish.messages.len(), deliveries, positions);
            return Response::json_text(200, body, publish.keep_alive);
        }
        let topic = publish.messages.first().map_or("", |(t, _)| &**t);
        let first = reached.first();
        let mut body = serde_json::json!({
            "topic": topic,
            "subscribers": first.map_or(0, |r| r.subscribers),
        });
        if let Some(position) = first.and_then(|r| r.position) {
            body["offset"] = position.offset.into();
            body["epoch"] = position.epoch.as_str().into();
        }
        Response::json(200, &body, publish.keep_alive)
    }

    /// `GET /history`: the held messages of `stream` after `query.since`, and whether they are
    /// every message after it; 404 when the topic has no stream.
    pub fn history_response(
        &self,
        query: &HistoryQuery<'_>,
        stream: Option<Stream<'_>>,
    ) -> Response {
        let ka = query.keep_alive;
        let Some(stream) = stream else {
            return Response {
                head_only: query.head_only,
                ..Response::error(404, "no history for this topic", ka)
            };
        };
        #[derive(Serialize)]
        struct Held<'a> {
            offset: u64,
            /// Verbatim, as published.
            data: &'a RawValue,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            topic: &'a str,
            epoch: &'a str,
            offset: u64,
            complete: bool,
            messages: Vec<Held<'a>>,
        }
        let first = stream.first_held().unwrap_or(stream.last() + 1);
        let epoch = stream.epoch();
        let body = Body {
            topic: query.topic,
            epoch: epoch.as_str(),
            offset: stream.last(),
            complete: query.since.saturating_add(1) >= first,
            messages: stream
                .after(query.since)
                .filter_map(|(offset, frame)| {
                    let data = message::push_data(frame)?;
                    Some(Held { offset, data })
                })
                .collect(),
        };
        Response {
            head_only: query.head_only,
            body: serde_json::to_string(&body).unwrap_or_default(),
            ..Response::json(200, &serde_json::Value::Null, ka)
        }
    }

    /// `GET /stats` or `GET /metrics`: the counters with the loop's `gauges`, the `process`
    /// figures and the per-prefix ones, rendered from the one table of [`metrics`].
    pub fn stats_response(
        &self,
        gauges: Gauges,
        process: Process,
        prefixes: &[PrefixFigures<'_>],
        format: Format,
        keep_alive: bool,
        head_only: bool,
    ) -> Response {
        let figures = Figures {
            stats: &self.stats,
            gauges: &gauges,
            process: &process,
            prefixes,
        };
        let (body, content_type) = match format {
            Format::Json => (metrics::render_json(&figures), "application/json"),
            Format::Prometheus => (metrics::render_prometheus(&figures), metrics::CONTENT_TYPE),
        };
        Response {
            head_only,
            body,
            content_type,
            ..Response::json(200, &serde_json::Value::Null, keep_alive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::count_newlines;

    #[test]
    fn newlines_are_counted_across_block_edges() {
        for len in [0, 1, 63, 64, 65, 200, 4096] {
            for every in [1, 2, 7, 64, 150] {
                let body: Vec<u8> = (0..len)
                    .map(|i| if i % every == 0 { b'\n' } else { b'x' })
                    .collect();
                let expected = body.iter().filter(|&&b| b == b'\n').count();
                assert_eq!(count_newlines(&body), expected, "len {len}, every {every}");
            }
        }
    }
}
