//! The binaries' logger (feature `cli`): one line per record on stderr, as text or JSON, with a
//! UTC timestamp unless journald adds its own. The library itself never installs a logger.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{self, Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

pub use crate::config::LogFormat;

pub struct Logger {
    level: LevelFilter,
    format: LogFormat,
    timestamps: bool,
}

impl Logger {
    /// Timestamps unless stderr goes to journald (`JOURNAL_STREAM` set by systemd), which
    /// stamps every line itself. JSON lines always carry one.
    pub fn new(level: LevelFilter, format: LogFormat) -> Self {
        let journald = std::env::var_os("JOURNAL_STREAM").is_some();
        Logger {
            level,
            format,
            timestamps: format == LogFormat::Json || !journald,
        }
    }

    /// Installs this logger for the process; false if one was installed already.
    pub fn install(self) -> bool {
        let level = self.level;
        // Lives as long as the process: leaked once, not freed.
        if log::set_logger(Box::leak(Box::new(self))).is_err() {
            return false;
        }
        log::set_max_level(level);
        true
    }

    fn line(&self, record: &Record<'_>, now: SystemTime) -> String {
        let stamp = self.timestamps.then(|| rfc3339_utc(now));
        match self.format {
            LogFormat::Text => {
                let mut line = String::new();
                if let Some(stamp) = stamp {
                    line.push_str(&stamp);
                    line.push(' ');
                }
                line.push_str(&format!(
                    "{:<5} [{}] {}\n",
                    record.level(),
                    record.target(),
                    record.args()
                ));
                line
            }
            LogFormat::Json => {
                let mut value = serde_json::json!({
                    "ts": stamp,
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                if let Some(object) = value.as_object_mut() {
                    // The record's structured fields (the summary line's figures), beside
                    // the four keys above, which they cannot replace.
                    let _ = record.key_values().visit(&mut JsonFields(object));
                }
                format!("{value}\n")
            }
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line, so lines from the binaries' threads never interleave.
            let _ = std::io::stderr().write_all(self.line(record, SystemTime::now()).as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Adds a record's key-value pairs to a JSON object: numbers and booleans as such, `None` as
/// null, anything else as its text.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let key = key.as_str();
        if matches!(key, "ts" | "level" | "target" | "msg") {
            return Ok(());
        }
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            match value.to_string().as_str() {
                "None" => serde_json::Value::Null,
                text => text.into(),
            }
        };
        self.0.insert(key.to_owned(), json);
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_172_301, 123), "2026-12-02T00:45:01.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn lines_in_both_formats() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_172_301);
        let record = |f: &dyn Fn(&Record<'_>) -> String| {
            f(&Record::builder()
                .args(format_args!("a \"quoted\" message"))
                .level(log::Level::Info)
                .target("wspush::server")
                .build())
        };
        let text = Logger {
            level: LevelFilter::Info,
            format: LogFormat::Text,
            timestamps: true,
        };
        assert_eq!(
            record(&|r| text.line(r, now)),
            "2026-12-02T00:45:01.000Z INFO  [wspush::server] a \"quoted\" message\n"
        );
        let journald = Logger {
            timestamps: false,
            ..text
        };
        assert_eq!(
            record(&|r| journald.line(r, now)),
            "INFO  [wspush::server] a \"quoted\" message\n"
        );
        let json = Logger {
            level: LevelFilter::Info,
            format: LogFormat::Json,
            timestamps: true,
        };
        let line = record(&|r| json.line(r, now));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"ts": "2026-12-02T00:45:01.000Z", "level": "INFO",
                "target": "wspush::server", "msg": "a \"quoted\" message"})
        );
    }

    #[test]
    fn json_lines_carry_structured_fields() {
        let json = Logger {
            level: LevelFilter::Info,
            format: LogFormat::Json,
            timestamps: false,
        };
        let fields: [(&str, Option<u64>); 3] = [
            ("connections", Some(3)),
            ("rss_bytes", None),
            ("msg", Some(1)),
        ];
        let fields = &fields[..];
        let line = json.line(
            &Record::builder()
                .args(format_args!("stats: connections=3"))
                .level(log::Level::Info)
                .target("wspush::stats")
                .key_values(&fields)
                .build(),
            UNIX_EPOCH,
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"ts": null, "level": "INFO", "target": "wspush::stats",
                "msg": "stats: connections=3", "connections": 3, "rss_bytes": null})
        );
    }
}
