//! The plain-HTTP side of the WebSocket port: the live demo page at `/` (with its script and
//! style as files of their own, so its Content-Security-Policy needs no inline code) and the
//! browser client module `/wspush.js`. The files are in `src/app/static/`, embedded at build
//! time; each answer is whole, with `Connection: close`, as the port serves one request per
//! connection.

use std::fmt::Write;

use super::sha256;
use crate::wire::http::{self, Head};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A strong validator: the start of the body's SHA-256, computed once at start.
    etag: String,
    /// Whether it is part of the demo page (off with `--no-demo-page`) rather than the module.
    demo: bool,
}

/// The page's policy: only our own scripts, styles and connections (the WebSocket may be on
/// another port of this host, or behind a proxy on `wss:`), an inline SVG favicon, no frames,
/// no forms, no plugins.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                        connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const FILES: &[(&str, &str, &[u8], bool)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("static/index.html"),
        true,
    ),
    (
        "/demo.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/demo.js"),
        true,
    ),
    (
        "/demo.css",
        "text/css; charset=utf-8",
        include_bytes!("static/demo.css"),
        true,
    ),
    (
        "/wspush.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/wspush.js"),
        false,
    ),
];

/// The files the WebSocket port serves besides the upgrade.
pub struct Pages {
    assets: Vec<Asset>,
}

impl Pages {
    /// `demo_page`: whether `/` and its script and style are served (`/wspush.js` always is).
    pub fn new(demo_page: bool) -> Self {
        let assets = FILES
            .iter()
            .filter(|&&(.., demo)| demo_page || !demo)
            .map(|&(path, content_type, body, demo)| Asset {
                path,
                content_type,
                body,
                etag: etag(body),
                demo,
            })
            .collect();
        Pages { assets }
    }

    /// The complete response to a request for one of the files, `None` for another path.
    pub fn answer(&self, head: &Head<'_, '_>, path: &str) -> Option<Vec<u8>> {
        let asset = self.assets.iter().find(|a| a.path == path)?;
        let head_only = match head.method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let mut out = Vec::new();
                http::write_response(
                    &mut out,
                    405,
                    "application/json",
                    br#"{"error":"use GET or HEAD"}"#,
                    false,
                    &[("Allow", "GET, HEAD")],
                );
                return Some(out);
            }
        };
        let csp = if asset.demo && asset.path == "/" {
            PAGE_CSP
        } else {
            "default-src 'none'"
        };
        let fresh = head
            .values("if-none-match")
            .any(|value| matches_etag(value, &asset.etag));
        let mut out = String::with_capacity(400);
        let (status, reason) = if fresh {
            (304, "Not Modified")
        } else {
            (200, "OK")
        };
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nETag: {}\r\n\
             Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
             Content-Security-Policy: {csp}\r\nReferrer-Policy: no-referrer\r\n",
            asset.etag
        );
        if !fresh {
            // A 304 has no body and needs neither header (RFC 9110 §15.4.5).
            let _ = write!(
                out,
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                asset.content_type,
                asset.body.len()
            );
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !fresh && !head_only {
            out.extend_from_slice(asset.body);
        }
        Some(out)
    }
}

/// `"` + 16 hex digits of the body's SHA-256 + `"`.
fn etag(body: &[u8]) -> String {
    let digest = sha256::sha256(body);
    let mut tag = String::from("\"");
    for byte in &digest[..8] {
        let _ = write!(tag, "{byte:02x}");
    }
    tag.push('"');
    tag
}

/// Whether an `If-None-Match` value (`*`, or a list of entity tags, weak ones included: the
/// comparison is weak, RFC 9110 §13.1.2) names `etag`.
fn matches_etag(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(http::trim_ows)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pages: &Pages, request: &str) -> Option<String> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let head = http::parse_head(request.as_bytes(), &mut slots)
            .unwrap()
            .unwrap();
        let (path, _) = head.path_and_query();
        pages
            .answer(&head, path)
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn the_etag_is_revalidated_and_head_has_no_body() {
        let pages = Pages::new(true);
        let full = answer(&pages, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"), "{full}");
        let etag = full
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .unwrap()
            .to_owned();
        assert_eq!(etag.len(), 18, "{etag}");
        let revalidated = format!("GET / HTTP/1.1\r\nIf-None-Match: \"x\", W/{etag}\r\n\r\n");
        let not_modified = answer(&pages, &revalidated).unwrap();
        assert!(not_modified.starts_with("HTTP/1.1 304 "), "{not_modified}");
        assert!(not_modified.ends_with("\r\n\r\n") && !not_modified.contains("Content-Length"));
        let other = answer(&pages, "GET / HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n").unwrap();
        assert!(other.starts_with("HTTP/1.1 200 "));
        let head = answer(&pages, "HEAD / HTTP/1.1\r\n\r\n").unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: "));
        assert_eq!(head.len() + pages.assets[0].body.len(), full.len());
    }

    #[test]
    fn without_the_demo_only_the_module_is_served() {
        let pages = Pages::new(false);
        assert!(answer(&pages, "GET / HTTP/1.0\r\n\r\n").is_none());
        assert!(answer(&pages, "GET /demo.js HTTP/1.0\r\n\r\n").is_none());
        let module = answer(&pages, "GET /wspush.js HTTP/1.0\r\n\r\n").unwrap();
        assert!(module.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(module.contains("export class WspushClient"));
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let pages = Pages::new(true);
        let refused = answer(&pages, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(refused.starts_with("HTTP/1.1 405 "));
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"));
    }
}
