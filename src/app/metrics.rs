//! The one table of reported figures: each counter and gauge is declared once with its
//! Prometheus name, type and help text, the key it has in `GET /stats` (JSON) and how its value
//! is read. Both `/stats` and `GET /metrics` (Prometheus text format 0.0.4) are rendered from
//! it, so the two cannot drift apart.
//!
//! Reading the values costs nothing on the loop: [`Stats`] stays plain integers, and the table
//! is only walked when a report is asked for.

use std::fmt::Write;

use crate::app::Gauges;
use crate::stats::{FANOUT_BOUNDS_NS, Histogram, Stats};

/// `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Figures of the process, read from `/proc` by the server when a report is asked for; `None`
/// where they cannot be read (another OS, a restricted `/proc`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Process {
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft limit (`None` also when unlimited).
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// Unix time.
    pub start_time_seconds: Option<f64>,
}

/// Everything one report shows.
pub struct Figures<'a> {
    pub stats: &'a Stats,
    pub gauges: &'a Gauges,
    pub process: &'a Process,
    /// `--metrics-topic-prefix` series; empty when none is configured.
    pub prefixes: &'a [PrefixFigures<'a>],
}

/// What the topics starting with one configured prefix did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixFigures<'a> {
    pub prefix: &'a str,
    pub publishes: u64,
    pub deliveries: u64,
    pub subscribers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(n) => write!(f, "{n}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Type {
    Counter,
    Gauge,
    /// Rendered from [`Stats::fanout`]; its samples only name `/stats` keys.
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A metric family: one `# HELP` and `# TYPE`, and its series.
pub struct Family {
    pub name: &'static str,
    pub kind: Type,
    pub help: &'static str,
    pub samples: &'static [Sample],
}

/// One value: a series of its family in `/metrics` (unless `metrics` is false), a key in
/// `/stats` (if `stats` names one), or both.
pub struct Sample {
    pub label: Option<(&'static str, &'static str)>,
    pub stats: Option<&'static str>,
    pub metrics: bool,
    pub value: fn(&Figures<'_>) -> Option<Num>,
}

const fn both(stats: &'static str, value: fn(&Figures<'_>) -> Option<Num>) -> Sample {
    Sample {
        label: None,
        stats: Some(stats),
        metrics: true,
        value,
    }
}

const fn labelled(
    label: (&'static str, &'static str),
    stats: Option<&'static str>,
    value: fn(&Figures<'_>) -> Option<Num>,
) -> Sample {
    Sample {
        label: Some(label),
        stats,
        metrics: true,
        value,
    }
}

const fn stats_only(stats: &'static str, value: fn(&Figures<'_>) -> Option<Num>) -> Sample {
    Sample {
        label: None,
        stats: Some(stats),
        metrics: false,
        value,
    }
}

/// `int!(f => expr)`: a sample value that is a whole number.
macro_rules! int {
    ($f:ident => $e:expr) => {
        |$f: &Figures<'_>| Some(Num::Int($e as u64))
    };
}

/// Help of the per-prefix series (`--metrics-topic-prefix`), rendered after the table.
const PREFIX_PUBLISHES_HELP: &str = "Publishes to topics starting with the prefix.";
const PREFIX_DELIVERIES_HELP: &str =
    "Pushes queued to subscribers of topics starting with the prefix.";
const PREFIX_SUBSCRIBERS_HELP: &str = "Subscriptions to topics starting with the prefix.";

/// Every reported figure, in report order.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "wspush_connections",
        kind: Type::Gauge,
        help: "WebSocket connections open, handshakes in progress included.",
        samples: &[both("connections", int!(f => f.gauges.connections))],
    },
    Family {
        name: "wspush_api_connections",
        kind: Type::Gauge,
        help: "API connections open.",
        samples: &[both("api_connections", int!(f => f.gauges.api_connections))],
    },
    Family {
        name: "wspush_topics",
        kind: Type::Gauge,
        help: "Topics with at least one subscriber.",
        samples: &[both("topics", int!(f => f.gauges.topics))],
    },
    Family {
        name: "wspush_subscriptions",
        kind: Type::Gauge,
        help: "Subscriptions (session, topic) held.",
        samples: &[both("subscriptions", int!(f => f.gauges.subscriptions))],
    },
    Family {
        name: "wspush_uptime_seconds",
        kind: Type::Gauge,
        help: "Seconds since the server loop started.",
        samples: &[both("uptime_secs", int!(f => f.gauges.uptime_secs))],
    },
    Family {
        name: "wspush_history_messages",
        kind: Type::Gauge,
        help: "Messages held in the topics' history.",
        samples: &[both(
            "history_messages",
            int!(f => f.gauges.history_messages),
        )],
    },
    Family {
        name: "wspush_history_bytes",
        kind: Type::Gauge,
        help: "Bytes charged for the held messages (frames plus 32 B each).",
        samples: &[both("history_bytes", int!(f => f.gauges.history_bytes))],
    },
    Family {
        name: "wspush_history_evictions_total",
        kind: Type::Counter,
        help: "Held messages evicted for the size, memory or age limit.",
        samples: &[both(
            "history_evictions",
            int!(f => f.gauges.history_evictions),
        )],
    },
    Family {
        name: "wspush_connections_accepted_total",
        kind: Type::Counter,
        help: "WebSocket connections accepted (before their handshake).",
        samples: &[both("accepted", int!(f => f.stats.accepted))],
    },
    Family {
        name: "wspush_refusals_total",
        kind: Type::Counter,
        help: "WebSocket connections refused: at --max-connections, or at the handshake (bad \
               request, wrong path, origin, client token).",
        samples: &[
            labelled(
                ("reason", "over_capacity"),
                Some("refused_over_capacity"),
                int!(f => f.stats.refused_over_capacity),
            ),
            labelled(
                ("reason", "handshake"),
                Some("handshake_failures"),
                int!(f => f.stats.handshake_failures),
            ),
        ],
    },
    Family {
        name: "wspush_auth_failures_total",
        kind: Type::Counter,
        help: "Credentials refused: the client token at the handshake or in the first message \
               (wrong, another message first, or none in time), the API's bearer token, a \
               private topic's claim.",
        samples: &[
            labelled(
                ("kind", "client_token"),
                Some("client_token_failures"),
                int!(f => f.stats.client_token_failures),
            ),
            labelled(
                ("kind", "first_message"),
                Some("auth_failures"),
                int!(f => f.stats.auth_failures),
            ),
            labelled(
                ("kind", "api_token"),
                Some("api_token_failures"),
                int!(f => f.stats.api_token_failures),
            ),
            labelled(
                ("kind", "claim"),
                Some("claims_refused"),
                int!(f => f.stats.claims_refused),
            ),
        ],
    },
    Family {
        name: "wspush_publishes_total",
        kind: Type::Counter,
        help: "Messages published, by the API (one per batch line) or the demo tick.",
        samples: &[
            // `/stats` keeps its meaning: every publish, the tick's included.
            stats_only("publishes", int!(f => f.stats.publishes)),
            labelled(
                ("source", "api"),
                None,
                int!(f => f.stats.publishes.saturating_sub(f.stats.tick_publishes)),
            ),
            labelled(
                ("source", "tick"),
                Some("tick_publishes"),
                int!(f => f.stats.tick_publishes),
            ),
        ],
    },
    Family {
        name: "wspush_deliveries_total",
        kind: Type::Counter,
        help: "Push frames queued to subscribers (replays included).",
        samples: &[both("deliveries", int!(f => f.stats.deliveries))],
    },
    Family {
        name: "wspush_written_bytes_total",
        kind: Type::Counter,
        help: "Bytes written to WebSocket clients.",
        samples: &[both("bytes_written", int!(f => f.stats.bytes_written))],
    },
    Family {
        name: "wspush_dropped_total",
        kind: Type::Counter,
        help: "Pushes dropped because a subscriber's queue was full (--slow-consumer drop).",
        samples: &[both("dropped", int!(f => f.stats.dropped))],
    },
    Family {
        name: "wspush_slow_consumer_closes_total",
        kind: Type::Counter,
        help: "Sessions closed with 1013 because their queue was full (--slow-consumer close).",
        samples: &[both(
            "slow_consumer_closes",
            int!(f => f.stats.slow_consumer_closes),
        )],
    },
    Family {
        name: "wspush_timeouts_total",
        kind: Type::Counter,
        help: "Connections closed for a deadline: heartbeat silence, no write progress, \
               handshake and first subscribe, API request.",
        samples: &[
            labelled(
                ("kind", "heartbeat"),
                Some("heartbeat_timeouts"),
                int!(f => f.stats.heartbeat_timeouts),
            ),
            labelled(
                ("kind", "write"),
                Some("write_timeouts"),
                int!(f => f.stats.write_timeouts),
            ),
            labelled(
                ("kind", "handshake"),
                Some("handshake_timeouts"),
                int!(f => f.stats.handshake_timeouts),
            ),
            labelled(
                ("kind", "api_request"),
                Some("api_request_timeouts"),
                int!(f => f.stats.api_request_timeouts),
            ),
        ],
    },
    Family {
        name: "wspush_pings_sent_total",
        kind: Type::Counter,
        help: "Protocol Pings sent to clients silent for the heartbeat interval.",
        samples: &[both("pings_sent", int!(f => f.stats.pings_sent))],
    },
    Family {
        name: "wspush_bad_requests_total",
        kind: Type::Counter,
        help: "Client requests answered with an error message.",
        samples: &[both("bad_requests", int!(f => f.stats.bad_requests))],
    },
    Family {
        name: "wspush_claim_expirations_total",
        kind: Type::Counter,
        help: "Private subscriptions ended because their claim expired.",
        samples: &[both(
            "claim_expirations",
            int!(f => f.stats.claim_expirations),
        )],
    },
    Family {
        name: "wspush_protocol_closes_total",
        kind: Type::Counter,
        help: "Sessions closed for a protocol violation (1002, 1003, 1007, 1009).",
        samples: &[both("protocol_closes", int!(f => f.stats.protocol_closes))],
    },
    Family {
        name: "wspush_api_requests_total",
        kind: Type::Counter,
        help: "API requests served.",
        samples: &[both("api_requests", int!(f => f.stats.api_requests))],
    },
    Family {
        name: "wspush_api_errors_total",
        kind: Type::Counter,
        help: "API requests answered with a status of 400 or more.",
        samples: &[both("api_errors", int!(f => f.stats.api_errors))],
    },
    Family {
        name: "wspush_api_evictions_total",
        kind: Type::Counter,
        help: "API connections closed at the API's connection cap to admit a new one.",
        samples: &[both("api_evictions", int!(f => f.stats.api_evictions))],
    },
    Family {
        name: "wspush_replays_total",
        kind: Type::Counter,
        help: "History replays started (since or recent in a subscribe).",
        samples: &[both("replays", int!(f => f.stats.replays))],
    },
    Family {
        name: "wspush_resumes_total",
        kind: Type::Counter,
        help: "Resumes (since): every missed message replayed, or not (another epoch, history \
               too short).",
        samples: &[
            labelled(
                ("outcome", "recovered"),
                Some("resumes_recovered"),
                int!(f => f.stats.resumes_recovered),
            ),
            labelled(
                ("outcome", "lost"),
                Some("resumes_lost"),
                int!(f => f.stats.resumes_lost),
            ),
        ],
    },
    Family {
        name: "wspush_continuity_lost_total",
        kind: Type::Counter,
        help: "continuity_lost messages sent: eviction overtook a replay.",
        samples: &[both("continuity_lost", int!(f => f.stats.continuity_lost))],
    },
    Family {
        name: "wspush_fanout_seconds",
        kind: Type::Histogram,
        help: "Time per publish from its start to all its frames being queued (not written).",
        samples: &[
            stats_only("fanout_count", int!(f => f.stats.fanout.count())),
            stats_only("fanout_seconds_sum", |f| {
                Some(Num::Float(seconds(f.stats.fanout.sum_ns)))
            }),
        ],
    },
    Family {
        name: "wspush_fanout_max_seconds",
        kind: Type::Gauge,
        help: "The longest fan-out of one publish since start.",
        samples: &[both("fanout_seconds_max", |f| {
            Some(Num::Float(seconds(f.stats.fanout.max_ns)))
        })],
    },
    Family {
        name: "process_resident_memory_bytes",
        kind: Type::Gauge,
        help: "Resident memory size in bytes.",
        samples: &[both("rss_bytes", |f| f.process.rss_bytes.map(Num::Int))],
    },
    Family {
        name: "process_open_fds",
        kind: Type::Gauge,
        help: "Number of open file descriptors.",
        samples: &[both("open_fds", |f| f.process.open_fds.map(Num::Int))],
    },
    Family {
        name: "process_max_fds",
        kind: Type::Gauge,
        help: "Maximum number of open file descriptors (the soft limit).",
        samples: &[both("max_fds", |f| f.process.max_fds.map(Num::Int))],
    },
    Family {
        name: "process_cpu_seconds_total",
        kind: Type::Counter,
        help: "Total user and system CPU time spent in seconds.",
        samples: &[both("cpu_seconds", |f| {
            f.process.cpu_seconds.map(Num::Float)
        })],
    },
    Family {
        name: "process_start_time_seconds",
        kind: Type::Gauge,
        help: "Start time of the process since unix epoch in seconds.",
        samples: &[both("start_time_seconds", |f| {
            f.process.start_time_seconds.map(Num::Float)
        })],
    },
];

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The `/stats` body: every sample with a key, as one JSON object in table order.
pub fn render_json(figures: &Figures<'_>) -> String {
    let mut out = String::with_capacity(2048);
    out.push('{');
    let keyed = FAMILIES
        .iter()
        .flat_map(|family| family.samples)
        .filter_map(|sample| Some((sample.stats?, (sample.value)(figures)?)));
    for (n, (key, value)) in keyed.enumerate() {
        if n > 0 {
            out.push(',');
        }
        // Keys are identifiers of the table: nothing to escape. Writing to a String cannot fail.
        let _ = write!(out, "\"{key}\":{value}");
    }
    out.push('}');
    out
}

/// The `/metrics` body: Prometheus text format 0.0.4.
pub fn render_prometheus(figures: &Figures<'_>) -> String {
    let mut out = String::with_capacity(8192);
    for family in FAMILIES {
        if family.kind == Type::Histogram {
            histogram(&mut out, family, &figures.stats.fanout);
            continue;
        }
        let mut values = family
            .samples
            .iter()
            .filter(|s| s.metrics)
            .filter_map(|s| Some((s.label, (s.value)(figures)?)))
            .peekable();
        if values.peek().is_none() {
            // Not measurable here (a process figure off Linux): no family at all.
            continue;
        }
        head(&mut out, family.name, family.kind, family.help);
        for (label, value) in values {
            match label {
                Some((name, label_value)) => {
                    let _ = writeln!(
                        out,
                        "{}{{{name}=\"{}\"}} {value}",
                        family.name,
                        escape_label(label_value)
                    );
                }
                None => {
                    let _ = writeln!(out, "{} {value}", family.name);
                }
            }
        }
    }
    if !figures.prefixes.is_empty() {
        prefix_family(
            &mut out,
            figures.prefixes,
            "wspush_topic_publishes_total",
            Type::Counter,
            PREFIX_PUBLISHES_HELP,
            |p| p.publishes,
        );
        prefix_family(
            &mut out,
            figures.prefixes,
            "wspush_topic_deliveries_total",
            Type::Counter,
            PREFIX_DELIVERIES_HELP,
            |p| p.deliveries,
        );
        prefix_family(
            &mut out,
            figures.prefixes,
            "wspush_topic_subscribers",
            Type::Gauge,
            PREFIX_SUBSCRIBERS_HELP,
            |p| p.subscribers,
        );
    }
    out
}

fn head(out: &mut String, name: &str, kind: Type, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {}", kind.name());
}

fn histogram(out: &mut String, family: &Family, histogram: &Histogram) {
    let name = family.name;
    head(out, name, family.kind, family.help);
    let mut cumulative = 0;
    for (bound, count) in FANOUT_BOUNDS_NS.iter().zip(&histogram.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            seconds(*bound)
        );
    }
    let count = histogram.count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", seconds(histogram.sum_ns));
    let _ = writeln!(out, "{name}_count {count}");
}

fn prefix_family(
    out: &mut String,
    prefixes: &[PrefixFigures<'_>],
    name: &str,
    kind: Type,
    help: &str,
    value: fn(&PrefixFigures<'_>) -> u64,
) {
    head(out, name, kind, help);
    for p in prefixes {
        let _ = writeln!(
            out,
            "{name}{{prefix=\"{}\"}} {}",
            escape_label(p.prefix),
            value(p)
        );
    }
}

/// A label value as the text format writes it: `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text as the text format writes it: `\` and line feeds escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Per-prefix counters for `--metrics-topic-prefix`. Empty when none is configured, so a
/// publish costs one length check.
#[derive(Debug, Default)]
pub struct TopicPrefixes {
    counts: Vec<PrefixCount>,
}

#[derive(Debug)]
struct PrefixCount {
    prefix: String,
    publishes: u64,
    deliveries: u64,
}

impl TopicPrefixes {
    pub fn new(prefixes: &[String]) -> Self {
        TopicPrefixes {
            counts: prefixes
                .iter()
                .map(|prefix| PrefixCount {
                    prefix: prefix.clone(),
                    publishes: 0,
                    deliveries: 0,
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Counts a publish to `topic` that reached `deliveries` subscribers, under every prefix
    /// the topic starts with.
    pub fn on_publish(&mut self, topic: &str, deliveries: usize) {
        for count in &mut self.counts {
            if topic.starts_with(&count.prefix) {
                count.publishes += 1;
                count.deliveries += deliveries as u64;
            }
        }
    }

    /// The figures of each prefix; `topics`: every topic with its subscriber count (walked
    /// only when prefixes are configured).
    pub fn figures<'t>(
        &self,
        topics: impl Iterator<Item = (&'t str, usize)>,
    ) -> Vec<PrefixFigures<'_>> {
        let mut figures: Vec<PrefixFigures<'_>> = self
            .counts
            .iter()
            .map(|c| PrefixFigures {
                prefix: &c.prefix,
                publishes: c.publishes,
                deliveries: c.deliveries,
                subscribers: 0,
            })
            .collect();
        if figures.is_empty() {
            return figures;
        }
        for (topic, subscribers) in topics {
            for f in &mut figures {
                if topic.starts_with(f.prefix) {
                    f.subscribers += subscribers as u64;
                }
            }
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            connections: 3,
            api_connections: 1,
            topics: 2,
            subscriptions: 4,
            uptime_secs: 9,
            history_messages: 5,
            history_bytes: 600,
            history_evictions: 7,
        }
    }

    fn process() -> Process {
        Process {
            rss_bytes: Some(4_096_000),
            open_fds: Some(12),
            max_fds: Some(1024),
            cpu_seconds: Some(1.25),
            start_time_seconds: Some(1_700_000_000.5),
        }
    }

    fn render(stats: &Stats, process: &Process, prefixes: &[PrefixFigures<'_>]) -> String {
        render_prometheus(&Figures {
            stats,
            gauges: &gauges(),
            process,
            prefixes,
        })
    }

    fn valid_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    #[test]
    fn the_table_follows_the_naming_rules_without_duplicates() {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for family in FAMILIES {
            let name = family.name;
            assert!(valid_name(name), "{name}");
            assert!(name.starts_with("wspush_") || name.starts_with("process_"));
            assert_eq!(
                family.kind == Type::Counter,
                name.ends_with("_total"),
                "{name}"
            );
            assert!(
                !family.help.is_empty() && !family.help.contains('\n'),
                "{name}"
            );
            // A histogram's series are NAME_bucket, _sum and _count: reserve them all.
            let series: &[&str] = match family.kind {
                Type::Histogram => &["", "_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in series {
                assert!(
                    names.insert(format!("{name}{suffix}")),
                    "{name}{suffix} twice"
                );
            }
            let mut labels = HashSet::new();
            let shown: Vec<&Sample> = family.samples.iter().filter(|s| s.metrics).collect();
            for sample in &shown {
                if let Some((label, value)) = sample.label {
                    assert!(valid_name(label) && label != "le", "{name}: {label}");
                    assert!(labels.insert(value), "{name}{{{label}={value}}} twice");
                }
            }
            if shown.iter().any(|s| s.label.is_none()) {
                assert_eq!(shown.len(), 1, "{name}: an unlabelled series stands alone");
            }
            if family.kind == Type::Histogram {
                assert!(shown.is_empty(), "{name}: rendered from Stats::fanout");
            }
            for key in family.samples.iter().filter_map(|s| s.stats) {
                assert!(keys.insert(key), "/stats key {key} twice");
            }
        }
    }

    #[test]
    fn every_field_of_stats_and_gauges_has_its_stats_key() {
        // A counter added to `Stats` without a row here would vanish from /stats.
        let keys: HashSet<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.samples)
            .filter_map(|s| s.stats)
            .collect();
        for fields in [
            serde_json::to_value(Stats::default()).unwrap(),
            serde_json::to_value(gauges()).unwrap(),
        ] {
            for field in fields.as_object().unwrap().keys() {
                assert!(keys.contains(field.as_str()), "{field} is not in the table");
            }
        }
        // The keys /stats had before the table: users depend on them.
        for key in [
            "connections",
            "api_connections",
            "topics",
            "subscriptions",
            "uptime_secs",
            "history_messages",
            "history_bytes",
            "history_evictions",
            "accepted",
            "refused_over_capacity",
            "handshake_failures",
            "publishes",
            "deliveries",
            "bytes_written",
            "dropped",
            "slow_consumer_closes",
            "heartbeat_timeouts",
            "pings_sent",
            "write_timeouts",
            "handshake_timeouts",
            "bad_requests",
            "claims_refused",
            "claim_expirations",
            "protocol_closes",
            "api_requests",
            "api_errors",
            "api_request_timeouts",
            "api_evictions",
            "replays",
            "resumes_recovered",
            "resumes_lost",
            "continuity_lost",
        ] {
            assert!(keys.contains(key), "{key}");
        }
    }

    #[test]
    fn stats_json_holds_the_values() {
        let stats = Stats {
            publishes: 10,
            tick_publishes: 4,
            heartbeat_timeouts: 2,
            ..Stats::default()
        };
        let with = render_json(&Figures {
            stats: &stats,
            gauges: &gauges(),
            process: &process(),
            prefixes: &[],
        });
        let json: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(json["publishes"], 10);
        assert_eq!(json["tick_publishes"], 4);
        assert_eq!(json["heartbeat_timeouts"], 2);
        assert_eq!(json["connections"], 3);
        assert_eq!(json["history_evictions"], 7);
        assert_eq!(json["rss_bytes"], 4_096_000);
        assert_eq!(json["cpu_seconds"], 1.25);
        assert_eq!(json["fanout_count"], 0);
        let without = render_json(&Figures {
            stats: &stats,
            gauges: &gauges(),
            process: &Process::default(),
            prefixes: &[],
        });
        let json: serde_json::Value = serde_json::from_str(&without).unwrap();
        assert!(
            json.get("rss_bytes").is_none(),
            "unreadable figures are left out"
        );
        assert_eq!(json["deliveries"], 0);
    }

    /// (series with labels, value) of every sample line; checks HELP and TYPE come first.
    fn samples(text: &str) -> Vec<(String, String)> {
        let mut declared = HashSet::new();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                let ty = lines.next().unwrap();
                assert!(ty.starts_with(&format!("# TYPE {name} ")), "{ty}");
                assert!(declared.insert(name.to_owned()), "{name} declared twice");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{line}: no HELP/TYPE before it");
            assert!(seen.insert(series.to_owned()), "{series} twice");
            out.push((series.to_owned(), value.to_owned()));
        }
        out
    }

    fn value_of(text: &str, series: &str) -> Option<String> {
        samples(text)
            .into_iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| v)
    }

    #[test]
    fn prometheus_text_declares_before_samples_and_splits_by_label() {
        let stats = Stats {
            publishes: 10,
            tick_publishes: 4,
            write_timeouts: 3,
            bytes_written: 1 << 40,
            ..Stats::default()
        };
        let text = render(&stats, &process(), &[]);
        assert!(text.ends_with('\n'));
        let v = |series| value_of(&text, series);
        assert_eq!(
            v("wspush_publishes_total{source=\"api\"}").as_deref(),
            Some("6")
        );
        assert_eq!(
            v("wspush_publishes_total{source=\"tick\"}").as_deref(),
            Some("4")
        );
        assert_eq!(v("wspush_publishes_total"), None, "/stats only");
        assert_eq!(
            v("wspush_timeouts_total{kind=\"write\"}").as_deref(),
            Some("3")
        );
        assert_eq!(
            v("wspush_written_bytes_total").as_deref(),
            Some("1099511627776")
        );
        assert_eq!(v("wspush_connections").as_deref(), Some("3"));
        assert_eq!(v("process_cpu_seconds_total").as_deref(), Some("1.25"));
        assert!(text.contains("# TYPE wspush_timeouts_total counter\n"));
        assert!(text.contains("# TYPE process_open_fds gauge\n"));
        assert!(
            !text.contains("wspush_topic_"),
            "no per-topic series unless configured"
        );

        let bare = render(&stats, &Process::default(), &[]);
        assert!(
            !bare.contains("process_"),
            "unreadable figures leave no empty family"
        );
        samples(&bare);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let mut stats = Stats::default();
        for us in [5, 10, 11, 300, 300, 2_000_000] {
            stats.fanout.observe(Duration::from_micros(us));
        }
        assert_eq!(
            stats.fanout.counts[0], 2,
            "10 us is in le=1e-5 (le: at most)"
        );
        assert_eq!(stats.fanout.counts[1], 1);
        assert_eq!(stats.fanout.counts[FANOUT_BOUNDS_NS.len()], 1, "over 1 s");
        assert_eq!(stats.fanout.max_ns, 2_000_000_000);
        let text = render(&stats, &process(), &[]);
        let buckets: Vec<(String, u64)> = samples(&text)
            .into_iter()
            .filter(|(s, _)| s.starts_with("wspush_fanout_seconds_bucket"))
            .map(|(s, v)| (s, v.parse().unwrap()))
            .collect();
        assert_eq!(buckets.len(), FANOUT_BOUNDS_NS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(
            buckets[0],
            ("wspush_fanout_seconds_bucket{le=\"0.00001\"}".into(), 2)
        );
        assert_eq!(buckets[5].1, 5, "le=5e-4 holds the two 300 us");
        assert_eq!(
            buckets.last().unwrap(),
            &("wspush_fanout_seconds_bucket{le=\"+Inf\"}".into(), 6)
        );
        assert_eq!(
            value_of(&text, "wspush_fanout_seconds_count").as_deref(),
            Some("6")
        );
        let sum: f64 = value_of(&text, "wspush_fanout_seconds_sum")
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 2.000626).abs() < 1e-9, "{sum}");
        assert!(text.contains("# TYPE wspush_fanout_seconds histogram\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("a\nb"), "a\\nb");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        let prefixes = [
            PrefixFigures {
                prefix: "news/",
                publishes: 3,
                deliveries: 30,
                subscribers: 10,
            },
            PrefixFigures {
                prefix: "odd\"\\",
                publishes: 1,
                deliveries: 0,
                subscribers: 0,
            },
        ];
        let text = render(&Stats::default(), &process(), &prefixes);
        let v = |series| value_of(&text, series);
        assert_eq!(
            v("wspush_topic_publishes_total{prefix=\"news/\"}").as_deref(),
            Some("3")
        );
        assert_eq!(
            v("wspush_topic_deliveries_total{prefix=\"news/\"}").as_deref(),
            Some("30")
        );
        assert_eq!(
            v("wspush_topic_subscribers{prefix=\"news/\"}").as_deref(),
            Some("10")
        );
        assert_eq!(
            v("wspush_topic_publishes_total{prefix=\"odd\\\"\\\\\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn topic_prefixes_count_under_every_prefix_a_topic_starts_with() {
        let mut none = TopicPrefixes::default();
        assert!(none.is_empty());
        none.on_publish("news/a", 3);
        assert!(none.figures([("news/a", 3)].into_iter()).is_empty());

        let mut p = TopicPrefixes::new(&["news/".to_owned(), "news/sport".to_owned()]);
        p.on_publish("news/sport/1", 2);
        p.on_publish("news/weather", 5);
        p.on_publish("other", 7);
        let topics = [("news/sport/1", 2), ("news/weather", 5), ("other", 7)];
        let figures = p.figures(topics.into_iter());
        assert_eq!(
            figures,
            [
                PrefixFigures {
                    prefix: "news/",
                    publishes: 2,
                    deliveries: 7,
                    subscribers: 7,
                },
                PrefixFigures {
                    prefix: "news/sport",
                    publishes: 1,
                    deliveries: 2,
                    subscribers: 2,
                },
            ]
        );
    }
}
