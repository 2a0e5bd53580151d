//! HTTP/1.1 for both listeners, without I/O: one head parser ([`parse_head`], also under the
//! WebSocket upgrade in [`super::handshake`]), one status table and one response writer.
//!
//! [`RequestParser`] (the API) takes bytes as they arrive and yields complete requests, so
//! keep-alive and pipelining come for free. Every buffer is bounded by [`HttpLimits`]: a head that does not end
//! within `max_head_bytes` is refused with 431, a body longer than `max_body_bytes` with 413 (as
//! soon as its length is known). After an error the parser stays failed: the caller answers with
//! the error's status and closes the connection. Parsing never panics on any input.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Request line plus headers. Default 8 KiB.
    pub max_head_bytes: usize,
    /// Decoded body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Header count. Default 32.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            max_headers: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Percent-decoded path, without the query.
    pub path: String,
    /// Percent-decoded query pairs (`+` is a space), in order.
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub keep_alive: bool,
    pub body: Bytes,
}

impl Request {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request the server refuses; the connection closes after the error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: &'static str,
}

const fn error(status: u16, message: &'static str) -> HttpError {
    HttpError { status, message }
}

enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed head waiting for its body.
struct PendingHead {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<String>,
    content_type: Option<String>,
    keep_alive: bool,
    framing: Framing,
    expect_continue: bool,
}

pub struct RequestParser {
    limits: HttpLimits,
    buf: BytesMut,
    /// Bytes of `buf` already searched for the end of the head.
    scanned: usize,
    head: Option<PendingHead>,
    /// Chunked bodies are decoded into here.
    chunked_body: BytesMut,
    failed: Option<HttpError>,
    continue_pending: bool,
}

/// The most headers a request may carry, whatever `max_headers` says.
pub const MAX_HEADER_SLOTS: usize = 64;

/// A request head parsed in place: borrowed from the input and from the caller's header slots.
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent (origin or absolute form).
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the input the head occupies.
    pub len: usize,
}

impl<'b> Head<'_, 'b> {
    /// The target's path and query (undecoded). The absolute form (`GET ws://host/ws?x`),
    /// which servers must accept too, is reduced to its path.
    pub fn path_and_query(&self) -> (&'b str, Option<&'b str>) {
        let mut target = self.target;
        if let Some((_, after_scheme)) = target.split_once("://") {
            target = after_scheme
                .find(['/', '?'])
                .map_or("/", |at| &after_scheme[at..]);
        }
        match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        }
    }

    /// Values of every header called `name`, in order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Parses the head at the start of `input` into `slots` (their count is the header limit).
/// `Ok(None)`: incomplete.
pub fn parse_head<'h, 'b>(
    input: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
) -> Result<Option<Head<'h, 'b>>, HttpError> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(error(431, "too many headers")),
        Err(httparse::Error::Version) => return Err(error(505, "only HTTP/1.0 and 1.1")),
        Err(_) => return Err(error(400, "malformed HTTP request")),
    };
    Ok(Some(Head {
        method: req.method.unwrap_or(""),
        target: req.path.unwrap_or("/"),
        version: req.version.unwrap_or(1),
        headers: req.headers,
        len,
    }))
}

/// Chunk-size lines longer than this are refused (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 256;

impl RequestParser {
    pub fn new(limits: HttpLimits) -> Self {
        RequestParser {
            limits,
            buf: BytesMut::new(),
            scanned: 0,
            head: None,
            chunked_body: BytesMut::new(),
            failed: None,
            continue_pending: false,
        }
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HttpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // Room for one whole request (and chunk framing) is plenty: the caller drains requests
        // after every feed, so more than that buffered can only be an oversized request.
        let cap = self.limits.max_head_bytes + self.limits.max_body_bytes + 4 * MAX_CHUNK_LINE;
        if self.buf.len() + data.len() > cap + 64 * 1024 {
            return Err(self.fail(error(413, "request too large")));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    pub fn buffered(&self) -> usize {
        self.buf.len() + self.chunked_body.len()
    }

    /// True once per request whose head asked for `100 Continue` while its body is incomplete.
    pub fn take_expect_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_pending)
    }

    fn fail(&mut self, e: HttpError) -> HttpError {
        self.failed = Some(e.clone());
        e
    }

    /// The next complete request, if one is buffered.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.advance() {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn advance(&mut self) -> Result<Option<Request>, HttpError> {
        if self.head.is_none() {
            let Some(head) = self.parse_head()? else {
                return Ok(None);
            };
            self.continue_pending = head.expect_continue;
            self.head = Some(head);
        }
        let body = match self.head.as_ref().map(|h| &h.framing) {
            Some(Framing::Length(n)) => {
                let n = *n;
                if self.buf.len() < n {
                    return Ok(None);
                }
                self.buf.split_to(n).freeze()
            }
            Some(Framing::Chunked) => match self.decode_chunks()? {
                Some(body) => body,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        self.continue_pending = false;
        Ok(Some(Request {
            method: head.method,
            path: head.path,
            query: head.query,
            authorization: head.authorization,
            content_type: head.content_type,
            keep_alive: head.keep_alive,
            body,
        }))
    }

    fn parse_head(&mut self) -> Result<Option<PendingHead>, HttpError> {
        // Only run httparse once the blank line that ends the head is here; resume the search
        // where the last one stopped, so a head arriving byte by byte costs linear time.
        let from = self.scanned.saturating_sub(3);
        let Some(end) = find(&self.buf[from..], b"\r\n\r\n").map(|p| from + p + 4) else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.limits.max_head_bytes {
                return Err(error(431, "request head too large"));
            }
            return Ok(None);
        };
        if end > self.limits.max_head_bytes {
            return Err(error(431, "request head too large"));
        }
        // On the stack: no allocation per request.
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
        let count = self.limits.max_headers.min(MAX_HEADER_SLOTS);
        let Some(head) = parse_head(&self.buf[..end], &mut slots[..count])? else {
            return Err(error(400, "malformed request"));
        };
        let version = head.version;
        let method = match head.method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        };
        let (raw_path, raw_query) = head.target.split_once('?').unwrap_or((head.target, ""));
        let path = percent_decode(raw_path, false)?;
        let mut query = Vec::new();
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            query.push((percent_decode(k, true)?, percent_decode(v, true)?));
        }
        let mut keep_alive = version == 1;
        let (mut length, mut chunked, mut expect_continue) = (None::<usize>, false, false);
        let (mut authorization, mut content_type) = (None, None);
        for h in head.headers {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| error(400, "header is not UTF-8"))?
                .trim();
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .parse()
                    .map_err(|_| error(400, "invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(error(400, "conflicting Content-Length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(error(501, "only chunked transfer-encoding is supported"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue = value.eq_ignore_ascii_case("100-continue");
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_owned());
            }
        }
        let framing = match (chunked, length) {
            (true, Some(_)) => return Err(error(400, "both Content-Length and Transfer-Encoding")),
            (true, None) => Framing::Chunked,
            (false, Some(n)) if n > self.limits.max_body_bytes => {
                return Err(error(413, "request body too large"));
            }
            // No length on a request means no body (RFC 9112 §6.3).
            (false, n) => Framing::Length(n.unwrap_or(0)),
        };
        self.buf.advance(end);
        self.scanned = 0;
        let body_complete = matches!(framing, Framing::Length(n) if n <= self.buf.len());
        Ok(Some(PendingHead {
            method,
            path,
            query,
            authorization,
            content_type,
            keep_alive,
            framing,
            expect_continue: expect_continue && !body_complete,
        }))
    }

    /// Decodes as many chunks as are buffered; returns the body once the last chunk and the
    /// trailers have arrived.
    fn decode_chunks(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let Some(line_end) = find(&self.buf, b"\r\n") else {
                if self.buf.len() > MAX_CHUNK_LINE {
                    return Err(error(400, "chunk size line too long"));
                }
                return Ok(None);
            };
            if line_end > MAX_CHUNK_LINE {
                return Err(error(400, "chunk size line too long"));
            }
            let line = std::str::from_utf8(&self.buf[..line_end])
                .map_err(|_| error(400, "bad chunk size"))?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16).map_err(|_| error(400, "bad chunk size"))?;
            if size
                > self
                    .limits
                    .max_body_bytes
                    .saturating_sub(self.chunked_body.len())
            {
                return Err(error(413, "request body too large"));
            }
            if size == 0 {
                // Trailers end with an empty line; they are ignored.
                let rest = &self.buf[line_end + 2..];
                let trailer_end = if rest.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    find(rest, b"\r\n\r\n").map(|p| p + 4)
                };
                let Some(trailer_end) = trailer_end else {
                    if rest.len() > self.limits.max_head_bytes {
                        return Err(error(431, "trailers too large"));
                    }
                    return Ok(None);
                };
                self.buf.advance(line_end + 2 + trailer_end);
                return Ok(Some(std::mem::take(&mut self.chunked_body).freeze()));
            }
            let needed = line_end + 2 + size + 2;
            if self.buf.len() < needed {
                return Ok(None);
            }
            if &self.buf[needed - 2..needed] != b"\r\n" {
                return Err(error(400, "chunk not followed by CRLF"));
            }
            self.chunked_body
                .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.advance(needed);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `%XX` escapes (and `+` as space in queries). Malformed escapes or a result that is
/// not UTF-8 are a 400.
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(error(400, "malformed percent escape"))?;
                let hex =
                    std::str::from_utf8(hex).map_err(|_| error(400, "malformed percent escape"))?;
                out.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| error(400, "malformed percent escape"))?,
                );
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| error(400, "URL is not UTF-8"))
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes a complete response.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    use std::io::Write;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A response the application gives a request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub keep_alive: bool,
    pub extra_headers: &'static [(&'static str, &'static str)],
    /// A reply to HEAD: headers only (Content-Length still tells the body's size).
    pub head_only: bool,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value, keep_alive: bool) -> Self {
        Response {
            status,
            body: body.to_string(),
            keep_alive,
            extra_headers: &[],
            head_only: false,
        }
    }

    /// `{"error":"<message>"}`.
    pub fn error(status: u16, message: &str, keep_alive: bool) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }), keep_alive)
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(128 + self.body.len());
        write_response(
            &mut out,
            self.status,
            "application/json",
            self.body.as_bytes(),
            self.keep_alive,
            self.extra_headers,
        );
        if self.head_only {
            out.truncate(out.len() - self.body.len());
        }
        Bytes::from(out)
    }
}

/// A complete JSON error response that closes the connection (the refusals on the WebSocket
/// port: a 426 also names the protocol and version to upgrade to).
pub fn error_response(status: u16, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": message }).to_string();
    let upgrade: &[(&str, &str)] = if status == 426 {
        &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(160 + body.len());
    write_response(
        &mut out,
        status,
        "application/json",
        body.as_bytes(),
        false,
        upgrade,
    );
    Bytes::from(out)
}

/// A JSON error response: `{"error":"<message>"}`.
pub fn write_error(out: &mut Vec<u8>, status: u16, message: &str, keep_alive: bool) {
    let body = serde_json::json!({ "error": message }).to_string();
    write_response(
        out,
        status,
        "application/json",
        body.as_bytes(),
        keep_alive,
        &[],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Request>, HttpError> {
        let mut p = RequestParser::new(HttpLimits::default());
        p.feed(input)?;
        let mut out = Vec::new();
        while let Some(r) = p.next_request()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn get_and_post() {
        let reqs = parse_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (reqs[0].method, reqs[0].path.as_str(), reqs[0].keep_alive),
            (Method::Get, "/stats", true)
        );
        let reqs = parse_all(
            b"POST /publish?topic=a%2Fb&x=1+2 HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(reqs[0].query_param("topic"), Some("a/b"));
        assert_eq!(reqs[0].query_param("x"), Some("1 2"));
        assert_eq!(&reqs[0].body[..], b"{\"a\":1}");
    }

    #[test]
    fn pipelined_and_split_at_every_byte() {
        let input = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /r HTTP/1.0\r\n\r\n";
        let whole = parse_all(input).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!((whole[1].keep_alive, whole[2].keep_alive), (true, false));
        let mut p = RequestParser::new(HttpLimits::default());
        let mut got = Vec::new();
        for b in input.iter() {
            p.feed(&[*b]).unwrap();
            while let Some(r) = p.next_request().unwrap() {
                got.push((r.path, r.body));
            }
        }
        let want: Vec<_> = whole.into_iter().map(|r| (r.path, r.body)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn chunked_bodies() {
        let reqs = parse_all(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /n HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(&reqs[0].body[..], b"hello world");
        assert_eq!(reqs[1].path, "/n");
        assert_eq!(
            parse_all(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"POST /p HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            parse_all(
                b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            )
            .unwrap_err()
            .status,
            400
        );
    }

    #[test]
    fn limits() {
        let huge = format!("POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 2 << 20);
        assert_eq!(parse_all(huge.as_bytes()).unwrap_err().status, 413);
        let long_head = format!("GET /p HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse_all(long_head.as_bytes()).unwrap_err().status, 431);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
                .unwrap_err()
                .status,
            431
        );
        let mut p = RequestParser::new(HttpLimits::default());
        assert!(p.feed(&vec![b'a'; 9000]).is_ok());
        assert_eq!(p.next_request().unwrap_err().status, 431);
        assert_eq!(p.next_request().unwrap_err().status, 431, "stays failed");
    }

    #[test]
    fn garbage_and_bad_values() {
        assert_eq!(
            parse_all(b"\x16\x03\x01\x00\xa5\x01\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"GET /%zz HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
        assert_eq!(
            parse_all(b"GET /%ff HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
    }

    #[test]
    fn expect_continue_once() {
        let mut p = RequestParser::new(HttpLimits::default());
        p.feed(b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        assert!(p.next_request().unwrap().is_none());
        assert!(p.take_expect_continue());
        assert!(!p.take_expect_continue());
        p.feed(b"{}").unwrap();
        assert_eq!(&p.next_request().unwrap().unwrap().body[..], b"{}");
    }

    #[test]
    fn response_bytes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            "application/json",
            b"{}",
            true,
            &[("Allow", "POST")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\nAllow: POST\r\n\r\n{}"
        );
    }
}
