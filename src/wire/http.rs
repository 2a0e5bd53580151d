//! HTTP/1.1 for both listeners, without I/O: one head parser ([`parse_head`], also under the
//! WebSocket upgrade in [`super::handshake`]), one status table and one response writer.
//!
//! [`RequestParser`] (the API) takes bytes as they arrive and yields complete requests, so
//! keep-alive and pipelining come for free. Every buffer is bounded by [`HttpLimits`]: a head that does not end
//! within `max_head_bytes` is refused with 431, a body longer than `max_body_bytes` with 413 (as
//! soon as its length is known). After an error the parser stays failed: the caller answers with
//! the error's status and closes the connection. Parsing never panics on any input.
//!
//! Framing follows RFC 9112 strictly, so that no proxy in front can read a request differently:
//! the head ends where httparse says, a bare LF anywhere in a head, chunk line or trailer is a
//! 400, lengths are plain digits, optional whitespace is SP and HTAB only.

use bytes::{Buf, Bytes, BytesMut};

use super::forwarded::Forwarding;

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
    Options,
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
    /// Set by browsers: the page that made the request.
    pub origin: Option<String>,
    /// `X-Forwarded-For` and `X-Real-IP`, for log lines when the peer is a trusted proxy.
    pub forwarding: Forwarding,
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
    origin: Option<String>,
    forwarding: Forwarding,
    keep_alive: bool,
    framing: Framing,
    expect_continue: bool,
}

pub struct RequestParser {
    limits: HttpLimits,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a LF (a head can only end on one).
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
    /// which servers must accept too, is reduced to its path; an origin-form target (`/...`)
    /// is taken as it is, even with a URL in its query (`/?url=ws://host/ws`).
    pub fn path_and_query(&self) -> (&'b str, Option<&'b str>) {
        let mut target = self.target;
        if !target.starts_with('/')
            && let Some((_, after_scheme)) = target.split_once("://")
        {
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
/// `Ok(None)`: incomplete. The head is `input[..len]` exactly as httparse delimits it; a bare
/// LF in it is a 400 (httparse accepts one as a line end, other parsers may not).
pub fn parse_head<'h, 'b>(
    input: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
) -> Result<Option<Head<'h, 'b>>, HttpError> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        // All of an incomplete input belongs to the head: refuse a bare LF without waiting.
        Ok(httparse::Status::Partial) if has_bare_lf(input) => return Err(BARE_LF),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(error(431, "too many headers")),
        Err(httparse::Error::Version) => return Err(error(505, "only HTTP/1.0 and 1.1")),
        Err(_) => return Err(error(400, "malformed HTTP request")),
    };
    if has_bare_lf(&input[..len]) {
        return Err(BARE_LF);
    }
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

const BARE_LF: HttpError = error(400, "line ends in LF without CR");

/// Whether a LF in `bytes` is not preceded by a CR.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// Strips optional whitespace (RFC 9110 §5.6.3: SP and HTAB only; `str::trim` would also strip
/// Unicode spaces, which no other parser treats as whitespace).
pub fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// [`trim_ows`] on bytes.
pub fn trim_ows_bytes(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ' && b != b'\t');
    let end = value.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => &value[start..=end],
        _ => &[],
    }
}

/// `1*DIGIT` (a Content-Length): no sign, no spaces. Too large a value saturates, so it is
/// refused as too large rather than as malformed.
fn parse_decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

/// A chunk-size line without its CRLF: `1*HEXDIG [BWS ";" extensions]`. Extensions are
/// ignored; control characters (a lone CR or LF above all) are not. Saturates like
/// [`parse_decimal`].
fn parse_chunk_size(line: &[u8]) -> Option<usize> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = trim_ows_bytes(&line[digits..]);
    if digits == 0 || !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    Some(line[..digits].iter().fold(0usize, |n, &d| {
        let digit = char::from(d).to_digit(16).unwrap_or(0) as usize;
        n.saturating_mul(16).saturating_add(digit)
    }))
}

/// Whether `value` is a token (RFC 9110 §5.6.2).
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The percent-decoded `name=value` pairs of a query, in order (application/x-www-form-urlencoded:
/// `+` is a space, so a literal `+` is sent as `%2B`). A malformed escape is a 400.
pub fn query_pairs(raw: &str) -> impl Iterator<Item = Result<(String, String), HttpError>> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Ok((percent_decode(k, true)?, percent_decode(v, true)?))
    })
}

/// The decoded value of the first query pair called `name` (pairs before it are decoded too).
pub fn query_value(raw: &str, name: &str) -> Result<Option<String>, HttpError> {
    for pair in query_pairs(raw) {
        let (k, v) = pair?;
        if k == name {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

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
            origin: head.origin,
            forwarding: head.forwarding,
            keep_alive: head.keep_alive,
            body,
        }))
    }

    fn parse_head(&mut self) -> Result<Option<PendingHead>, HttpError> {
        let max = self.limits.max_head_bytes;
        let too_large = error(431, "request head too large");
        // Empty lines before a request line are ignored (RFC 9112 §2.2). Dropped here, so that
        // many of them cost one pass rather than a parse of the growing buffer per line.
        let blank = self
            .buf
            .chunks_exact(2)
            .take_while(|pair| pair == b"\r\n")
            .count();
        if blank > 0 {
            self.buf.advance(2 * blank);
            self.scanned = self.scanned.saturating_sub(2 * blank);
        }
        // A head can only end on a LF: run httparse again only when a new one has arrived, so
        // a head trickling in byte by byte costs linear time.
        let new_lf = self.buf[self.scanned..].contains(&b'\n');
        self.scanned = self.buf.len();
        if !new_lf {
            return if self.buf.len() > max {
                Err(too_large)
            } else {
                Ok(None)
            };
        }
        // On the stack: no allocation per request.
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
        let count = self.limits.max_headers.min(MAX_HEADER_SLOTS);
        // One byte past the limit is enough to tell an oversized head, complete or not.
        let window = &self.buf[..self.buf.len().min(max + 1)];
        let Some(head) = parse_head(window, &mut slots[..count])? else {
            return if window.len() > max {
                Err(too_large)
            } else {
                Ok(None)
            };
        };
        if head.len > max {
            return Err(too_large);
        }
        let end = head.len;
        let version = head.version;
        let method = match head.method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        };
        let (raw_path, raw_query) = head.target.split_once('?').unwrap_or((head.target, ""));
        let path = percent_decode(raw_path, false)?;
        let query = query_pairs(raw_query).collect::<Result<Vec<_>, _>>()?;
        let mut keep_alive = version == 1;
        let (mut length, mut chunked, mut expect_continue) = (None::<usize>, false, false);
        let (mut authorization, mut content_type, mut origin) = (None, None, None);
        let mut forwarding = Forwarding::default();
        let mut hosts = 0;
        for h in head.headers {
            // httparse already strips SP and HTAB around values; nothing else is whitespace.
            let value = trim_ows(
                std::str::from_utf8(h.value).map_err(|_| error(400, "header is not UTF-8"))?,
            );
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n =
                    parse_decimal(value.as_bytes()).ok_or(error(400, "invalid Content-Length"))?;
                // Repeats of the same value mean one length (RFC 9110 §8.6); others are refused.
                if length.is_some_and(|l| l != n) {
                    return Err(error(400, "conflicting Content-Length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked applied twice (or to HTTP/1.0, which has no chunked) is faulty
                // framing (RFC 9112 §6.1).
                if chunked || version == 0 {
                    return Err(error(400, "invalid Transfer-Encoding"));
                }
                let codings: Vec<&str> = value.split(',').map(trim_ows).collect();
                if !codings.iter().all(|c| is_token(c)) {
                    return Err(error(400, "invalid Transfer-Encoding"));
                }
                if !matches!(&codings[..], [c] if c.eq_ignore_ascii_case("chunked")) {
                    return Err(error(501, "only chunked transfer-encoding is supported"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(trim_ows) {
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
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("content-type") {
                // Two types could be read one way here and another way by a proxy.
                if content_type.is_some() {
                    return Err(error(400, "repeated Content-Type"));
                }
                content_type = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("origin") {
                // Browsers send one; two could be checked one way and meant another.
                if origin.is_some() {
                    return Err(error(400, "repeated Origin"));
                }
                origin = Some(value.to_owned());
            } else {
                forwarding.take(name, value);
            }
        }
        // HTTP/1.1 requires exactly one Host; HTTP/1.0 allows none (RFC 9112 §3.2).
        if hosts > 1 || (version == 1 && hosts == 0) {
            return Err(error(400, "exactly one Host header is required"));
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
            origin,
            forwarding,
            keep_alive,
            framing,
            expect_continue: expect_continue && !body_complete,
        }))
    }

    /// Decodes as many chunks as are buffered; returns the body once the last chunk and the
    /// trailers have arrived.
    fn decode_chunks(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            // The line ends at the first LF, which must follow a CR.
            let window = &self.buf[..self.buf.len().min(MAX_CHUNK_LINE + 2)];
            let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                if window.len() > MAX_CHUNK_LINE + 1 {
                    return Err(error(400, "chunk size line too long"));
                }
                return Ok(None);
            };
            let Some(line) = self.buf[..lf].strip_suffix(b"\r") else {
                return Err(BARE_LF);
            };
            let line_end = line.len();
            let size = parse_chunk_size(line).ok_or(error(400, "bad chunk size"))?;
            if size
                > self
                    .limits
                    .max_body_bytes
                    .saturating_sub(self.chunked_body.len())
            {
                return Err(error(413, "request body too large"));
            }
            if size == 0 {
                let Some(trailer_end) = self.trailers_len(line_end + 2)? else {
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

    /// The length of the trailer section (ignored) that starts at `buf[from..]`, up to and
    /// including its empty line; delimited by httparse and held to the head's rules and limits.
    fn trailers_len(&self, from: usize) -> Result<Option<usize>, HttpError> {
        let max = self.limits.max_head_bytes;
        let rest = &self.buf[from..];
        let window = &rest[..rest.len().min(max + 1)];
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
        let count = self.limits.max_headers.min(MAX_HEADER_SLOTS);
        let too_large = error(431, "trailers too large");
        match httparse::parse_headers(window, &mut slots[..count]) {
            Ok(httparse::Status::Complete((len, _))) if has_bare_lf(&window[..len]) => Err(BARE_LF),
            Ok(httparse::Status::Complete((len, _))) if len > max => Err(too_large),
            Ok(httparse::Status::Complete((len, _))) => Ok(Some(len)),
            Ok(httparse::Status::Partial) if has_bare_lf(window) => Err(BARE_LF),
            Ok(httparse::Status::Partial) if window.len() > max => Err(too_large),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(error(431, "too many trailers")),
            Err(_) => Err(error(400, "malformed trailers")),
        }
    }
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
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
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
    /// A browser origin allowed to read this answer (`Access-Control-Allow-Origin`).
    pub allow_origin: Option<String>,
    pub content_type: &'static str,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value, keep_alive: bool) -> Self {
        Self::json_text(status, body.to_string(), keep_alive)
    }

    /// A JSON body written by the caller.
    pub fn json_text(status: u16, body: String, keep_alive: bool) -> Self {
        Response {
            status,
            body,
            keep_alive,
            extra_headers: &[],
            head_only: false,
            allow_origin: None,
            content_type: "application/json",
        }
    }

    /// `{"error":"<message>"}`.
    pub fn error(status: u16, message: &str, keep_alive: bool) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }), keep_alive)
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(128 + self.body.len());
        let mut headers = self.extra_headers.to_vec();
        if let Some(origin) = &self.allow_origin {
            headers.push(("Access-Control-Allow-Origin", origin));
            headers.push(("Vary", "Origin"));
        }
        write_response(
            &mut out,
            self.status,
            self.content_type,
            self.body.as_bytes(),
            self.keep_alive,
            &headers,
        );
        if self.head_only {
            out.truncate(out.len() - self.body.len());
        }
        Bytes::from(out)
    }
}

/// A complete JSON error response that closes the connection (the refusals on the WebSocket
/// port). A 426 also names the protocol and version to upgrade to, and lists `Upgrade` in
/// `Connection` as the header is hop-by-hop (RFC 9110 §7.8).
pub fn error_response(status: u16, message: &str) -> Bytes {
    use std::io::Write;
    let body = serde_json::json!({ "error": message }).to_string();
    let (connection, upgrade) = if status == 426 {
        (
            "Upgrade, close",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        )
    } else {
        ("close", "")
    };
    let mut out = Vec::with_capacity(160 + body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n{upgrade}\r\n{body}",
        reason_phrase(status),
        body.len()
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
            b"POST /publish?topic=a%2Fb&x=1+2 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(reqs[0].query_param("topic"), Some("a/b"));
        assert_eq!(reqs[0].query_param("x"), Some("1 2"));
        assert_eq!(&reqs[0].body[..], b"{\"a\":1}");
    }

    #[test]
    fn pipelined_and_split_at_every_byte() {
        let input = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /r HTTP/1.0\r\n\r\n";
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
        let reqs = parse_all(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(&reqs[0].body[..], b"hello world");
        assert_eq!(reqs[1].path, "/n");
        assert_eq!(
            parse_all(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            parse_all(
                b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            )
            .unwrap_err()
            .status,
            400
        );
    }

    #[test]
    fn limits() {
        let huge = format!(
            "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            2 << 20
        );
        assert_eq!(parse_all(huge.as_bytes()).unwrap_err().status, 413);
        let long_head = format!(
            "GET /p HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse_all(long_head.as_bytes()).unwrap_err().status, 431);
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
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
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            )
            .unwrap_err()
            .status,
            400
        );
        assert_eq!(
            parse_all(b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_all(b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
    }

    fn status(input: &[u8]) -> u16 {
        parse_all(input).map_or_else(|e| e.status, |_| 200)
    }

    #[test]
    fn lengths_are_plain_digits() {
        for value in [
            &b"+1"[..],
            b"-1",
            b"\xc2\xa01",
            b"1\xc2\xa0",
            b"1 1",
            b"1, 1",
            b"0x1",
            b"",
        ] {
            let mut input = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: ".to_vec();
            input.extend_from_slice(value);
            input.extend_from_slice(b"\r\n\r\n7");
            assert_eq!(status(&input), 400, "{:?}", String::from_utf8_lossy(value));
        }
        let reqs =
            parse_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length:\t1 \r\n\r\n7").unwrap();
        assert_eq!(&reqs[0].body[..], b"7");
        let same_twice =
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n7";
        assert_eq!(status(same_twice), 200);
        let huge =
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert_eq!(status(huge), 413);
    }

    #[test]
    fn chunk_sizes_are_plain_hex_on_crlf_lines() {
        let te = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let with = |body: &[u8]| [&te[..], body].concat();
        for body in [
            &b"+1\r\n7\r\n0\r\n\r\n"[..],
            b"-1\r\n7\r\n0\r\n\r\n",
            b"0x1\r\n7\r\n0\r\n\r\n",
            b" 1\r\n7\r\n0\r\n\r\n",
            b"1 x\r\n7\r\n0\r\n\r\n",
            b"1\xc2\xa0\r\n7\r\n0\r\n\r\n",
            b"\r\n7\r\n0\r\n\r\n",
            b"1\n7\r\n0\r\n\r\n",
            b"1;a\nb\r\n7\r\n0\r\n\r\n",
            b"1;a\rb\r\n7\r\n0\r\n\r\n",
            b"1\r\n7\n0\r\n\r\n",
            b"1\r\n7\r\n0\n\r\n",
            b"1\r\n7\r\n0\r\nX: y\n\r\n",
            b"1\r\n7\r\n0\r\n\n",
        ] {
            assert_eq!(
                status(&with(body)),
                400,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &b"1\r\n7\r\n0\r\n\r\n"[..],
            b"1 ;ext\r\n7\r\n0\r\n\r\n",
            b"1\t; a=\"b\"\r\n7\r\n0\r\nX: y\r\n\r\n",
            b"01\r\n7\r\n000\r\n\r\n",
        ] {
            let reqs = parse_all(&with(body)).unwrap();
            assert_eq!(
                &reqs[0].body[..],
                b"7",
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(status(&with(b"fffffffffffffffffffffff\r\n")), 413);
    }

    #[test]
    fn transfer_encoding_is_chunked_once_or_refused() {
        for (headers, want) in [
            (&b"Transfer-Encoding: \xc2\xa0chunked\r\n"[..], 400),
            (b"Transfer-Encoding: chunked\xc2\xa0\r\n", 400),
            (
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                400,
            ),
            (b"Transfer-Encoding: chunked, chunked\r\n", 501),
            (b"Transfer-Encoding: gzip, chunked\r\n", 501),
            (b"Transfer-Encoding: ,\r\n", 400),
            (b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n", 400),
            (b"Transfer-Encoding:\tChunked \r\n", 200),
        ] {
            let input = [
                &b"POST /p HTTP/1.1\r\nHost: x\r\n"[..],
                headers,
                b"\r\n1\r\n7\r\n0\r\n\r\n",
            ]
            .concat();
            assert_eq!(
                status(&input),
                want,
                "{:?}",
                String::from_utf8_lossy(headers)
            );
        }
        let http10 = b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n7\r\n0\r\n\r\n";
        assert_eq!(status(http10), 400);
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped_in_one_pass() {
        let mut input = b"\r\n".repeat(20_000);
        input.extend_from_slice(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut parser = RequestParser::new(HttpLimits::default());
        // Two bytes at a time; 40 KB of them, though a head may have 8 KiB: they are not part
        // of the head (a parse per line of the growing buffer would be quadratic).
        let mut got = None;
        for pair in input.chunks(2) {
            parser.feed(pair).unwrap();
            if let Some(request) = parser.next_request().unwrap() {
                got = Some(request);
            }
        }
        assert_eq!(got.map(|r| r.path), Some("/stats".to_owned()));
    }

    #[test]
    fn one_host_and_one_content_type() {
        assert_eq!(status(b"GET /p HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET /p HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        let two_types = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
Content-Type: text/plain\r\nContent-Length: 1\r\n\r\n7";
        assert_eq!(status(two_types), 400);
    }

    #[test]
    fn heads_with_a_bare_lf_are_refused() {
        for input in [
            &b"POST /p?topic=t HTTP/1.1\nHost: x\nContent-Length: 1\n\nX\r\n\r\n7"[..],
            b"POST /p?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\nX-Hidden: y\r\n\r\n7",
            b"POST /p HTTP/1.1\r\nHost: x\nContent-Length: 1\r\n\r\n7",
            b"\nGET /p HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHost: x\rY: z\r\n\r\n",
        ] {
            assert_eq!(status(input), 400, "{:?}", String::from_utf8_lossy(input));
            // Refused as soon as the bare LF is in, even byte by byte.
            let mut p = RequestParser::new(HttpLimits::default());
            let mut refused = false;
            for b in input {
                p.feed(&[*b]).unwrap();
                if p.next_request().is_err() {
                    refused = true;
                    break;
                }
            }
            assert!(refused, "{:?}", String::from_utf8_lossy(input));
        }
        // The leading empty line RFC 9112 §2.2 allows is a CRLF.
        assert_eq!(status(b"\r\nGET /p HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    }

    #[test]
    fn the_head_limit_holds_for_complete_heads() {
        let max = HttpLimits::default().max_head_bytes;
        let head = |len: usize| {
            let fixed = "GET /p HTTP/1.1\r\nHost: x\r\nX: \r\n\r\n".len();
            format!(
                "GET /p HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(len - fixed)
            )
        };
        assert_eq!(status(head(max).as_bytes()), 200);
        assert_eq!(status(head(max + 1).as_bytes()), 431);
        assert_eq!(status(head(5 * max).as_bytes()), 431);
        // In pieces, the last one completing the head.
        let big = head(max + 1);
        let mut p = RequestParser::new(HttpLimits::default());
        p.feed(&big.as_bytes()[..max / 2]).unwrap();
        assert!(p.next_request().unwrap().is_none());
        p.feed(&big.as_bytes()[max / 2..]).unwrap();
        assert_eq!(p.next_request().unwrap_err().status, 431);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value("x=1&token=p%25ss%2Bw%26rd&token=2", "token"),
            Ok(Some("p%ss+w&rd".to_owned()))
        );
        assert_eq!(
            query_value("token=a+b%20c", "token"),
            Ok(Some("a b c".to_owned()))
        );
        assert_eq!(query_value("tok%65n=v", "token"), Ok(Some("v".to_owned())));
        assert_eq!(query_value("token", "token"), Ok(Some(String::new())));
        assert_eq!(query_value("other=1", "token"), Ok(None));
        for bad in [
            "token=%zz",
            "token=%",
            "token=%2",
            "token=%ff",
            "x=%zz&token=t",
        ] {
            assert_eq!(query_value(bad, "token").unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn optional_whitespace_is_sp_and_htab() {
        assert_eq!(trim_ows(" \t a b\t "), "a b");
        assert_eq!(trim_ows("\u{a0}a\u{a0}"), "\u{a0}a\u{a0}");
        assert_eq!(trim_ows_bytes(b" \ta\t "), b"a");
        assert_eq!(trim_ows_bytes(b" \t "), b"");
        assert_eq!(trim_ows_bytes(b"\x0ba"), b"\x0ba");
    }

    #[test]
    fn expect_continue_once() {
        let mut p = RequestParser::new(HttpLimits::default());
        p.feed(b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
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

    #[test]
    fn every_status_the_servers_send_has_its_phrase() {
        for status in [
            100, 200, 304, 400, 401, 403, 404, 405, 408, 411, 413, 415, 426, 431, 501, 503, 505,
        ] {
            assert_ne!(reason_phrase(status), "Error", "{status}");
        }
        assert_eq!(reason_phrase(415), "Unsupported Media Type");
    }
}
