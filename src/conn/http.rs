//! An HTTP/1.1 connection of the API: bytes in, parsed requests out, responses queued in order.
//! What a request means is not decided here: the server passes each to the application and
//! hands the [`Response`] back.

use bytes::Bytes;

use super::{Connection, OutQueue, Settings, Status, WriteStall};
use crate::hub::Hub;
use crate::stats::Stats;
use crate::wire::http::{self, HttpError, HttpLimits, Request, RequestParser, Response};

/// Unread response bytes one API connection may have queued.
const MAX_QUEUED_RESPONSES: usize = 1024 * 1024;

pub struct HttpConn {
    parser: RequestParser,
    out: OutQueue,
    idle_deadline_ms: u64,
    stall: WriteStall,
    /// Close once the queued responses are out (error, `Connection: close`, shutdown).
    closing: bool,
    dead: bool,
    /// A parse error found after some good pipelined requests: answered after them.
    pending_error: Option<HttpError>,
}

impl HttpConn {
    pub fn new(limits: HttpLimits, settings: &Settings, now_ms: u64) -> Self {
        HttpConn {
            parser: RequestParser::new(limits),
            out: OutQueue::new(),
            idle_deadline_ms: now_ms + settings.api_idle_ms,
            stall: WriteStall::default(),
            closing: false,
            dead: false,
            pending_error: None,
        }
    }

    /// Bytes from the socket; returns the complete requests (pipelining), in order. Answer each
    /// with [`HttpConn::respond`], then call [`HttpConn::after_requests`].
    pub fn on_input(&mut self, data: &[u8], settings: &Settings, now_ms: u64) -> Vec<Request> {
        self.idle_deadline_ms = now_ms + settings.api_idle_ms;
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
        self.idle_deadline_ms
            .min(self.stall.deadline(settings.write_timeout_ms))
    }

    fn on_timer(&mut self, settings: &Settings, _stats: &mut Stats, _hub: &mut Hub, now_ms: u64) {
        if now_ms >= self.next_deadline(settings) {
            self.dead = true;
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
