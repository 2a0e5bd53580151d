// TEMPORARY test stand-in, not the real parser.
use bytes::{Bytes, BytesMut};
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
}
impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 8192,
            max_body_bytes: 1 << 20,
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
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub keep_alive: bool,
    pub body: bytes::Bytes,
}
impl Request {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: &'static str,
}
pub struct RequestParser {
    buf: BytesMut,
    limits: HttpLimits,
}
impl RequestParser {
    pub fn new(limits: HttpLimits) -> Self {
        RequestParser {
            buf: BytesMut::new(),
            limits,
        }
    }
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.limits.max_body_bytes + self.limits.max_head_bytes {
            return Err(HttpError {
                status: 413,
                message: "too big",
            });
        }
        Ok(())
    }
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut h);
        let n = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(_) => return Ok(None),
            Err(_) => {
                return Err(HttpError {
                    status: 400,
                    message: "bad request",
                });
            }
        };
        let mut cl = 0;
        let mut ka = req.version == Some(1);
        let mut auth = None;
        for hd in req.headers.iter() {
            let v = String::from_utf8_lossy(hd.value).to_string();
            if hd.name.eq_ignore_ascii_case("content-length") {
                cl = v.trim().parse().map_err(|_| HttpError {
                    status: 400,
                    message: "bad length",
                })?;
            }
            if hd.name.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                ka = false
            }
            if hd.name.eq_ignore_ascii_case("authorization") {
                auth = Some(v)
            }
        }
        if self.buf.len() < n + cl {
            return Ok(None);
        }
        let method = match req.method {
            Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            Some("HEAD") => Method::Head,
            _ => Method::Other,
        };
        let full = req.path.unwrap_or("/").to_string();
        let (path, q) = full
            .split_once('?')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap_or((full.clone(), String::new()));
        let query = q
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.replace("%20", " ").replace("%2F", "/"))
            })
            .collect();
        let _ = self.buf.split_to(n);
        let body: Bytes = self.buf.split_to(cl).freeze();
        Ok(Some(Request {
            method,
            path,
            query,
            authorization: auth,
            content_type: None,
            keep_alive: ka,
            body,
        }))
    }
    pub fn take_expect_continue(&mut self) -> bool {
        false
    }
}
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    out.extend_from_slice(format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n", body.len(), if keep_alive {"keep-alive"} else {"close"}).as_bytes());
    for (k, v) in extra_headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}
pub fn write_error(out: &mut Vec<u8>, status: u16, message: &str, keep_alive: bool) {
    write_response(
        out,
        status,
        "application/json",
        serde_json::json!({"error": message}).to_string().as_bytes(),
        keep_alive,
        &[],
    )
}
pub fn bearer_token_matches(authorization: Option<&str>, expected: &str) -> bool {
    authorization == Some(&format!("Bearer {expected}"))
}
