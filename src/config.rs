//! Server configuration: every setting with its default, validation, and the parser that reads
//! the `wspush` binary's flags and `WSPUSH_*` environment variables (hand-written to keep the
//! dependency tree small).
//!
//! Each setting is one entry of `SETTINGS`: its flag, environment variable, value name,
//! default, help line and the function that parses, checks and applies a value. The defaults
//! (`Config::default()`), the parser and `--help` are all generated from that table, so a setting
//! cannot be documented with one default and run with another.

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::wire::forwarded::Cidr;

/// What to do with a subscriber whose outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close it with 1013 (try again later): it reconnects and can catch up from a clean state.
    Close,
    /// Keep it, drop the pushes that do not fit, and count them in `/stats`.
    Drop,
}

/// Debug is written by hand (below) so the tokens never reach a log or a panic message.
#[derive(Clone)]
pub struct Config {
    /// WebSocket listener. Default `0.0.0.0:8091`, as the seed.
    pub listen: SocketAddr,
    /// Backend HTTP API listener; `None` disables the API. Default `127.0.0.1:8092`.
    pub api_listen: Option<SocketAddr>,
    /// The WebSocket endpoint path. Default `/ws`, as the seed.
    pub path: String,
    /// Serve the live demo page at `/` of the WebSocket port (`--no-demo-page` turns it off;
    /// `/wspush.js` is served either way).
    pub demo_page: bool,
    /// Demo publisher: topic and interval, `None` when off. Default `test-topic` every 3 s, as
    /// the seed, which pushes `"publish msg"`.
    pub tick: Option<(String, Duration)>,
    /// A client silent for `heartbeat_interval + heartbeat_timeout` is closed. The seed's client
    /// pings every 10 s and the seed allows 10 s more.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// A socket that makes no write progress for this long is closed (the seed's write deadline).
    pub write_timeout: Duration,
    /// Time allowed from TCP accept to the first subscription (covers the handshake).
    pub handshake_timeout: Duration,
    /// WebSocket connections, handshakes included. Excess connections get HTTP 503.
    pub max_connections: usize,
    /// Largest client message and frame. Default 64 KiB: clients only send small commands.
    pub max_message_size: usize,
    /// Byte cap of each session's outbound queue. Default 256 KiB: about 1,800 pushes of 100 bytes.
    pub outbound_cap: usize,
    pub slow_consumer: SlowConsumerPolicy,
    /// Topics one connection may hold. Default 100.
    pub max_topics_per_connection: usize,
    /// Longest topic name in bytes. Default 128.
    pub max_topic_length: usize,
    /// Bearer token required by the API, if any. Required when the API listens off loopback.
    pub api_token: Option<String>,
    /// Largest API request body. Default 1 MiB.
    pub api_max_body: usize,
    /// Time from an API request's first byte to its last (408 and close after it).
    pub api_request_timeout: Duration,
    /// Echo mode for protocol conformance testing only: every message comes back unchanged.
    pub echo: bool,
    pub log_level: log::LevelFilter,
    /// How the binaries' logger prints a record (the library installs no logger).
    pub log_format: LogFormat,
    /// Browser origins allowed to open WebSockets (403 otherwise); empty: any.
    pub allowed_origins: Vec<String>,
    /// Token clients must present at the handshake (`?token=` or `Authorization: Bearer`).
    pub client_token: Option<String>,
    /// Browser origins allowed to call the API; a request with any other `Origin` gets 403.
    /// Empty: no request that carries an `Origin` header is served.
    pub api_allowed_origins: Vec<String>,
    /// HMAC-SHA256 key that signs subscription claims for private topics.
    pub subscribe_secret: Option<String>,
    /// Topics starting with this need a signed claim; `None`: every topic is public.
    pub private_prefix: Option<String>,
    /// Messages held per topic for resumes and `GET /history`; 0 turns history and positions
    /// off. Default 100.
    pub history_size: usize,
    /// How long a held message is kept. Default 5 minutes.
    pub history_ttl: Duration,
    /// One cap on the bytes all held messages take (frames plus 52 B each). Default 16 MiB.
    pub history_memory: usize,
    /// `GET /metrics` adds per-topic series for topics starting with each of these; empty:
    /// none (one series per topic could be millions).
    pub metrics_topic_prefixes: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` name the client in log lines;
    /// empty: the headers are ignored and the TCP peer is logged.
    pub trusted_proxies: Vec<Cidr>,
    /// One summary line at info per interval; `None` (the default): no line, and no timer.
    pub stats_log_interval: Option<Duration>,
}

impl Default for Config {
    /// The defaults of `SETTINGS`, the same text `--help` shows.
    fn default() -> Self {
        let mut config = Config::placeholders();
        for setting in SETTINGS {
            if let Kind::Value(apply) = setting.kind {
                // Constant input that cannot fail: the test `every_default_applies` runs each one.
                let _ = apply(&mut config, setting.default);
            }
        }
        config
    }
}

impl Config {
    /// What `default()` starts from: every value setting's default overwrites its field, while
    /// switches stay off, lists empty and tokens unset, which are their defaults.
    fn placeholders() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            api_listen: None,
            path: String::new(),
            demo_page: true,
            tick: None,
            heartbeat_interval: Duration::ZERO,
            heartbeat_timeout: Duration::ZERO,
            write_timeout: Duration::ZERO,
            handshake_timeout: Duration::ZERO,
            max_connections: 0,
            max_message_size: 0,
            outbound_cap: 0,
            slow_consumer: SlowConsumerPolicy::Close,
            max_topics_per_connection: 0,
            max_topic_length: 0,
            api_token: None,
            api_max_body: 0,
            api_request_timeout: Duration::ZERO,
            echo: false,
            log_level: log::LevelFilter::Off,
            log_format: LogFormat::Text,
            allowed_origins: Vec::new(),
            client_token: None,
            api_allowed_origins: Vec::new(),
            subscribe_secret: None,
            private_prefix: None,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_memory: 0,
            metrics_topic_prefixes: Vec::new(),
            trusted_proxies: Vec::new(),
            stats_log_interval: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field fails to compile here until it is shown (or hidden).
        let Config {
            listen,
            api_listen,
            path,
            demo_page,
            tick,
            heartbeat_interval,
            heartbeat_timeout,
            write_timeout,
            handshake_timeout,
            max_connections,
            max_message_size,
            outbound_cap,
            slow_consumer,
            max_topics_per_connection,
            max_topic_length,
            api_token,
            api_max_body,
            api_request_timeout,
            echo,
            log_level,
            log_format,
            allowed_origins,
            client_token,
            api_allowed_origins,
            subscribe_secret,
            private_prefix,
            history_size,
            history_ttl,
            history_memory,
            metrics_topic_prefixes,
            trusted_proxies,
            stats_log_interval,
        } = self;
        let hidden = |token: &Option<String>| token.as_ref().map(|_| "<hidden>");
        f.debug_struct("Config")
            .field("listen", listen)
            .field("api_listen", api_listen)
            .field("path", path)
            .field("demo_page", demo_page)
            .field("tick", tick)
            .field("heartbeat_interval", heartbeat_interval)
            .field("heartbeat_timeout", heartbeat_timeout)
            .field("write_timeout", write_timeout)
            .field("handshake_timeout", handshake_timeout)
            .field("max_connections", max_connections)
            .field("max_message_size", max_message_size)
            .field("outbound_cap", outbound_cap)
            .field("slow_consumer", slow_consumer)
            .field("max_topics_per_connection", max_topics_per_connection)
            .field("max_topic_length", max_topic_length)
            .field("api_token", &hidden(api_token))
            .field("api_max_body", api_max_body)
            .field("api_request_timeout", api_request_timeout)
            .field("echo", echo)
            .field("log_level", log_level)
            .field("log_format", log_format)
            .field("allowed_origins", allowed_origins)
            .field("client_token", &hidden(client_token))
            .field("api_allowed_origins", api_allowed_origins)
            .field("subscribe_secret", &hidden(subscribe_secret))
            .field("private_prefix", private_prefix)
            .field("history_size", history_size)
            .field("history_ttl", history_ttl)
            .field("history_memory", history_memory)
            .field("metrics_topic_prefixes", metrics_topic_prefixes)
            .field("trusted_proxies", trusted_proxies)
            .field("stats_log_interval", stats_log_interval)
            .finish()
    }
}

/// How a record is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-12-02T02:25:01.123Z INFO  [wspush::server] message`
    #[default]
    Text,
    /// `{"ts":"2026-12-02T02:25:01.123Z","level":"INFO","target":"wspush::server","msg":"message"}`
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("text|json"),
        }
    }
}

/// Why the configuration was refused. Flags and environment variables are named as the user
/// typed them; token values are never kept in an error, so no message can show one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownFlag(String),
    MissingValue(&'static str),
    InvalidValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A bad value in an environment variable (`var` is its name).
    InvalidEnv {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A bad token given by the flag or variable `from`; the value itself is left out.
    InvalidSecret {
        from: &'static str,
        expected: &'static str,
    },
    /// The token file `path`, named by the flag or variable `from`, cannot be used.
    SecretFile {
        from: &'static str,
        path: String,
        problem: String,
    },
    /// Two ways of giving the same setting at the same level, such as a token and its file.
    Conflict(&'static str, &'static str),
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFlag(flag) => write!(f, "unknown flag {flag} (see --help)"),
            Self::MissingValue(flag) => write!(f, "{flag} needs a value"),
            Self::InvalidValue {
                flag,
                value,
                expected,
            } => {
                write!(f, "invalid value {value:?} for {flag}: expected {expected}")
            }
            Self::InvalidEnv {
                var,
                value,
                expected,
            } => {
                write!(f, "invalid value {value:?} in {var}: expected {expected}")
            }
            Self::InvalidSecret { from, expected } => {
                write!(f, "invalid token in {from}: expected {expected}")
            }
            Self::SecretFile {
                from,
                path,
                problem,
            } => write!(f, "cannot use token file {path:?} ({from}): {problem}"),
            Self::Conflict(a, b) => write!(f, "{a} and {b} are both set: use one of them"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the settings together. The server refuses to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError::Invalid(why.to_owned()));
        if let Some(api) = self.api_listen
            && !api.ip().is_loopback()
            && self.api_token.as_deref().is_none_or(str::is_empty)
        {
            return bad(
                "the API listens on a non-loopback address: set --api-token or --api-token-file",
            );
        }
        if !self.path.starts_with('/') {
            return bad("--path must start with '/'");
        }
        if self.heartbeat_interval.is_zero()
            || self.write_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.api_request_timeout.is_zero()
        {
            return bad("heartbeat, write, handshake and API request timeouts must be positive");
        }
        if let Some((topic, interval)) = &self.tick {
            if interval.is_zero() {
                return bad("--tick-interval must be positive");
            }
            let rules = crate::wire::message::TopicRules {
                max_len: self.max_topic_length,
            };
            if crate::wire::message::validate_topic(topic, rules).is_err() {
                return bad("--tick-topic is not a valid topic name");
            }
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1");
        }
        if self.max_message_size < 125 {
            return bad("--max-message-size must be at least 125 bytes");
        }
        if self.outbound_cap < 1024 {
            return bad("--outbound-cap must be at least 1 KiB");
        }
        if self.max_topics_per_connection == 0 || self.max_topic_length == 0 {
            return bad("--max-topics and --max-topic-length must be positive");
        }
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return bad("--history-ttl must be positive (or turn history off: --history-size 0)");
        }
        match (&self.subscribe_secret, &self.private_prefix) {
            (Some(_), None) => return bad("--subscribe-secret needs --private-prefix"),
            (None, Some(_)) => return bad("--private-prefix needs --subscribe-secret"),
            (Some(secret), Some(_)) if secret.len() < MIN_SECRET_BYTES => {
                return bad("--subscribe-secret must be at least 16 bytes");
            }
            _ => {}
        }
        Ok(())
    }

    /// Milliseconds a client may stay silent before it is closed.
    pub fn idle_limit_ms(&self) -> u64 {
        millis(self.heartbeat_interval + self.heartbeat_timeout)
    }
}

/// Shortest subscription-claim key: shorter keys make HMAC forgeries guessable.
const MIN_SECRET_BYTES: usize = 16;

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parses `500ms`, `3s`, `1m`, `1h`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let secs = value * scale;
    (secs.is_finite() && (0.0..=1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Parses `65536`, `64k`, `64KiB`, `1m`, `1MiB`, `1g` (binary multiples).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: usize = num.parse().ok()?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(scale)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// One setting: everything the parser, the environment and `--help` know about it.
struct Setting {
    /// As typed, `--` included.
    flag: &'static str,
    /// `WSPUSH_` and the flag upper-cased, `-` as `_` (the test `env_names_follow_the_rule`).
    env: &'static str,
    /// The value's name in `--help`; unused by switches.
    value: &'static str,
    /// Shown in `--help`; for `Kind::Value` also what `Config::default()` applies.
    default: &'static str,
    help: &'static str,
    kind: Kind,
}

/// How a setting takes its value, with the function that parses, checks and applies it to a
/// `Config`. Those functions return only what was expected: the caller knows where the value
/// came from and names that in the error.
#[derive(Clone, Copy)]
enum Kind {
    /// `--flag VALUE`; the last one given wins.
    Value(fn(&mut Config, &str) -> Result<(), &'static str>),
    /// `--flag` alone; in the environment 1/true/yes or 0/false/no. Off by default; the
    /// function turns it on.
    Switch(fn(&mut Config)),
    /// `--flag VALUE`, repeatable; in the environment a comma-separated list. The function adds
    /// one item to a list that starts empty.
    List(fn(&mut Config, &str) -> Result<(), &'static str>),
    /// A token: `--flag TOKEN`, or `file_flag PATH` to read it from a file and keep it out of
    /// `ps` and `/proc/PID/cmdline`; the same pair in the environment. Unset by default.
    Secret {
        file_flag: &'static str,
        file_env: &'static str,
        apply: fn(&mut Config, String),
    },
}

const DURATION: &str = "a duration like 500ms, 3s, 1m";
const SIZE: &str = "a size like 65536, 64KiB, 1MiB";
const COUNT: &str = "a whole number";
const ADDRESS: &str = "HOST:PORT like 0.0.0.0:8091 or localhost:8091 (a name must resolve)";
const ADDRESS_OR_OFF: &str =
    "off, or HOST:PORT like 127.0.0.1:8092 or localhost:8092 (a name must resolve)";

fn duration(value: &str) -> Result<Duration, &'static str> {
    parse_duration(value).ok_or(DURATION)
}

fn size(value: &str) -> Result<usize, &'static str> {
    parse_size(value).ok_or(SIZE)
}

fn count(value: &str) -> Result<usize, &'static str> {
    value.trim().parse().map_err(|_| COUNT)
}

/// An address literal, or a host name resolved now (first address): the listeners bind once at
/// start, so a later change of the name's address would not matter anyway.
fn socket_addr(value: &str) -> Result<SocketAddr, &'static str> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or(ADDRESS)
}

/// Every setting, in `--help` order. `--tick-topic`, `--tick-interval` and `--no-tick` share
/// `Config::tick` and are applied in this order, so `--no-tick` wins over the other two.
static SETTINGS: &[Setting] = &[
    Setting {
        flag: "--listen",
        env: "WSPUSH_LISTEN",
        value: "ADDR",
        default: "0.0.0.0:8091",
        help: "WebSocket listen address",
        kind: Kind::Value(|c, v| {
            c.listen = socket_addr(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--api-listen",
        env: "WSPUSH_API_LISTEN",
        value: "ADDR|off",
        default: "127.0.0.1:8092",
        help: "backend HTTP API address, or off",
        kind: Kind::Value(|c, v| {
            c.api_listen = if v == "off" {
                None
            } else {
                Some(socket_addr(v).map_err(|_| ADDRESS_OR_OFF)?)
            };
            Ok(())
        }),
    },
    Setting {
        flag: "--path",
        env: "WSPUSH_PATH",
        value: "PATH",
        default: "/ws",
        help: "WebSocket endpoint path",
        kind: Kind::Value(|c, v| {
            c.path = v.to_owned();
            Ok(())
        }),
    },
    Setting {
        flag: "--no-demo-page",
        env: "WSPUSH_NO_DEMO_PAGE",
        value: "",
        default: "false",
        help: "do not serve the demo page at / (/wspush.js stays)",
        kind: Kind::Switch(|c| c.demo_page = false),
    },
    Setting {
        flag: "--tick-topic",
        env: "WSPUSH_TICK_TOPIC",
        value: "TOPIC",
        default: "test-topic",
        help: "demo publisher topic",
        kind: Kind::Value(|c, v| {
            let interval = c.tick.take().map_or(Duration::ZERO, |(_, i)| i);
            c.tick = Some((v.to_owned(), interval));
            Ok(())
        }),
    },
    Setting {
        flag: "--tick-interval",
        env: "WSPUSH_TICK_INTERVAL",
        value: "DURATION",
        default: "3s",
        help: "demo publisher interval",
        kind: Kind::Value(|c, v| {
            let interval = duration(v)?;
            let topic = c.tick.take().map(|(t, _)| t).unwrap_or_default();
            c.tick = Some((topic, interval));
            Ok(())
        }),
    },
    Setting {
        flag: "--no-tick",
        env: "WSPUSH_NO_TICK",
        value: "",
        default: "false",
        help: "turn the demo publisher off",
        kind: Kind::Switch(|c| c.tick = None),
    },
    Setting {
        flag: "--heartbeat-interval",
        env: "WSPUSH_HEARTBEAT_INTERVAL",
        value: "DURATION",
        default: "10s",
        help: "expected client ping interval",
        kind: Kind::Value(|c, v| {
            c.heartbeat_interval = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--heartbeat-timeout",
        env: "WSPUSH_HEARTBEAT_TIMEOUT",
        value: "DURATION",
        default: "10s",
        help: "grace after a missed ping before closing",
        kind: Kind::Value(|c, v| {
            c.heartbeat_timeout = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--write-timeout",
        env: "WSPUSH_WRITE_TIMEOUT",
        value: "DURATION",
        default: "10s",
        help: "close a socket without write progress after",
        kind: Kind::Value(|c, v| {
            c.write_timeout = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--handshake-timeout",
        env: "WSPUSH_HANDSHAKE_TIMEOUT",
        value: "DURATION",
        default: "10s",
        help: "accept to first subscribe deadline",
        kind: Kind::Value(|c, v| {
            c.handshake_timeout = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--max-connections",
        env: "WSPUSH_MAX_CONNECTIONS",
        value: "N",
        default: "10000",
        help: "WebSocket connections, handshakes included",
        kind: Kind::Value(|c, v| {
            c.max_connections = count(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--max-message-size",
        env: "WSPUSH_MAX_MESSAGE_SIZE",
        value: "SIZE",
        default: "64KiB",
        help: "largest client message/frame, closes 1009",
        kind: Kind::Value(|c, v| {
            c.max_message_size = size(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--outbound-cap",
        env: "WSPUSH_OUTBOUND_CAP",
        value: "SIZE",
        default: "256KiB",
        help: "per-connection outbound queue cap",
        kind: Kind::Value(|c, v| {
            c.outbound_cap = size(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--slow-consumer",
        env: "WSPUSH_SLOW_CONSUMER",
        value: "close|drop",
        default: "close",
        help: "at the outbound cap: close (1013) or drop pushes",
        kind: Kind::Value(|c, v| {
            c.slow_consumer = match v {
                "close" => SlowConsumerPolicy::Close,
                "drop" => SlowConsumerPolicy::Drop,
                _ => return Err("close or drop"),
            };
            Ok(())
        }),
    },
    Setting {
        flag: "--max-topics",
        env: "WSPUSH_MAX_TOPICS",
        value: "N",
        default: "100",
        help: "topics per connection",
        kind: Kind::Value(|c, v| {
            c.max_topics_per_connection = count(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--max-topic-length",
        env: "WSPUSH_MAX_TOPIC_LENGTH",
        value: "N",
        default: "128",
        help: "bytes per topic name",
        kind: Kind::Value(|c, v| {
            c.max_topic_length = count(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--api-token",
        env: "WSPUSH_API_TOKEN",
        value: "TOKEN",
        default: "none",
        help: "bearer token required by the API",
        kind: Kind::Secret {
            file_flag: "--api-token-file",
            file_env: "WSPUSH_API_TOKEN_FILE",
            apply: |c, token| c.api_token = Some(token),
        },
    },
    Setting {
        flag: "--api-max-body",
        env: "WSPUSH_API_MAX_BODY",
        value: "SIZE",
        default: "1MiB",
        help: "largest API request body",
        kind: Kind::Value(|c, v| {
            c.api_max_body = size(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--api-request-timeout",
        env: "WSPUSH_API_REQUEST_TIMEOUT",
        value: "DURATION",
        default: "10s",
        help: "API request deadline from its first byte (408)",
        kind: Kind::Value(|c, v| {
            c.api_request_timeout = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--allowed-origin",
        env: "WSPUSH_ALLOWED_ORIGIN",
        value: "ORIGIN",
        default: "any",
        help: "allow this browser Origin, repeatable (403 otherwise)",
        kind: Kind::List(|c, v| {
            c.allowed_origins.push(v.to_owned());
            Ok(())
        }),
    },
    Setting {
        flag: "--client-token",
        env: "WSPUSH_CLIENT_TOKEN",
        value: "TOKEN",
        default: "none",
        help: "token clients send in their first message, or as Bearer or ?token= (401)",
        kind: Kind::Secret {
            file_flag: "--client-token-file",
            file_env: "WSPUSH_CLIENT_TOKEN_FILE",
            apply: |c, token| c.client_token = Some(token),
        },
    },
    Setting {
        flag: "--api-allowed-origin",
        env: "WSPUSH_API_ALLOWED_ORIGIN",
        value: "ORIGIN",
        default: "none",
        help: "allow API calls from this browser Origin, repeatable (403 otherwise)",
        kind: Kind::List(|c, v| {
            c.api_allowed_origins.push(v.to_owned());
            Ok(())
        }),
    },
    Setting {
        flag: "--subscribe-secret",
        env: "WSPUSH_SUBSCRIBE_SECRET",
        value: "SECRET",
        default: "none",
        help: "HMAC-SHA256 key of subscription claims (private topics)",
        kind: Kind::Secret {
            file_flag: "--subscribe-secret-file",
            file_env: "WSPUSH_SUBSCRIBE_SECRET_FILE",
            apply: |c, secret| c.subscribe_secret = Some(secret),
        },
    },
    Setting {
        flag: "--private-prefix",
        env: "WSPUSH_PRIVATE_PREFIX",
        value: "PREFIX|none",
        default: "none",
        help: "topics starting with PREFIX need a signed claim",
        kind: Kind::Value(|c, v| {
            c.private_prefix = match v {
                "none" => None,
                prefix
                    if !prefix.is_empty()
                        && prefix.bytes().all(crate::wire::message::is_topic_byte) =>
                {
                    Some(prefix.to_owned())
                }
                _ => return Err("none, or the start of a topic name (A-Z a-z 0-9 - _ . : / @)"),
            };
            Ok(())
        }),
    },
    Setting {
        flag: "--history-size",
        env: "WSPUSH_HISTORY_SIZE",
        value: "N",
        default: "100",
        help: "messages held per topic for resumes; 0: history and positions off",
        kind: Kind::Value(|c, v| {
            c.history_size = count(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--history-ttl",
        env: "WSPUSH_HISTORY_TTL",
        value: "DURATION",
        default: "5m",
        help: "how long a held message is kept",
        kind: Kind::Value(|c, v| {
            c.history_ttl = duration(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--history-memory",
        env: "WSPUSH_HISTORY_MEMORY",
        value: "SIZE",
        default: "16MiB",
        help: "bytes held by all topics' history (oldest go first)",
        kind: Kind::Value(|c, v| {
            c.history_memory = size(v)?;
            Ok(())
        }),
    },
    Setting {
        flag: "--metrics-topic-prefix",
        env: "WSPUSH_METRICS_TOPIC_PREFIX",
        value: "PREFIX",
        default: "none",
        help: "per-topic /metrics series for topics starting with PREFIX, repeatable or a,b",
        kind: Kind::List(|c, v| {
            for prefix in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !prefix.bytes().all(crate::wire::message::is_topic_byte) {
                    return Err("the start of a topic name (A-Z a-z 0-9 - _ . : / @)");
                }
                if !c.metrics_topic_prefixes.iter().any(|p| p == prefix) {
                    c.metrics_topic_prefixes.push(prefix.to_owned());
                }
            }
            Ok(())
        }),
    },
    Setting {
        flag: "--trusted-proxy",
        env: "WSPUSH_TRUSTED_PROXY",
        value: "CIDR",
        default: "none",
        help: "log the client of X-Forwarded-For/X-Real-IP from this proxy range, repeatable or a,b",
        kind: Kind::List(|c, v| {
            for range in v.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                let range: Cidr = range
                    .parse()
                    .map_err(|e: crate::wire::forwarded::CidrError| e.expected())?;
                if !c.trusted_proxies.contains(&range) {
                    c.trusted_proxies.push(range);
                }
            }
            Ok(())
        }),
    },
    Setting {
        flag: "--stats-log-interval",
        env: "WSPUSH_STATS_LOG_INTERVAL",
        value: "DURATION|off",
        default: "off",
        help: "log a one-line summary (changes since the last) at info this often",
        kind: Kind::Value(|c, v| {
            c.stats_log_interval = match v.trim() {
                "off" | "0" => None,
                v => match parse_duration(v) {
                    Some(d) if d.is_zero() => None,
                    Some(d) if d >= Duration::from_secs(1) => Some(d),
                    _ => return Err("off, 0, or a duration of at least 1s (60, 30s, 5m)"),
                },
            };
            Ok(())
        }),
    },
    Setting {
        flag: "--echo",
        env: "WSPUSH_ECHO",
        value: "",
        default: "false",
        help: "conformance testing only: echo every message back",
        kind: Kind::Switch(|c| c.echo = true),
    },
    Setting {
        flag: "--log-level",
        env: "WSPUSH_LOG_LEVEL",
        value: "LEVEL",
        default: "info",
        help: "off|error|warn|info|debug|trace",
        kind: Kind::Value(|c, v| {
            c.log_level = v.parse().map_err(|_| "off|error|warn|info|debug|trace")?;
            Ok(())
        }),
    },
    Setting {
        flag: "--log-format",
        env: "WSPUSH_LOG_FORMAT",
        value: "FORMAT",
        default: "text",
        help: "text|json (UTC timestamps, left out of text under journald)",
        kind: Kind::Value(|c, v| {
            c.log_format = v.parse()?;
            Ok(())
        }),
    },
];

/// Width of the flag column in `--help`.
const HELP_COLUMN: usize = 30;

/// The `--help` text, generated from `SETTINGS`.
pub fn help_text() -> String {
    let mut out = String::from(
        "wspush: a single-threaded WebSocket publish/subscribe push server\n\n\
         Usage: wspush [FLAGS]\n\n\
         Every flag can also be set by the environment variable shown under it. A flag beats its\n\
         variable, a variable beats the default; an empty variable counts as unset, except that\n\
         an empty token variable is refused. In the environment, switches take 1/true/yes or\n\
         0/false/no and lists are comma-separated.\n\
         Addresses are HOST:PORT; a host name is resolved at start and its first address used.\n\
         Durations: 500ms, 3s, 1m, 1h (a bare number is seconds). Sizes: 65536, 64KiB, 1MiB.\n\n",
    );
    let line = |out: &mut String, left: &str, text: &str| {
        out.push_str(&format!("  {left:<HELP_COLUMN$} {text}\n"));
    };
    for s in SETTINGS {
        let usage = if s.value.is_empty() {
            s.flag.to_owned()
        } else {
            format!("{} {}", s.flag, s.value)
        };
        line(&mut out, &usage, s.help);
        let mut env = s.env.to_owned();
        if let Kind::Secret {
            file_flag,
            file_env,
            ..
        } = s.kind
        {
            line(
                &mut out,
                &format!("{file_flag} PATH"),
                "the same, read from a file (kept out of ps; whitespace trimmed)",
            );
            env = format!("{env}, {file_env}");
        }
        line(
            &mut out,
            "",
            &format!("[env: {env}] [default: {}]", s.default),
        );
    }
    line(&mut out, "-h, --help", "print this help");
    line(&mut out, "--version", "print the version");
    out
}

/// Parses the arguments after the program name, with the process environment under them.
/// `--flag value` and `--flag=value` both work.
pub fn parse_args<I, S>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parse(args, |var| match std::env::var(var) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        // Not shown: it may be a token.
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::Invalid(format!("{var} is not valid UTF-8")))
        }
    })
}

/// [`parse_args`] with the environment given as a lookup, so tests never see the real one.
pub fn parse_args_with_env<I, S>(
    args: I,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parse(args, |var| Ok(env(var)))
}

/// Where a value came from, to name it in errors as the user wrote it.
#[derive(Clone, Copy)]
enum Source {
    Flag(&'static str),
    Env(&'static str),
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Flag(name) | Source::Env(name) => name,
        }
    }

    fn invalid(self, value: &str, expected: &'static str) -> ConfigError {
        let value = value.to_owned();
        match self {
            Source::Flag(flag) => ConfigError::InvalidValue {
                flag,
                value,
                expected,
            },
            Source::Env(var) => ConfigError::InvalidEnv {
                var,
                value,
                expected,
            },
        }
    }
}

/// One value given for a setting: `file` when it names a token file rather than the token.
struct Input {
    source: Source,
    file: bool,
    value: String,
}

fn parse<I, S>(
    args: I,
    env: impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    // The flags first, grouped by setting. `--help` answers before the environment is read,
    // so a broken variable cannot hide the help.
    let mut flags: Vec<Vec<Input>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let Some((index, flag, file)) = find_flag(name) else {
            // The name only: what follows `=` may be a token given to a misspelt flag.
            return Err(ConfigError::UnknownFlag(name.to_owned()));
        };
        let value = if matches!(SETTINGS[index].kind, Kind::Switch(_)) {
            if inline.is_some() {
                return Err(ConfigError::Invalid(format!("{flag} takes no value")));
            }
            String::new()
        } else {
            match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(ConfigError::MissingValue(flag)),
            }
        };
        let source = Source::Flag(flag);
        flags[index].push(Input {
            source,
            file,
            value,
        });
    }
    let mut config = Config::default();
    for (setting, given) in SETTINGS.iter().zip(flags) {
        // Flags replace the environment's values, which replace the default.
        let inputs = if given.is_empty() {
            from_env(setting, &env)?
        } else {
            given
        };
        apply(&mut config, setting, &inputs)?;
    }
    config.validate()?;
    Ok(Command::Run(Box::new(config)))
}

/// The setting a flag belongs to: its index, the flag's own name, and whether it is a file flag.
fn find_flag(name: &str) -> Option<(usize, &'static str, bool)> {
    SETTINGS.iter().enumerate().find_map(|(i, s)| match s.kind {
        _ if s.flag == name => Some((i, s.flag, false)),
        Kind::Secret { file_flag, .. } if file_flag == name => Some((i, file_flag, true)),
        _ => None,
    })
}

/// A setting's values from the environment: its variable and, for tokens, the file variable.
fn from_env(
    setting: &Setting,
    env: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
) -> Result<Vec<Input>, ConfigError> {
    let mut vars = vec![(setting.env, false)];
    if let Kind::Secret { file_env, .. } = setting.kind {
        vars.push((file_env, true));
    }
    let secret = matches!(setting.kind, Kind::Secret { .. });
    let mut inputs = Vec::new();
    for (var, file) in vars {
        let value = env(var)?;
        // A token variable set but empty is a mistake (it would have turned authentication
        // off); it is refused rather than taken as unset.
        if secret && value.as_deref() == Some("") {
            return Err(ConfigError::InvalidSecret {
                from: var,
                expected: "a non-empty token (unset the variable instead)",
            });
        }
        // Empty counts as unset, so `WSPUSH_X=` in a unit or compose file leaves the default.
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            let source = Source::Env(var);
            inputs.push(Input {
                source,
                file,
                value,
            });
        }
    }
    Ok(inputs)
}

/// Applies the values one level (flags or environment) gave for `setting`.
fn apply(config: &mut Config, setting: &Setting, inputs: &[Input]) -> Result<(), ConfigError> {
    match setting.kind {
        Kind::Value(apply) => {
            if let Some(last) = inputs.last() {
                apply(config, &last.value).map_err(|e| last.source.invalid(&last.value, e))?;
            }
        }
        Kind::Switch(turn_on) => {
            let Some(last) = inputs.last() else {
                return Ok(());
            };
            let on = match last.source {
                Source::Flag(_) => true,
                Source::Env(_) => parse_bool(&last.value).ok_or_else(|| {
                    last.source
                        .invalid(&last.value, "1, true, yes, 0, false or no")
                })?,
            };
            if on {
                turn_on(config);
            }
        }
        Kind::List(add) => {
            for input in inputs {
                let items: Vec<&str> = match input.source {
                    Source::Flag(_) => vec![input.value.as_str()],
                    Source::Env(_) => input
                        .value
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .collect(),
                };
                for item in items {
                    add(config, item).map_err(|e| input.source.invalid(item, e))?;
                }
            }
        }
        Kind::Secret { apply, .. } => {
            let direct = inputs.iter().find(|i| !i.file);
            let file = inputs.iter().find(|i| i.file);
            if let (Some(direct), Some(file)) = (direct, file) {
                return Err(ConfigError::Conflict(
                    direct.source.name(),
                    file.source.name(),
                ));
            }
            let Some(last) = inputs.last() else {
                return Ok(());
            };
            let from = last.source.name();
            let token = if last.file {
                read_token_file(from, &last.value)?
            } else {
                check_token(&last.value)
                    .map_err(|expected| ConfigError::InvalidSecret { from, expected })?;
                last.value.clone()
            };
            apply(config, token);
        }
    }
    Ok(())
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// An empty token would let requests without one through, and a control character (a second
/// line) could never arrive in a header: both are mistakes to refuse at start.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        Err("a non-empty token")
    } else if token.chars().any(char::is_control) {
        Err("a token of one line without control characters")
    } else {
        Ok(())
    }
}

/// Largest token file read: a token is short, and a wrong path (a log, `/dev/zero`) should fail
/// at once rather than fill memory.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The token in `path`, surrounding whitespace (the editor's final newline) trimmed. Errors
/// name the path and the flag or variable, never the contents.
fn read_token_file(from: &'static str, path: &str) -> Result<String, ConfigError> {
    let fail = |problem: String| ConfigError::SecretFile {
        from,
        path: path.to_owned(),
        problem,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(fail(format!(
            "larger than {} KiB, not a token",
            MAX_TOKEN_FILE / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    let token = text.trim();
    check_token(token).map_err(|expected| fail(format!("expected {expected}")))?;
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake environment: `parse_args_with_env` never reads the real one.
    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn run_env(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        match parse_args_with_env(args.iter().copied(), env_of(vars))? {
            Command::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        run_env(args, &[])
    }

    /// A file under the temp directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn with(name: &str, contents: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("wspush-config-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let c = run(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8091");
        assert_eq!(c.api_listen, Some("127.0.0.1:8092".parse().unwrap()));
        assert_eq!(c.path, "/ws");
        assert_eq!(c.tick, Some(("test-topic".into(), Duration::from_secs(3))));
        assert_eq!(c.idle_limit_ms(), 20_000);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_message_size, 64 * 1024);
        assert_eq!(c.outbound_cap, 256 * 1024);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Close);
        assert_eq!(c.max_topics_per_connection, 100);
        assert_eq!(c.max_topic_length, 128);
        assert_eq!(c.api_max_body, 1024 * 1024);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.history_size, 100);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!(c.history_memory, 16 << 20);
        assert!(c.api_token.is_none() && c.client_token.is_none());
        assert!(!c.echo && c.allowed_origins.is_empty());
        Config::default().validate().unwrap();
    }

    #[test]
    fn every_default_applies() {
        for s in SETTINGS {
            if let Kind::Value(apply) = s.kind {
                let mut c = Config::placeholders();
                assert_eq!(apply(&mut c, s.default), Ok(()), "{}", s.flag);
            }
        }
    }

    fn env_name(flag: &str) -> String {
        let name = flag.trim_start_matches("--");
        format!("WSPUSH_{}", name.to_ascii_uppercase().replace('-', "_"))
    }

    #[test]
    fn env_names_follow_the_rule() {
        for s in SETTINGS {
            assert_eq!(s.env, env_name(s.flag));
            if let Kind::Secret {
                file_flag,
                file_env,
                ..
            } = s.kind
            {
                assert_eq!(file_flag, format!("{}-file", s.flag));
                assert_eq!(file_env, env_name(file_flag));
            }
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("3 parsecs"), None);
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("99999999999999999999g"), None);
        assert_eq!(parse_size("12x"), None);
    }

    #[test]
    fn flags_both_forms() {
        let c = run(&[
            "--listen=127.0.0.1:0",
            "--tick-interval",
            "500ms",
            "--tick-topic",
            "t",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.tick, Some(("t".into(), Duration::from_millis(500))));
        assert!(run(&["--no-tick"]).unwrap().tick.is_none());
        assert!(Config::default().demo_page && !run(&["--no-demo-page"]).unwrap().demo_page);
        assert!(
            run(&["--no-tick", "--tick-topic", "t"])
                .unwrap()
                .tick
                .is_none()
        );
        assert!(run(&["--api-listen", "off"]).unwrap().api_listen.is_none());
        assert_eq!(
            run(&["--slow-consumer", "drop"]).unwrap().slow_consumer,
            SlowConsumerPolicy::Drop
        );
        let c = run(&[
            "--allowed-origin",
            "https://a",
            "--allowed-origin=https://b",
        ])
        .unwrap();
        assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
    }

    #[test]
    fn bad_flags_are_explained() {
        assert_eq!(
            run(&["--nope"]).unwrap_err(),
            ConfigError::UnknownFlag("--nope".into())
        );
        assert_eq!(
            run(&["--api-tokn=s3cret"]).unwrap_err(),
            ConfigError::UnknownFlag("--api-tokn".into())
        );
        assert_eq!(
            run(&["--listen"]).unwrap_err(),
            ConfigError::MissingValue("--listen")
        );
        assert!(matches!(
            run(&["--write-timeout", "soon"]),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            run(&["--no-tick=1"]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn trusted_proxies_and_the_summary_interval() {
        let c = run(&[
            "--trusted-proxy",
            "127.0.0.1,10.0.0.0/8",
            "--trusted-proxy",
            "::1",
            "--trusted-proxy",
            "127.0.0.1",
        ])
        .unwrap();
        let ranges: Vec<String> = c.trusted_proxies.iter().map(|r| r.to_string()).collect();
        assert_eq!(ranges, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let c = run_env(&[], &[("WSPUSH_TRUSTED_PROXY", "192.168.0.0/16, fd00::/8")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(matches!(
            run(&["--trusted-proxy", "10.0.0.0/33"]),
            Err(ConfigError::InvalidValue {
                flag: "--trusted-proxy",
                ..
            })
        ));
        assert_eq!(Config::default().stats_log_interval, None);
        assert!(Config::default().trusted_proxies.is_empty());
        for off in ["off", "0", "0s"] {
            assert_eq!(
                run(&["--stats-log-interval", off])
                    .unwrap()
                    .stats_log_interval,
                None
            );
        }
        let c = run_env(&[], &[("WSPUSH_STATS_LOG_INTERVAL", "1m")]).unwrap();
        assert_eq!(c.stats_log_interval, Some(Duration::from_secs(60)));
        assert!(run(&["--stats-log-interval", "500ms"]).is_err());
    }

    #[test]
    fn public_api_needs_a_token() {
        assert!(run(&["--api-listen", "0.0.0.0:8092"]).is_err());
        assert!(run(&["--api-listen", "0.0.0.0:8092", "--api-token", "s3cret"]).is_ok());
        assert!(run(&["--api-listen", "[::1]:8092"]).is_ok());
    }

    #[test]
    fn env_is_used_when_no_flag_is_given() {
        let c = run_env(
            &[],
            &[
                ("WSPUSH_LISTEN", "127.0.0.1:9"),
                ("WSPUSH_MAX_CONNECTIONS", "5"),
                ("WSPUSH_NO_TICK", "yes"),
                ("WSPUSH_ECHO", "TRUE"),
                ("WSPUSH_ALLOWED_ORIGIN", "https://a, https://b,"),
                ("WSPUSH_API_TOKEN", "s3cret"),
                ("WSPUSH_PATH", ""), // empty: unset, the default stays
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9");
        assert_eq!(c.max_connections, 5);
        assert!(c.tick.is_none() && c.echo);
        assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
        assert_eq!(c.api_token.as_deref(), Some("s3cret"));
        assert_eq!(c.path, "/ws");
        let c = run_env(&[], &[("WSPUSH_NO_TICK", "0"), ("WSPUSH_ECHO", "no")]).unwrap();
        assert!(c.tick.is_some() && !c.echo);
    }

    #[test]
    fn flags_beat_env() {
        let env = [
            ("WSPUSH_LISTEN", "127.0.0.1:1"),
            ("WSPUSH_ALLOWED_ORIGIN", "https://env-a,https://env-b"),
            ("WSPUSH_API_TOKEN", "from-env"),
        ];
        let c = run_env(
            &[
                "--listen",
                "127.0.0.1:2",
                "--allowed-origin",
                "https://flag",
                "--api-token",
                "from-flag",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.allowed_origins, ["https://flag"]);
        assert_eq!(c.api_token.as_deref(), Some("from-flag"));
        // A token file given as a flag also beats the token from the environment.
        let file = TempFile::with("beats-env", "from-file\n");
        let c = run_env(&["--api-token-file", file.path()], &env).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("from-file"));
    }

    #[test]
    fn help_and_version() {
        let broken = [("WSPUSH_LISTEN", "nowhere")];
        for flag in ["-h", "--help"] {
            let command = parse_args_with_env([flag], env_of(&broken)).unwrap();
            assert!(matches!(command, Command::Help));
        }
        let command = parse_args_with_env(["--no-tick", "--version"], env_of(&[])).unwrap();
        assert!(matches!(command, Command::Version));
    }

    #[test]
    fn help_lists_every_setting_with_its_env_and_default() {
        let help = help_text();
        for s in SETTINGS {
            let line = help
                .lines()
                .skip_while(|l| !l.trim_start().starts_with(s.flag))
                .find(|l| l.contains("[env: "))
                .unwrap_or_else(|| panic!("--help lacks {}", s.flag));
            assert!(line.contains(s.env), "{line}");
            assert!(!s.default.is_empty(), "{} has no default", s.flag);
            assert!(
                line.contains(&format!("[default: {}]", s.default)),
                "{line}"
            );
            if let Kind::Secret {
                file_flag,
                file_env,
                ..
            } = s.kind
            {
                assert!(help.contains(&format!("{file_flag} PATH")));
                assert!(line.contains(file_env), "{line}");
            }
        }
        assert!(help.contains("-h, --help") && help.contains("--version"));
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let api = TempFile::with("api", "  s3cret-api \n");
        let client = TempFile::with("client", "s3cret-client\r\n");
        let c = run_env(
            &["--api-token-file", api.path()],
            &[("WSPUSH_CLIENT_TOKEN_FILE", client.path())],
        )
        .unwrap();
        assert_eq!(c.api_token.as_deref(), Some("s3cret-api"));
        assert_eq!(c.client_token.as_deref(), Some("s3cret-client"));
        let empty = TempFile::with("empty", " \n");
        assert!(matches!(
            run(&["--api-token-file", empty.path()]),
            Err(ConfigError::SecretFile { .. })
        ));
        let two_lines = TempFile::with("two-lines", "s3cret\nmore\n");
        assert!(matches!(
            run(&["--client-token-file", two_lines.path()]),
            Err(ConfigError::SecretFile { .. })
        ));
    }

    #[test]
    fn token_and_token_file_conflict() {
        let file = TempFile::with("conflict", "s3cret\n");
        assert_eq!(
            run(&["--api-token", "s3cret", "--api-token-file", file.path()]).unwrap_err(),
            ConfigError::Conflict("--api-token", "--api-token-file")
        );
        let env = [
            ("WSPUSH_CLIENT_TOKEN", "s3cret"),
            ("WSPUSH_CLIENT_TOKEN_FILE", file.path()),
        ];
        let err = run_env(&[], &env).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Conflict("WSPUSH_CLIENT_TOKEN", "WSPUSH_CLIENT_TOKEN_FILE")
        );
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn missing_token_file_names_the_path_not_a_token() {
        let err = run_env(
            &["--api-token-file", "/nonexistent/wspush-token"],
            &[("WSPUSH_CLIENT_TOKEN", "s3cret-client")],
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/wspush-token"), "{message}");
        assert!(message.contains("--api-token-file"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(!format!("{err:?}").contains("s3cret"));
        let err = run(&["--api-token", ""]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidSecret {
                from: "--api-token",
                ..
            }
        ));
    }

    #[test]
    fn empty_tokens_are_refused_everywhere() {
        for var in [
            "WSPUSH_CLIENT_TOKEN",
            "WSPUSH_API_TOKEN",
            "WSPUSH_SUBSCRIBE_SECRET",
        ] {
            let err = run_env(&[], &[(var, "")]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidSecret { from, .. } if from == var),
                "{var}: {err:?}"
            );
        }
        for flag in ["--client-token", "--api-token", "--subscribe-secret"] {
            assert!(run(&[flag, ""]).is_err(), "{flag}");
        }
        let empty = TempFile::with("empty-token", "\n");
        assert!(run(&["--client-token-file", empty.path()]).is_err());
    }

    #[test]
    fn private_topics_need_both_a_prefix_and_a_long_secret() {
        let secret = "0123456789abcdef";
        let c = run(&["--subscribe-secret", secret, "--private-prefix", "private-"]).unwrap();
        assert_eq!(c.private_prefix.as_deref(), Some("private-"));
        assert_eq!(c.subscribe_secret.as_deref(), Some(secret));
        assert!(run(&["--subscribe-secret", secret]).is_err());
        assert!(run(&["--private-prefix", "private-"]).is_err());
        assert!(run(&["--subscribe-secret", "short", "--private-prefix", "p-"]).is_err());
        assert!(
            run(&[
                "--subscribe-secret",
                secret,
                "--private-prefix",
                "bad prefix"
            ])
            .is_err()
        );
        assert_eq!(Config::default().private_prefix, None);
    }

    #[test]
    fn debug_output_hides_tokens() {
        let c = run(&[
            "--api-token",
            "s3cret-api",
            "--client-token",
            "s3cret-client",
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("api_token: Some(\"<hidden>\")"), "{debug}");
    }

    #[test]
    fn host_names_resolve() {
        let c = run(&["--listen", "localhost:0", "--api-listen", "localhost:0"]).unwrap();
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 0);
        let api = c.api_listen.unwrap();
        assert!(api.ip().is_loopback() && api.port() == 0);
        let err = run(&["--listen", "localhost"]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                flag: "--listen",
                expected: ADDRESS,
                ..
            }
        ));
        assert!(err.to_string().contains("HOST:PORT"));
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = run_env(&[], &[("WSPUSH_WRITE_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::InvalidEnv {
                var: "WSPUSH_WRITE_TIMEOUT",
                value: "soon".into(),
                expected: DURATION,
            }
        );
        assert!(err.to_string().contains("WSPUSH_WRITE_TIMEOUT"));
        let err = run_env(&[], &[("WSPUSH_ECHO", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("WSPUSH_ECHO"), "{err}");
        let err = run_env(&[], &[("WSPUSH_API_LISTEN", "nowhere:x")]).unwrap_err();
        assert!(err.to_string().contains("WSPUSH_API_LISTEN"), "{err}");
        // A flag replaces the bad variable, so it is never parsed.
        assert!(run_env(&["--echo"], &[("WSPUSH_ECHO", "maybe")]).is_ok());
    }
}
