//! The backend API on the loop: per-connection state and request handling. HTTP parsing lives
//! in [`crate::http`]; the loop supplies a [`Target`] to publish into and read stats from.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::http::{self, HttpError, HttpLimits, Method, Request, RequestParser};
use crate::outbound::OutQueue;
use crate::protocol::{self, TopicRules};
use crate::session::Status;
use crate::stats::Stats;

/// Unread response bytes one API connection may have queued.
const MAX_QUEUED_RESPONSES: usize = 1024 * 1024;

pub fn limits(config: &Config) -> HttpLimits {
    HttpLimits {
        max_body_bytes: config.api_max_body,
        ..HttpLimits::default()
    }
}

/// Live values reported next to the counters in `/stats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Gauges {
    pub connections: usize,
    pub api_connections: usize,
    pub topics: usize,
    pub subscriptions: usize,
    pub uptime_secs: u64,
}

/// What a request may do to the server.
pub trait Target {
    fn topic_rules(&self) -> TopicRules;
    /// Queues `frame` to every subscriber of `topic`; returns how many got it.
    fn publish(&mut self, topic: &str, frame: &Bytes) -> usize;
    fn stats(&mut self) -> (Stats, Gauges);
    fn count_request(&mut self, error: bool);
}

pub struct Response {
    status: u16,
    body: String,
    keep_alive: bool,
    extra_headers: &'static [(&'static str, &'static str)],
    /// A reply to HEAD: headers only (Content-Length still tells the body's size).
    head_only: bool,
}

impl Response {
    fn json(status: u16, body: serde_json::Value, keep_alive: bool) -> Self {
        Response {
            status,
            body: body.to_string(),
            keep_alive,
            extra_headers: &[],
            head_only: false,
        }
    }

    fn error(status: u16, message: &str, keep_alive: bool) -> Self {
        Self::json(status, serde_json::json!({ "error": message }), keep_alive)
    }
}

pub struct ApiConn {
    parser: RequestParser,
    pub out: OutQueue,
    idle_deadline_ms: u64,
    stall_since_ms: Option<u64>,
    /// Close once the queued responses are out (error, `Connection: close`, shutdown).
    closing: bool,
    dead: bool,
    /// A parse error found after some good pipelined requests: answered after them.
    pending_error: Option<HttpError>,
}

impl ApiConn {
    pub fn new(limits: HttpLimits, idle_deadline_ms: u64) -> Self {
        ApiConn {
            parser: RequestParser::new(limits),
            out: OutQueue::new(),
            idle_deadline_ms,
            stall_since_ms: None,
            closing: false,
            dead: false,
            pending_error: None,
        }
    }

    /// Feeds bytes from the socket; returns the complete requests (pipelining), in order.
    pub fn feed(&mut self, data: &[u8], idle_deadline_ms: u64) -> Vec<Request> {
        self.idle_deadline_ms = idle_deadline_ms;
        let mut requests = Vec::new();
        if self.closing {
            return requests;
        }
        if let Err(e) = self.parser.feed(data) {
            self.fail(&e);
            return requests;
        }
        loop {
            match self.parser.next_request() {
                Ok(Some(request)) => {
                    let keep_alive = request.keep_alive;
                    requests.push(request);
                    if !keep_alive {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Requests parsed before the bad one are still answered, then the error.
                    self.pending_error = Some(e);
                    break;
                }
            }
        }
        if self.parser.take_expect_continue() {
            self.out
                .push(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
        }
        requests
    }

    fn fail(&mut self, e: &HttpError) {
        let mut buf = Vec::new();
        http::write_error(&mut buf, e.status, e.message, false);
        self.out.push(Bytes::from(buf));
        self.closing = true;
    }

    pub fn respond(&mut self, response: Response) {
        if self.closing {
            return;
        }
        if self.out.queued_bytes() > MAX_QUEUED_RESPONSES {
            // A client that pipelines requests but never reads the answers: drop it rather
            // than buffer without bound.
            self.dead = true;
            self.closing = true;
            return;
        }
        let mut buf = Vec::with_capacity(128 + response.body.len());
        http::write_response(
            &mut buf,
            response.status,
            "application/json",
            response.body.as_bytes(),
            response.keep_alive,
            response.extra_headers,
        );
        if response.head_only {
            buf.truncate(buf.len() - response.body.len());
        }
        self.out.push(Bytes::from(buf));
        if !response.keep_alive {
            self.closing = true;
        }
    }

    /// Answers a parse error that followed the requests of the last `feed`.
    pub fn after_requests(&mut self) {
        if let Some(e) = self.pending_error.take() {
            self.fail(&e);
        }
    }

    pub fn close_after_flush(&mut self) {
        self.closing = true;
    }

    pub fn on_written(&mut self, written: usize, now_ms: u64) {
        self.stall_since_ms = match (self.out.is_empty(), written > 0) {
            (true, _) => None,
            (false, true) => Some(now_ms),
            (false, false) => self.stall_since_ms.or(Some(now_ms)),
        };
    }

    pub fn status(&self, eof: bool) -> Status {
        if self.dead || (eof && self.out.is_empty()) {
            Status::Dead
        } else if self.closing || eof {
            Status::Finishing
        } else {
            Status::Live
        }
    }

    pub fn deadline_ms(&self, write_timeout_ms: u64) -> u64 {
        let stall = self
            .stall_since_ms
            .map_or(u64::MAX, |s| s + write_timeout_ms);
        self.idle_deadline_ms.min(stall)
    }

    pub fn on_timer(&mut self, now_ms: u64, write_timeout_ms: u64) {
        if now_ms >= self.deadline_ms(write_timeout_ms) {
            self.dead = true;
        }
    }
}

/// The API token, if configured, is required for everything but `/healthz`.
pub fn authorized(request: &Request, token: Option<&str>) -> bool {
    match token {
        None => true,
        Some(token) => {
            let presented = request
                .authorization
                .as_deref()
                .and_then(crate::auth::bearer_token)
                .unwrap_or("");
            crate::auth::constant_time_eq(presented.as_bytes(), token.as_bytes())
        }
    }
}

pub fn handle(request: Request, authorized: bool, target: &mut impl Target) -> Response {
    let keep_alive = request.keep_alive;
    let response = route(request, authorized, target);
    target.count_request(response.status >= 400);
    Response {
        keep_alive: keep_alive && response.keep_alive,
        ..response
    }
}

fn route(request: Request, authorized: bool, target: &mut impl Target) -> Response {
    let ka = request.keep_alive;
    match (request.method, request.path.as_str()) {
        (Method::Get | Method::Head, "/healthz") => {
            Response::json(200, serde_json::json!({"status": "ok"}), ka)
        }
        (_, "/healthz" | "/stats" | "/publish") if !authorized => Response {
            extra_headers: &[("WWW-Authenticate", "Bearer")],
            ..Response::error(401, "missing or wrong bearer token", ka)
        },
        (Method::Post, "/publish") => match request.query_param("topic") {
            Some(topic) => publish_one(topic, &request.body, ka, target),
            None => publish_batch(&request.body, ka, target),
        },
        (Method::Get | Method::Head, "/stats") => {
            let (counters, gauges) = target.stats();
            let body = serde_json::to_value(StatsBody {
                gauges,
                counters: &counters,
            })
            .unwrap_or(serde_json::Value::Null);
            Response::json(200, body, ka)
        }
        (_, "/publish") => Response {
            extra_headers: &[("Allow", "POST")],
            ..Response::error(405, "use POST /publish?topic=T", ka)
        },
        (_, "/stats" | "/healthz") => Response {
            extra_headers: &[("Allow", "GET")],
            ..Response::error(405, "use GET", ka)
        },
        _ => Response::error(
            404,
            "no such endpoint: try POST /publish?topic=T, GET /stats, GET /healthz",
            ka,
        ),
    }
}

#[derive(Serialize)]
struct StatsBody<'a> {
    #[serde(flatten)]
    gauges: Gauges,
    #[serde(flatten)]
    counters: &'a Stats,
}

fn publish_one(topic: &str, body: &[u8], ka: bool, target: &mut impl Target) -> Response {
    if let Err(e) = protocol::validate_topic(topic, target.topic_rules()) {
        return Response::error(400, &e.to_string(), ka);
    }
    let data = match serde_json::from_slice::<&RawValue>(body) {
        Ok(data) => data,
        Err(e) => {
            return Response::error(400, &format!("the body must be one JSON value: {e}"), ka);
        }
    };
    let frame = protocol::encode_push(topic, data.get());
    let reached = target.publish(topic, &frame);
    Response::json(
        200,
        serde_json::json!({ "topic": topic, "subscribers": reached }),
        ka,
    )
}

#[derive(Deserialize)]
struct BatchLine<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// One `{"topic":..,"data":..}` per line. All lines are checked before any is published, so a
/// bad batch publishes nothing.
fn publish_batch(body: &[u8], ka: bool, target: &mut impl Target) -> Response {
    let Ok(text) = std::str::from_utf8(body) else {
        return Response::error(400, "the body is not UTF-8", ka);
    };
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed: BatchLine<'_> = match serde_json::from_str(line) {
            Ok(p) => p,
            Err(e) => return Response::error(400, &format!("line {}: {e}", n + 1), ka),
        };
        if let Err(e) = protocol::validate_topic(&parsed.topic, target.topic_rules()) {
            return Response::error(400, &format!("line {}: {e}", n + 1), ka);
        }
        lines.push(parsed);
    }
    if lines.is_empty() {
        return Response::error(
            400,
            "no messages: use ?topic=T, or one {\"topic\":..,\"data\":..} per line",
            ka,
        );
    }
    let mut deliveries = 0;
    for line in &lines {
        let frame = protocol::encode_push(&line.topic, line.data.get());
        deliveries += target.publish(&line.topic, &frame);
    }
    Response::json(
        200,
        serde_json::json!({ "published": lines.len(), "deliveries": deliveries }),
        ka,
    )
}
