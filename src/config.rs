//! Server configuration: every setting with its default, validation, and the command-line parser
//! used by the `wspush` binary (hand-written to keep the dependency tree small).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What to do with a subscriber whose outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close it with 1013 (try again later): it reconnects and can catch up from a clean state.
    Close,
    /// Keep it, drop the pushes that do not fit, and count them in `/stats`.
    Drop,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// WebSocket listener. Default `0.0.0.0:8091`, as the seed.
    pub listen: SocketAddr,
    /// Backend HTTP API listener; `None` disables the API. Default `127.0.0.1:8092`.
    pub api_listen: Option<SocketAddr>,
    /// The WebSocket endpoint path. Default `/ws`, as the seed.
    pub path: String,
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
    /// Byte cap of each session's outbound queue. Default 256 KiB: about 2,000 small pushes.
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
    /// Echo mode for protocol conformance testing only: every message comes back unchanged.
    pub echo: bool,
    pub log_level: log::LevelFilter,
    /// Browser origins allowed to open WebSockets (403 otherwise); empty: any.
    pub allowed_origins: Vec<String>,
    /// Token clients must present at the handshake (`?token=` or `Authorization: Bearer`).
    pub client_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8091)),
            api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8092))),
            path: "/ws".into(),
            tick: Some(("test-topic".into(), Duration::from_secs(3))),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_message_size: 64 * 1024,
            outbound_cap: 256 * 1024,
            slow_consumer: SlowConsumerPolicy::Close,
            max_topics_per_connection: 100,
            max_topic_length: 128,
            api_token: None,
            api_max_body: 1024 * 1024,
            echo: false,
            log_level: log::LevelFilter::Info,
            allowed_origins: Vec::new(),
            client_token: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownFlag(String),
    MissingValue(&'static str),
    InvalidValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
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
            return bad("the API listens on a non-loopback address: set --api-token");
        }
        if !self.path.starts_with('/') {
            return bad("--path must start with '/'");
        }
        if self.heartbeat_interval.is_zero()
            || self.write_timeout.is_zero()
            || self.handshake_timeout.is_zero()
        {
            return bad("heartbeat, write and handshake timeouts must be positive");
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
        Ok(())
    }

    /// Milliseconds a client may stay silent before it is closed.
    pub fn idle_limit_ms(&self) -> u64 {
        millis(self.heartbeat_interval + self.heartbeat_timeout)
    }
}

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

/// Flags, their value names and help lines; `--help` prints this table with the defaults.
const FLAGS: &[(&str, &str, &str)] = &[
    (
        "--listen",
        "ADDR",
        "WebSocket listen address [default: 0.0.0.0:8091]",
    ),
    (
        "--api-listen",
        "ADDR|off",
        "backend HTTP API address [default: 127.0.0.1:8092]",
    ),
    ("--path", "PATH", "WebSocket endpoint path [default: /ws]"),
    (
        "--tick-topic",
        "TOPIC",
        "demo publisher topic [default: test-topic]",
    ),
    (
        "--tick-interval",
        "DURATION",
        "demo publisher interval [default: 3s]",
    ),
    ("--no-tick", "", "turn the demo publisher off [default: on]"),
    (
        "--heartbeat-interval",
        "DURATION",
        "expected client ping interval [default: 10s]",
    ),
    (
        "--heartbeat-timeout",
        "DURATION",
        "grace after a missed ping before closing [default: 10s]",
    ),
    (
        "--write-timeout",
        "DURATION",
        "close a socket without write progress after [default: 10s]",
    ),
    (
        "--handshake-timeout",
        "DURATION",
        "accept to first subscribe deadline [default: 10s]",
    ),
    (
        "--max-connections",
        "N",
        "WebSocket connections, handshakes included [default: 10000]",
    ),
    (
        "--max-message-size",
        "SIZE",
        "largest client message/frame, closes 1009 [default: 64KiB]",
    ),
    (
        "--outbound-cap",
        "SIZE",
        "per-connection outbound queue cap [default: 256KiB]",
    ),
    (
        "--slow-consumer",
        "close|drop",
        "when the outbound cap is hit [default: close (1013)]",
    ),
    ("--max-topics", "N", "topics per connection [default: 100]"),
    (
        "--max-topic-length",
        "N",
        "bytes per topic name [default: 128]",
    ),
    (
        "--api-token",
        "TOKEN",
        "bearer token required by the API [default: none]",
    ),
    (
        "--api-max-body",
        "SIZE",
        "largest API request body [default: 1MiB]",
    ),
    (
        "--allowed-origin",
        "ORIGIN",
        "allow this browser Origin, repeatable (403 otherwise) [default: any]",
    ),
    (
        "--client-token",
        "TOKEN",
        "token clients present as ?token= or Bearer (401) [default: none]",
    ),
    (
        "--echo",
        "",
        "conformance testing only: echo every message back [default: off]",
    ),
    (
        "--log-level",
        "LEVEL",
        "off|error|warn|info|debug|trace [default: info]",
    ),
    ("--help", "", "print this help"),
    ("--version", "", "print the version"),
];

/// The `--help` text.
pub fn help_text() -> String {
    let mut out = String::from(
        "wspush: a single-threaded WebSocket publish/subscribe push server\n\n\
         Usage: wspush [FLAGS]\n\n\
         Durations: 500ms, 3s, 1m, 1h (a bare number is seconds). Sizes: 65536, 64KiB, 1MiB.\n\n",
    );
    for (flag, value, help) in FLAGS {
        let left = if value.is_empty() {
            flag.to_string()
        } else {
            format!("{flag} {value}")
        };
        out.push_str(&format!("  {left:<30} {help}\n"));
    }
    out
}

/// Parses the arguments after the program name. `--flag value` and `--flag=value` both work.
pub fn parse_args<I, S>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut config = Config::default();
    let mut tick_topic = None;
    let mut tick_interval = None;
    let mut no_tick = false;
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let Some(&(flag, value_name, _)) = FLAGS.iter().find(|(f, _, _)| *f == name) else {
            return Err(ConfigError::UnknownFlag(arg));
        };
        let value = if value_name.is_empty() {
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
        let invalid = |expected| ConfigError::InvalidValue {
            flag,
            value: value.clone(),
            expected,
        };
        let duration =
            || parse_duration(&value).ok_or_else(|| invalid("a duration like 500ms, 3s, 1m"));
        let size = || parse_size(&value).ok_or_else(|| invalid("a size like 65536, 64KiB, 1MiB"));
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| invalid("a whole number"))
        };
        let addr = || {
            value
                .parse::<SocketAddr>()
                .map_err(|_| invalid("an address like 0.0.0.0:8091"))
        };
        match flag {
            "--listen" => config.listen = addr()?,
            "--api-listen" => {
                config.api_listen = if value == "off" { None } else { Some(addr()?) };
            }
            "--path" => config.path = value.clone(),
            "--tick-topic" => tick_topic = Some(value.clone()),
            "--tick-interval" => tick_interval = Some(duration()?),
            "--no-tick" => no_tick = true,
            "--heartbeat-interval" => config.heartbeat_interval = duration()?,
            "--heartbeat-timeout" => config.heartbeat_timeout = duration()?,
            "--write-timeout" => config.write_timeout = duration()?,
            "--handshake-timeout" => config.handshake_timeout = duration()?,
            "--max-connections" => config.max_connections = count()?,
            "--max-message-size" => config.max_message_size = size()?,
            "--outbound-cap" => config.outbound_cap = size()?,
            "--slow-consumer" => {
                config.slow_consumer = match value.as_str() {
                    "close" => SlowConsumerPolicy::Close,
                    "drop" => SlowConsumerPolicy::Drop,
                    _ => return Err(invalid("close or drop")),
                }
            }
            "--max-topics" => config.max_topics_per_connection = count()?,
            "--max-topic-length" => config.max_topic_length = count()?,
            "--api-token" => config.api_token = Some(value.clone()),
            "--api-max-body" => config.api_max_body = size()?,
            "--allowed-origin" => config.allowed_origins.push(value.clone()),
            "--client-token" => config.client_token = Some(value.clone()),
            "--echo" => config.echo = true,
            "--log-level" => {
                config.log_level = value
                    .parse()
                    .map_err(|_| invalid("off|error|warn|info|debug|trace"))?
            }
            "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            _ => return Err(ConfigError::UnknownFlag(arg)),
        }
    }
    if let Some((topic, interval)) = &mut config.tick {
        if let Some(t) = tick_topic {
            *topic = t;
        }
        if let Some(i) = tick_interval {
            *interval = i;
        }
    }
    if no_tick {
        config.tick = None;
    }
    config.validate()?;
    Ok(Command::Run(Box::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        match parse_args(args.iter().copied())? {
            Command::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let c = run(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8091");
        assert_eq!(c.path, "/ws");
        assert_eq!(c.tick, Some(("test-topic".into(), Duration::from_secs(3))));
        assert_eq!(c.idle_limit_ms(), 20_000);
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
        assert!(run(&["--api-listen", "off"]).unwrap().api_listen.is_none());
        assert_eq!(
            run(&["--slow-consumer", "drop"]).unwrap().slow_consumer,
            SlowConsumerPolicy::Drop
        );
    }

    #[test]
    fn bad_flags_are_explained() {
        assert_eq!(
            run(&["--nope"]).unwrap_err(),
            ConfigError::UnknownFlag("--nope".into())
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
    fn public_api_needs_a_token() {
        assert!(run(&["--api-listen", "0.0.0.0:8092"]).is_err());
        assert!(run(&["--api-listen", "0.0.0.0:8092", "--api-token", "s3cret"]).is_ok());
        assert!(run(&["--api-listen", "[::1]:8092"]).is_ok());
    }

    #[test]
    fn help_lists_every_flag_with_a_default() {
        let help = help_text();
        for (flag, _, text) in FLAGS {
            assert!(help.contains(flag));
            assert!(text.contains("default") || *flag == "--help" || *flag == "--version");
        }
    }
}
