//! The client's address behind a reverse proxy, for log lines: CIDR ranges of trusted proxies
//! (`--trusted-proxy`) and the `X-Forwarded-For` / `X-Real-IP` headers they set.
//!
//! The rule: only when the TCP peer is inside a trusted range are the headers read at all, so
//! an untrusted client cannot choose the address it is logged under. `X-Forwarded-For` is
//! walked from the right (each proxy appends the address it received the request from) and the
//! first address that is not itself a trusted proxy is the client; the entries left of it were
//! written by whoever sent the request and prove nothing. Without that header, `X-Real-IP` is
//! taken. A malformed value is ignored and the peer's address stands.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IPv4 or IPv6 range, `ADDR/LEN`; a bare address is the range of just that address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The range's first address (host bits cleared).
    network: IpAddr,
    prefix_len: u8,
}

/// Why a `--trusted-proxy` value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrError {
    BadAddress,
    BadPrefixLength,
}

impl CidrError {
    /// What was expected instead, as configuration errors say it.
    pub fn expected(self) -> &'static str {
        match self {
            CidrError::BadAddress => "an IPv4 or IPv6 address, or a range ADDR/LEN",
            CidrError::BadPrefixLength => "ADDR/LEN with LEN 0-32 (IPv4) or 0-128 (IPv6)",
        }
    }
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}", self.expected())
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| CidrError::BadAddress)?;
        let max_len = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max_len,
            // Digits only: `u8::from_str` would take a leading `+`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| CidrError::BadPrefixLength)?
            }
            Some(_) => return Err(CidrError::BadPrefixLength),
        };
        if prefix_len > max_len {
            return Err(CidrError::BadPrefixLength);
        }
        let network = match address {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix_len))),
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an
/// IPv4 peer) as the IPv4 address it is; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// The `--trusted-proxy` ranges (none by default: the headers are never read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        TrustedProxies { ranges }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[Cidr] {
        &self.ranges
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }

    /// The client's address as a trusted proxy reports it in the values of
    /// `X-Forwarded-For` (all its headers, in order, joined by commas as RFC 9110 allows) or
    /// `X-Real-IP`; `None` when `peer` is not trusted, the headers are absent or malformed, or
    /// they name only trusted proxies.
    pub fn forwarded_client(
        &self,
        peer: IpAddr,
        forwarded_for: Option<&str>,
        real_ip: Option<&str>,
    ) -> Option<IpAddr> {
        if !self.trusts(peer) {
            return None;
        }
        if let Some(list) = forwarded_for {
            let mut client = None;
            for entry in list.rsplit(',') {
                // One bad entry makes the whole chain untrustworthy: fall back to the peer.
                let ip = parse_forwarded_ip(entry)?;
                if !self.trusts(ip) {
                    client = Some(ip);
                    break;
                }
            }
            return client;
        }
        parse_forwarded_ip(real_ip?)
    }
}

/// One address of a forwarding header: an IP, optionally bracketed (`[2001:db8::1]`), with
/// optional surrounding whitespace. Ports and obfuscated identifiers are refused.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches([' ', '\t']);
    let bare = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    bare.parse::<IpAddr>().ok().map(canonical)
}

/// A request's forwarding headers, as they arrived: every `X-Forwarded-For` joined by commas
/// (RFC 9110 §5.3), and `X-Real-IP` (a repeated one is kept as malformed: empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarding {
    pub forwarded_for: Option<String>,
    pub real_ip: Option<String>,
}

impl Forwarding {
    /// Takes one header if it is a forwarding header (true then).
    pub fn take(&mut self, name: &str, value: &str) -> bool {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            match &mut self.forwarded_for {
                Some(list) => {
                    list.push(',');
                    list.push_str(value);
                }
                None => self.forwarded_for = Some(value.to_owned()),
            }
            true
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            self.real_ip = Some(match self.real_ip {
                Some(_) => String::new(),
                None => value.to_owned(),
            });
            true
        } else {
            false
        }
    }

    /// The forwarding headers of a parsed head (values that are not UTF-8 count as empty,
    /// that is malformed).
    pub fn from_headers(headers: &[httparse::Header<'_>]) -> Self {
        let mut forwarding = Forwarding::default();
        for h in headers {
            forwarding.take(h.name, std::str::from_utf8(h.value).unwrap_or(""));
        }
        forwarding
    }

    /// The client's address for a connection from `peer` (see the module doc for the rule).
    pub fn client(&self, trusted: &TrustedProxies, peer: Option<SocketAddr>) -> ClientAddr {
        ClientAddr::resolve(
            trusted,
            peer,
            self.forwarded_for.as_deref(),
            self.real_ip.as_deref(),
        )
    }
}

/// Where a connection comes from, as log lines show it: the TCP peer, and the client's address
/// when a trusted proxy forwarded it (`203.0.113.7 (via 127.0.0.1:5555)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    pub peer: Option<SocketAddr>,
    pub forwarded: Option<IpAddr>,
}

impl ClientAddr {
    /// The address of a connection from `peer` whose request carried these headers.
    pub fn resolve(
        trusted: &TrustedProxies,
        peer: Option<SocketAddr>,
        forwarded_for: Option<&str>,
        real_ip: Option<&str>,
    ) -> Self {
        let forwarded = match peer {
            Some(peer) if !trusted.is_empty() => {
                trusted.forwarded_client(peer.ip(), forwarded_for, real_ip)
            }
            _ => None,
        };
        ClientAddr { peer, forwarded }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.forwarded, self.peer) {
            (Some(client), Some(peer)) => write!(f, "{client} (via {peer})"),
            (Some(client), None) => write!(f, "{client}"),
            (None, Some(peer)) => write!(f, "{peer}"),
            (None, None) => f.write_str("an unknown address"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_ranges_and_bare_addresses() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(cidr("2001:db8:ff::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn refuses_bad_ranges() {
        for (text, error) in [
            ("10.0.0.0/33", CidrError::BadPrefixLength),
            ("::/129", CidrError::BadPrefixLength),
            ("10.0.0.0/", CidrError::BadPrefixLength),
            ("10.0.0.0/+8", CidrError::BadPrefixLength),
            ("10.0.0.0/-1", CidrError::BadPrefixLength),
            ("10.0.0.0/8/8", CidrError::BadPrefixLength),
            ("10.0.0.0/0008", CidrError::BadPrefixLength),
            ("10.0.0/8", CidrError::BadAddress),
            ("localhost", CidrError::BadAddress),
            ("", CidrError::BadAddress),
            ("[::1]", CidrError::BadAddress),
        ] {
            assert_eq!(text.parse::<Cidr>(), Err(error), "{text}");
        }
    }

    #[test]
    fn membership_at_the_edges() {
        let everything = cidr("0.0.0.0/0");
        assert!(everything.contains(ip("255.255.255.255")));
        assert!(everything.contains(ip("0.0.0.0")));
        assert!(!everything.contains(ip("::1")), "IPv4 ranges hold no IPv6");
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        let host = cidr("192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
        let v6_host = cidr("2001:db8::7/128");
        assert!(v6_host.contains(ip("2001:db8::7")));
        assert!(!v6_host.contains(ip("2001:db8::8")));
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        let v6_net = cidr("fd00::/8");
        assert!(v6_net.contains(ip("fdff::1")));
        assert!(!v6_net.contains(ip("fe00::1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let loopback = cidr("127.0.0.0/8");
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("::ffff:128.0.0.1")));
        // The IPv4-compatible form (`::127.0.0.1`, deprecated) is not an IPv4 address.
        assert!(!loopback.contains(ip("::7f00:1")));
    }

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| cidr(r)).collect())
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let client = |xff, xri| trusted.forwarded_client(peer, xff, xri);
        assert_eq!(client(Some("203.0.113.7"), None), Some(ip("203.0.113.7")));
        // A forged left-most entry is passed over: the right-most untrusted one is the client.
        assert_eq!(
            client(Some("1.2.3.4, 203.0.113.7, 10.0.0.5"), None),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client(Some(" [2001:db8::9] ,10.1.1.1"), None),
            Some(ip("2001:db8::9"))
        );
        assert_eq!(
            client(Some("::ffff:203.0.113.7"), None),
            Some(ip("203.0.113.7"))
        );
        // Only proxies: nothing better than the peer.
        assert_eq!(client(Some("10.0.0.1, 127.0.0.1"), None), None);
        // Malformed values fall back to the peer.
        for bad in [
            "",
            "unknown",
            "203.0.113.7:443",
            "203.0.113.7,,10.0.0.1",
            "_hidden",
        ] {
            assert_eq!(client(Some(bad), None), None, "{bad:?}");
        }
        // X-Forwarded-For wins; X-Real-IP only without it.
        assert_eq!(
            client(Some("203.0.113.7"), Some("198.51.100.1")),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(client(None, Some("198.51.100.1")), Some(ip("198.51.100.1")));
        assert_eq!(client(None, Some("not an address")), None);
        assert_eq!(client(None, None), None);
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let trusted = proxies(&["127.0.0.1"]);
        assert_eq!(
            trusted.forwarded_client(ip("192.0.2.1"), Some("203.0.113.7"), Some("203.0.113.7")),
            None
        );
        assert_eq!(
            TrustedProxies::default().forwarded_client(ip("127.0.0.1"), Some("203.0.113.7"), None),
            None
        );
    }

    #[test]
    fn addresses_as_log_lines_show_them() {
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let trusted = proxies(&["127.0.0.1"]);
        let via = ClientAddr::resolve(&trusted, Some(peer), Some("203.0.113.7"), None);
        assert_eq!(via.to_string(), "203.0.113.7 (via 127.0.0.1:5555)");
        let direct = ClientAddr::resolve(&trusted, Some(peer), None, None);
        assert_eq!(direct.to_string(), "127.0.0.1:5555");
    }

    #[test]
    fn repeated_headers() {
        let headers = [
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"1.2.3.4",
            },
            httparse::Header {
                name: "x-forwarded-for",
                value: b"203.0.113.7",
            },
            httparse::Header {
                name: "X-Real-IP",
                value: b"198.51.100.1",
            },
        ];
        let forwarding = Forwarding::from_headers(&headers);
        assert_eq!(
            forwarding.forwarded_for.as_deref(),
            Some("1.2.3.4,203.0.113.7")
        );
        let peer = Some("127.0.0.1:1".parse().unwrap());
        let trusted = proxies(&["127.0.0.1"]);
        assert_eq!(
            forwarding.client(&trusted, peer).forwarded,
            Some(ip("203.0.113.7"))
        );
        let mut twice = Forwarding::default();
        twice.take("X-Real-IP", "198.51.100.1");
        twice.take("X-Real-IP", "198.51.100.2");
        assert_eq!(twice.client(&trusted, peer).forwarded, None, "ambiguous");
    }
}
