//! Strict HTTP/1.1 on both ports: requests two parsers could read differently are refused
//! (400 and close) instead of published; head limits hold for complete requests too; the query
//! token is percent-decoded.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::*;

/// Sends `request` (in the given pieces) and returns everything the server sent before closing.
fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    for piece in pieces {
        // The server may answer and close before everything is written.
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    read_until_closed(&mut stream)
}

/// The request is refused with 400 and `Connection: close`, the connection is closed, and the
/// subscriber of `t` got nothing.
fn assert_refused(server: &TestServer, sub: &mut Client, request: &[u8]) {
    let reply = exchange(server.api, &[request]);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 400 ") && text.contains("\r\nConnection: close\r\n"),
        "{:?} got {text}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    assert_nothing_pending(sub);
}

#[test]
fn signed_lengths_and_chunk_sizes_are_refused() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: +1\r\n\r\n7",
    );
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\n7\r\n0\r\n\r\n",
    );
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n7\r\n0\r\n\r\n",
    );
    // A well-formed request still publishes.
    assert_eq!(server.publish("t", "7")["subscribers"], 1);
    assert_eq!(next_json(&mut sub)["data"], 7);
}

#[test]
fn unicode_spaces_are_not_optional_whitespace() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \xc2\xa01\r\n\r\n7",
    );
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: \xc2\xa0chunked\r\n\r\n1\r\n7\r\n0\r\n\r\n",
    );
    // Tabs are optional whitespace.
    let reply = exchange(
        server.api,
        &[b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length:\t1\t\r\n\r\n7"],
    );
    assert_eq!(parse_response(&reply).0, 200);
    assert_eq!(next_json(&mut sub)["data"], 7);
}

#[test]
fn api_heads_with_a_bare_lf_are_refused() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 1\n\nX\r\n\r\n7",
    );
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\nX-Hidden: y\r\n\r\n7",
    );
    assert_refused(
        &server,
        &mut sub,
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\nContent-Type: application/json\nContent-Length: 1\r\n\r\n7",
    );
}

#[test]
fn chunk_lines_end_in_crlf_exactly() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    for body in [
        &b"1\n7\r\n0\r\n\r\n"[..],
        b"1;a\nb\r\n7\r\n0\r\n\r\n",
        b"1\r\n7\r\n0\r\nX: y\n\r\n",
        b"1 x\r\n7\r\n0\r\n\r\n",
    ] {
        let mut request =
            b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        request.extend_from_slice(body);
        assert_refused(&server, &mut sub, &request);
    }
}

#[test]
fn conflicting_framing_is_refused() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    for headers in [
        &b"Content-Length: 1\r\nContent-Length: 2\r\n"[..],
        b"Content-Length: 1, 1\r\n",
        b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let mut request =
            b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                .to_vec();
        request.extend_from_slice(headers);
        request.extend_from_slice(b"\r\n1\r\n7\r\n0\r\n\r\n");
        assert_refused(&server, &mut sub, &request);
    }
}

fn upgrade_with_header(line: &str) -> Vec<u8> {
    let mut request = HANDSHAKE_REQUEST.to_vec();
    let at = request.len() - 2;
    request.splice(at..at, line.bytes());
    request
}

fn status(reply: &[u8]) -> u16 {
    parse_response(reply).0
}

/// The status of the answer to an upgrade request, without waiting for the connection to end
/// (a session would only end at the subscribe timeout).
fn first_status(server: &TestServer, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).unwrap();
    status(&head)
}

#[test]
fn upgrade_heads_with_a_bare_lf_are_refused() {
    let server = TestServer::start();
    let good = std::str::from_utf8(HANDSHAKE_REQUEST).unwrap();
    for request in [
        good.replace("\r\n", "\n"),
        good.replacen("Host: x\r\n", "Host: x\n", 1),
        good.replacen("\r\n\r\n", "\r\n\n", 1),
    ] {
        let reply = exchange(server.ws, &[request.as_bytes()]);
        assert_eq!(
            status(&reply),
            400,
            "{request:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    let mut ws = connect(&server);
    assert_nothing_pending(&mut ws);
}

#[test]
fn upgrade_header_values_are_trimmed_of_sp_and_htab_only() {
    let server = TestServer::start();
    let good = std::str::from_utf8(HANDSHAKE_REQUEST).unwrap();
    let nbsp = good.replacen("Sec-WebSocket-Key: ", "Sec-WebSocket-Key: \u{a0}", 1);
    assert_eq!(status(&exchange(server.ws, &[nbsp.as_bytes()])), 400);
    let tabs = good.replacen(
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Version:\t13\t",
        1,
    );
    assert_eq!(first_status(&server, tabs.as_bytes()), 101);
}

#[test]
fn complete_upgrade_requests_over_16_kib_get_431() {
    let server = TestServer::start();
    for size in [16 * 1024, 40 * 1024] {
        let request = upgrade_with_header(&format!("X-Big: {}\r\n", "a".repeat(size)));
        let reply = exchange(server.ws, &[&request]);
        assert_eq!(status(&reply), 431, "{size} in one write");
        // The first piece alone is under the limit: the second completes the request.
        let (first, second) = request.split_at(8 * 1024);
        let reply = exchange(server.ws, &[first, second]);
        assert_eq!(status(&reply), 431, "{size} in two writes");
    }
    // Just under the limit is still fine.
    let filler = 16 * 1024 - HANDSHAKE_REQUEST.len() - "X-Big: \r\n".len();
    let request = upgrade_with_header(&format!("X-Big: {}\r\n", "a".repeat(filler)));
    assert_eq!(request.len(), 16 * 1024);
    assert_eq!(first_status(&server, &request), 101);
}

#[test]
fn complete_api_requests_over_the_head_limit_get_431() {
    let server = TestServer::start();
    let mut sub = subscriber(&server, &["t"]);
    let request = format!(
        "POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Big: {}\r\nContent-Length: 1\r\n\r\n7",
        "a".repeat(9 * 1024)
    );
    let (first, second) = request.as_bytes().split_at(4096);
    for pieces in [&[request.as_bytes()][..], &[first, second]] {
        let reply = exchange(server.api, pieces);
        assert_eq!(status(&reply), 431, "{}", String::from_utf8_lossy(&reply));
    }
    assert_nothing_pending(&mut sub);
}

fn token_server(token: &str) -> TestServer {
    let mut config = test_config();
    config.client_token = Some(token.to_owned());
    TestServer::with(config)
}

fn upgrade_status(server: &TestServer, target: &str) -> u16 {
    let good = std::str::from_utf8(HANDSHAKE_REQUEST).unwrap();
    let request = good.replacen("GET /ws ", &format!("GET {target} "), 1);
    first_status(server, request.as_bytes())
}

#[test]
fn the_query_token_is_percent_decoded() {
    let server = token_server("p%ss+w&rd");
    assert_eq!(upgrade_status(&server, "/ws?token=p%25ss%2Bw%26rd"), 101);
    assert_eq!(
        upgrade_status(&server, "/ws?x=1&token=p%25ss%2bw%26rd&y"),
        101
    );
    // `+` is a space in a query.
    assert_eq!(upgrade_status(&server, "/ws?token=p%25ss+w%26rd"), 401);
    assert_eq!(upgrade_status(&server, "/ws?token=p%25ss%2Bw"), 401);
    // No token at all: the first message must bring it (tests/first_message.rs).
    assert_eq!(upgrade_status(&server, "/ws"), 101);
    let server = token_server("a+b c");
    assert_eq!(upgrade_status(&server, "/ws?token=a%2Bb+c"), 101);
    assert_eq!(upgrade_status(&server, "/ws?token=a%2Bb%20c"), 101);
    assert_eq!(upgrade_status(&server, "/ws?token=a+b+c"), 401);
}

#[test]
fn malformed_escapes_in_the_query_token_are_refused() {
    let server = token_server("p%ss+w&rd");
    for target in [
        "/ws?token=p%ss+w&rd",
        "/ws?token=%zz",
        "/ws?token=%",
        "/ws?token=%2",
        "/ws?token=%ff",
    ] {
        let status = upgrade_status(&server, target);
        assert!(status == 400 || status == 401, "{target}: {status}");
    }
    // The server is still up and the header form still works.
    let request = upgrade_with_header("Authorization: Bearer p%ss+w&rd\r\n");
    assert_eq!(first_status(&server, &request), 101);
}
