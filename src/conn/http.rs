//! An HTTP/1.1 connection of the API: bytes in, parsed requests out, responses queued in order.
//! What a request means is not decided here: the server passes each to the application and
//! hands the [`Response`] back.

use bytes::Bytes;

use super::{Connection, OutQueue, Settings, Status, WriteStall};
use crate::hub::Hub;
use crate::oplog::AuthLog;
use crate::stats::Stats;
use crate::wire::http::{self, HttpError, HttpLimits, Request, RequestParser, Response};

/// Unread response bytes one API connection may have queued.
const MAX_QUEUED_RESPONSES: usize = 1024 * 1024;

pub struct HttpConn {
    parser: RequestParser,
    out: OutQueue,
    /// Since when the connection waits for a request: accepted, or its last request complete.
    /// Bytes that do not complete a request do not move it.
    idle_since_ms: u64,
    /// When the first byte of the request now arriving came; `None` between requests.
    request_started_ms: Option<u64>,
    stall: WriteStall,
    /// Close once the queued responses are out (error, `Connection: close`, shutdown).
    closing: bool,
    dead: bool,
    /// A parse error found after some good pipelined requests: answered after them.
    pending_error: Option<HttpError>,
}

impl HttpConn {
    pub fn new(limits: HttpLimits, now_ms: u64) -> Self {
        HttpConn {
            parser: RequestParser::new(limits),
            out: OutQueue::new(),
            idle_since_ms: now_ms,
            request_started_ms: None,
            stall: WriteStall::default(),
            closing: false,
            dead: false,
            pending_error: None,
        }
    }

    /// Bytes from the socket; returns the complete requests (pipelining), in order. Answer each
    /// with [`HttpConn::respond`], then call [`HttpConn::after_requests`].
    pub fn on_input(&mut self, data: &[u8], now_ms: u64) -> Vec<Request> {
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
        if !requests.is_empty() {
            self.idle_since_ms = now_ms;
            self.request_started_ms = None;
        }
        // A request has begun: it must be complete by its own deadline, however it trickles in.
        if self.parser.buffered() > 0 && self.request_started_ms.is_none() {
            self.request_started_ms = Some(now_ms);
        }
        requests
    }

    /// Since when this connection has held its API slot without a request being served: the
    /// start of a request still arriving, or of its wait for the next one. `None` while it has
    /// answers to deliver. At the connection cap the server closes the one waiting longest, so
    /// slow or idle clients cannot keep the API full.
    pub fn waiting_since(&self) -> Option<u64> {
        if !self.out.is_empty() || self.dead {
            return None;
        }
        Some(self.request_started_ms.unwrap_or(self.idle_since_ms))
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
        self.out.push(response.encode());
        if !response.keep_alive {
            self.closing = true;
        }
    }

    /// Answers a parse error that followed the requests of the last `on_input`.
    pub fn after_requests(&mut self) {
        if let Some(e) = self.pending_error.take() {
            self.fail(&e);
        }
    }

    pub fn close_after_flush(&mut self) {
        self.closing = true;
    }
}

impl Connection for HttpConn {
    fn outbound(&mut self) -> Option<&mut OutQueue> {
        Some(&mut self.out)
    }

    fn on_written(&mut self, written: usize, now_ms: u64) {
        self.stall.on_written(written, self.out.is_empty(), now_ms);
    }

    fn next_deadline(&self, settings: &Settings) -> u64 {
        let waiting = match self.request_started_ms {
            Some(started) => started + settings.api_request_ms,
            None => self.idle_since_ms + settings.api_idle_ms,
        };
        waiting.min(self.stall.deadline(settings.write_timeout_ms))
    }

    fn on_timer(
        &mut self,
        settings: &Settings,
        stats: &mut Stats,
        _hub: &mut Hub,
        _auth_log: &mut AuthLog,
        now_ms: u64,
    ) {
        if self.stall.expired(now_ms, settings.write_timeout_ms) {
            self.dead = true;
            return;
        }
        match self.request_started_ms {
            Some(started) if now_ms >= started + settings.api_request_ms && !self.closing => {
                stats.api_request_timeouts += 1;
                self.fail(&HttpError {
                    status: 408,
                    message: "request not complete in time",
                });
                // The 408 gets one more period to go out and the peer to close.
                self.request_started_ms = Some(now_ms);
            }
            // The 408 did not go out in time either.
            Some(started) if now_ms >= started + settings.api_request_ms => self.dead = true,
            None if now_ms >= self.idle_since_ms + settings.api_idle_ms => self.dead = true,
            _ => {}
        }
    }

    fn status(&mut self, eof: bool) -> Status {
        if self.dead || (eof && self.out.is_empty()) {
            Status::Dead
        } else if self.closing || eof {
            Status::Finishing
        } else {
            Status::Live
        }
    }
}
