//! The WebSocket opening handshake (RFC 6455 §4), without I/O.
//!
//! Server side: [`read_request`] checks an upgrade request (parsed by [`super::http`]) in the
//! bytes received so far, [`accept_response`] builds the 101. Client side: [`client_request`] and
//! [`read_response`]. Parsing never panics on any input: short input is `Ok(None)`, anything else
//! an [`HttpError`] with the status to answer.
//!
//! SHA-1 and base64 live here because the handshake is their only use. SHA-1 protects nothing
//! in RFC 6455: it only proves that the server read this client's key, so a small plain
//! implementation is enough (and saves the dependency tree of a crypto crate).

/// The largest request (or response) head: browsers send 0.5–2 KiB, cookies can add 8 KiB. A
/// request head over it is refused with 431, whether it is complete or not.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers per request or response; more is refused with 431.
const MAX_HEADERS: usize = http::MAX_HEADER_SLOTS;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

use super::http::{self, HttpError};

fn reject(status: u16, message: &'static str) -> HttpError {
    HttpError { status, message }
}

/// A well-formed upgrade request: what the server's policy needs to decide on it.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// `Sec-WebSocket-Key`, checked to be 16 bytes in base64.
    pub key: &'a str,
}

/// Parses an upgrade request at the start of `input`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((request, length)))`: the request occupies `input[..length]`.
pub fn read_request(input: &[u8]) -> Result<Option<(UpgradeRequest<'_>, usize)>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(parsed) = parse_request_head(input, &mut slots)? else {
        return Ok(None);
    };
    let length = parsed.len;
    upgrade_request(&parsed).map(|request| Some((request, length)))
}

/// The head of a request on the WebSocket port, held to [`MAX_HEAD_BYTES`] (431) whether it is
/// complete or not. `Ok(None)`: incomplete and still under the limit.
pub fn parse_request_head<'h, 'b>(
    input: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
) -> Result<Option<http::Head<'h, 'b>>, HttpError> {
    let too_large = reject(431, "request header too large");
    // One byte past the limit is enough to tell, and bounds the work per read.
    let window = &input[..input.len().min(MAX_HEAD_BYTES + 1)];
    match http::parse_head(window, slots) {
        Ok(Some(head)) if head.len > MAX_HEAD_BYTES => Err(too_large),
        Ok(Some(head)) => Ok(Some(head)),
        Ok(None) if window.len() > MAX_HEAD_BYTES => Err(too_large),
        Ok(None) => Ok(None),
        // The upgrade needs exactly HTTP/1.1: another version is a bad request, not a 505.
        Err(HttpError { status: 505, .. }) => Err(reject(400, "HTTP/1.1 is required")),
        Err(e) => Err(e),
    }
}

/// Checks that a parsed head is a well-formed WebSocket upgrade (method, version, the upgrade
/// headers, a valid key) and picks out what the server's policy needs.
pub fn upgrade_request<'b>(parsed: &http::Head<'_, 'b>) -> Result<UpgradeRequest<'b>, HttpError> {
    if parsed.method != "GET" {
        return Err(reject(405, "use GET for the WebSocket upgrade"));
    }
    if parsed.version != 1 {
        return Err(reject(400, "HTTP/1.1 is required"));
    }
    let (path, query) = parsed.path_and_query();
    let one = |name: &str| -> Result<Option<&str>, HttpError> {
        let mut values = parsed.values(name);
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(reject(400, "a header the upgrade needs is repeated"));
        }
        std::str::from_utf8(first)
            .map(|v| Some(http::trim_ows(v)))
            .map_err(|_| reject(400, "a header the upgrade needs is not UTF-8"))
    };
    // `Connection: keep-alive, Upgrade` and repeated headers both list tokens.
    let lists = |name: &str, token: &str| {
        parsed
            .values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| http::trim_ows_bytes(t).eq_ignore_ascii_case(token.as_bytes()))
    };
    if !lists("connection", "upgrade") || !lists("upgrade", "websocket") {
        return Err(reject(426, "this endpoint only speaks WebSocket"));
    }
    if one("sec-websocket-version")? != Some("13") {
        return Err(reject(426, "only WebSocket version 13 is supported"));
    }
    if one("host")?.is_none() {
        return Err(reject(400, "missing Host header"));
    }
    let key = one("sec-websocket-key")?.unwrap_or("");
    if !is_key(key) {
        return Err(reject(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let request = UpgradeRequest {
        path,
        query,
        origin: one("origin")?,
        authorization: one("authorization")?,
        key,
    };
    Ok(request)
}

/// 16 bytes in base64: 22 characters of the alphabet, then `==`.
fn is_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key.as_bytes()[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The 101 response that completes the upgrade for `key`.
pub fn accept_response(key: &str) -> Vec<u8> {
    let mut response = Vec::with_capacity(129);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(GUID);
    base64(&sha1(&input))
}

/// A client's upgrade request. `host` is sent as given (with `:port` when it is not 80).
pub fn client_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// [`client_request`] with `Authorization: Bearer <token>` (`token` must be a valid header
/// value: visible ASCII, see [`is_header_token`]).
pub fn client_request_with_bearer(host: &str, path: &str, key: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// Whether `token` can go in an `Authorization: Bearer` header unchanged: non-empty visible
/// ASCII without spaces (no CR or LF to split the request).
pub fn is_header_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh `Sec-WebSocket-Key` from 16 bytes the caller drew at random.
pub fn client_key(random: [u8; 16]) -> String {
    base64(&random)
}

/// Why a server's answer to an upgrade request is not a valid 101.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    Malformed,
    TooLarge,
    /// Not 101: the server refused (the status it sent).
    Status(u16),
    NotWebSocket,
    WrongAccept,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => write!(f, "malformed HTTP response"),
            Self::TooLarge => write!(f, "HTTP response too large"),
            Self::Status(status) => write!(f, "server answered HTTP {status}"),
            Self::NotWebSocket => write!(f, "101 without the WebSocket upgrade headers"),
            Self::WrongAccept => write!(f, "wrong Sec-WebSocket-Accept"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Checks the server's answer for `key`. `Ok(None)`: incomplete. `Ok(Some(length))`: upgraded;
/// `input[length..]` already belongs to the WebSocket.
pub fn read_response(input: &[u8], key: &str) -> Result<Option<usize>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let length = match parsed.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD_BYTES => {
            return Err(ResponseError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Malformed),
    };
    match parsed.code {
        Some(101) => {}
        Some(status) => return Err(ResponseError::Status(status)),
        None => return Err(ResponseError::Malformed),
    }
    let value = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    };
    let is = |name: &str, token: &str| {
        value(name).is_some_and(|v| v.eq_ignore_ascii_case(token.as_bytes()))
    };
    if !is("upgrade", "websocket") || !is("connection", "upgrade") {
        return Err(ResponseError::NotWebSocket);
    }
    if value("sec-websocket-accept") != Some(accept_key(key).as_bytes()) {
        return Err(ResponseError::WrongAccept);
    }
    Ok(Some(length))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (FIPS 180-4), for the handshake only.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut state: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let bit_length = (data.len() as u64).wrapping_mul(8);
    // The last partial block, a 0x80 byte, zeros up to 56 mod 64, then the length in bits: one
    // or two blocks, on the stack (this runs once per connection).
    let whole = data.len() - data.len() % 64;
    let rest = &data[whole..];
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < 56 { 64 } else { 128 };
    tail[tail_len - 8..tail_len].copy_from_slice(&bit_length.to_be_bytes());
    for block in data[..whole]
        .chunks_exact(64)
        .chain(tail[..tail_len].chunks_exact(64))
    {
        sha1_block(&mut state, block);
    }
    let mut digest = [0u8; 20];
    for (out, word) in digest.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

fn sha1_block(state: &mut [u32; 5], block: &[u8]) {
    let mut w = [0u32; 80];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..80 {
        w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
    }
    let [mut a, mut b, mut c, mut d, mut e] = *state;
    for (i, &word) in w.iter().enumerate() {
        let (f, k) = match i {
            0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
            20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
            40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
            _ => (b ^ c ^ d, 0xCA62_C1D6),
        };
        let t = a
            .rotate_left(5)
            .wrapping_add(f)
            .wrapping_add(e)
            .wrapping_add(k)
            .wrapping_add(word);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = t;
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e]) {
        *s = s.wrapping_add(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n\r\n";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_fips_examples() {
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let cases: [(&[u8], &str); 3] = [
            (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (long, "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
        ];
        for (input, digest) in cases {
            assert_eq!(hex(&sha1(input)), digest);
        }
        // One million bytes, and lengths around the padding boundary.
        for (n, digest) in [
            (1_000_000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
            (55, "c1c8bbdc22796e28c0e15163d20899b65621d65a"),
            (56, "c2db330f6083854c99d4b5bfb6e8f29f201be699"),
            (63, "03f09f5b158a7a8cdad920bddc29b81c18a551f5"),
            (64, "0098ba824b5c16427bd7a1122a5a442a25ec644d"),
        ] {
            assert_eq!(hex(&sha1(&vec![b'a'; n])), digest, "{n} bytes");
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_browser_like_request_is_read_whole() {
        let (request, length) = read_request(REQUEST).unwrap().unwrap();
        assert_eq!(length, REQUEST.len());
        assert_eq!(
            request,
            UpgradeRequest {
                path: "/ws",
                query: Some("token=t"),
                origin: Some("https://app.example"),
                authorization: None,
                key: "dGhlIHNhbXBsZSBub25jZQ==",
            }
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_nothing_panics() {
        for end in 0..REQUEST.len() {
            assert_eq!(
                read_request(&REQUEST[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    fn status_of(request: &str) -> u16 {
        match read_request(request.as_bytes()) {
            Ok(Some(_)) => 101,
            Ok(None) => 0,
            Err(rejection) => rejection.status,
        }
    }

    #[test]
    fn bad_requests_get_their_status() {
        let good = std::str::from_utf8(REQUEST).unwrap();
        assert_eq!(status_of(good), 101);
        let cases = [
            ("GET /ws?token=t HTTP/1.1", "POST /ws HTTP/1.1", 405),
            ("HTTP/1.1", "HTTP/1.0", 400),
            ("Upgrade: websocket", "Upgrade: h2c", 426),
            ("keep-alive, Upgrade", "keep-alive", 426),
            ("Version: 13", "Version: 8", 426),
            ("Host: x\r\n", "", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "short==", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZ!==", 400),
            (
                "Host: x\r\n",
                "Host: x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                400,
            ),
            ("Host: x", "Host x", 400),
        ];
        for (from, to, status) in cases {
            assert_eq!(
                status_of(&good.replacen(from, to, 1)),
                status,
                "{from} -> {to}"
            );
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status_of(&good.replacen("Host: x\r\n", &format!("Host: x\r\n{many}"), 1)),
            431
        );
    }

    #[test]
    fn bare_lf_and_unicode_spaces_are_refused() {
        let good = std::str::from_utf8(REQUEST).unwrap();
        for request in [
            good.replace("\r\n", "\n"),
            good.replacen("Host: x\r\n", "Host: x\n", 1),
            good.replacen("\r\n\r\n", "\r\n\n", 1),
            good.replacen("Sec-WebSocket-Key: ", "Sec-WebSocket-Key: \u{a0}", 1),
            good.replacen(
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25jZQ==\u{a0}",
                1,
            ),
        ] {
            assert_eq!(status_of(&request), 400, "{request:?}");
        }
        let nbsp_version = good.replacen("Version: 13", "Version: \u{a0}13", 1);
        assert_eq!(status_of(&nbsp_version), 426);
        let nbsp_upgrade = good.replacen("Upgrade: websocket", "Upgrade: \u{a0}websocket", 1);
        assert_eq!(status_of(&nbsp_upgrade), 426);
        // A bare LF is refused before the request is complete.
        let partial = good.replacen("Host: x\r\n", "Host: x\n", 1);
        assert_eq!(status_of(&partial[..partial.len() / 2]), 400);
        let tabs = good.replacen("Version: 13", "Version:\t13\t", 1);
        assert_eq!(status_of(&tabs), 101);
    }

    #[test]
    fn the_head_limit_holds_for_complete_requests() {
        let good = std::str::from_utf8(REQUEST).unwrap();
        let with_filler = |total: usize| {
            let filler = total - REQUEST.len() - "X: \r\n".len();
            good.replacen(
                "Host: x\r\n",
                &format!("Host: x\r\nX: {}\r\n", "a".repeat(filler)),
                1,
            )
        };
        assert_eq!(status_of(&with_filler(MAX_HEAD_BYTES)), 101);
        assert_eq!(status_of(&with_filler(MAX_HEAD_BYTES + 1)), 431);
        assert_eq!(status_of(&with_filler(40 * 1024)), 431);
        // Incomplete: waits up to the limit, refuses past it.
        let long = with_filler(40 * 1024);
        assert_eq!(status_of(&long[..MAX_HEAD_BYTES]), 0);
        assert_eq!(status_of(&long[..MAX_HEAD_BYTES + 1]), 431);
    }

    #[test]
    fn the_absolute_form_of_the_target_is_understood() {
        let good = std::str::from_utf8(REQUEST).unwrap();
        for (target, path, query) in [
            ("ws://push.example:8091/ws?token=t", "/ws", Some("token=t")),
            ("http://push.example/ws", "/ws", None),
            ("ws://push.example", "/", None),
            // The origin form with a URL in its query (the demo page's `?url=`).
            (
                "/ws?url=ws://push.example/ws",
                "/ws",
                Some("url=ws://push.example/ws"),
            ),
        ] {
            let request = good.replacen("/ws?token=t", target, 1);
            let (parsed, _) = read_request(request.as_bytes()).unwrap().unwrap();
            assert_eq!((parsed.path, parsed.query), (path, query), "{target}");
        }
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let request = "GET /ws HTTP/1.1\r\nhost: x\r\nUPGRADE: WebSocket\r\nconnection: upgrade\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
        assert_eq!(status_of(request), 101);
    }

    #[test]
    fn the_client_side_agrees_with_the_server_side() {
        let key = client_key(*b"0123456789abcdef");
        let request = client_request("localhost:8080", "/ws", &key);
        let (parsed, _) = read_request(&request).unwrap().unwrap();
        assert_eq!(parsed.key, key);
        let mut response = accept_response(parsed.key);
        let length = response.len();
        response.extend_from_slice(b"\x81\x02hi");
        assert_eq!(read_response(&response, &key), Ok(Some(length)));
        assert_eq!(read_response(&response[..length - 1], &key), Ok(None));
        let other = client_key(*b"fedcba9876543210");
        assert_eq!(
            read_response(&response, &other),
            Err(ResponseError::WrongAccept)
        );
        assert_eq!(
            read_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", &key),
            Err(ResponseError::Status(503))
        );
    }
}
