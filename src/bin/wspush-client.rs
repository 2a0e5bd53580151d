//! `wspush-client`: the seed's client, done right. Prints one line per push on stdout, its data
//! as the server sent it; logs on stderr. Reconnects with backoff and resubscribes after any failure.

use std::io::Write;
use std::process::ExitCode;

use wspush::client::{Client, ClientConfig, Event, TokenIn};
use wspush::config::parse_duration;

const HELP: &str = "wspush-client: subscribe to a wspush server and print pushes

Usage: wspush-client -r HOST:PORT [FLAGS]

  -r, --server HOST:PORT|URL  server address, or a full ws://host:port/path URL (required;
                              no wss://: TLS needs a TLS-terminating proxy)
  -t, --topic TOPIC           topic to subscribe to, repeatable [default: test-topic]
  --claim CLAIM               signed claim for private topics (PAYLOAD.SIG), repeatable;
                              sent with every subscribe
  --path PATH                 endpoint path when -r is HOST:PORT [default: /ws]
  --token TOKEN               the server's --client-token, sent as Authorization: Bearer
                              with the upgrade [default: none]
  --token-in-message          send the token as the first message {\"cmd\":\"auth\",..}
                              instead of the header
  --json                      print JSON lines {\"topic\":..,\"data\":..}, with \"offset\" and
                              \"epoch\" when the server sends positions [default: plain]
  --recent N                  on the first subscribe, replay the last N messages the server
                              holds of each topic first [default: none]
  --count N                   exit after N pushes [default: run forever]
  --ping-interval DURATION    heartbeat ping interval [default: 10s]
  --heartbeat-timeout DURATION  dead if nothing arrives this long after a ping [default: 10s]
  --write-timeout DURATION    [default: 10s]
  --connect-timeout DURATION  [default: 10s]
  --backoff-initial DURATION  first reconnect delay, doubled per failure, +-20% jitter [default: 3s]
  --backoff-max DURATION      longest reconnect delay [default: 30s]
  --log-level LEVEL           off|error|warn|info|debug|trace [default: info]
  --help
";

struct Args {
    config: ClientConfig,
    json: bool,
    count: Option<u64>,
    log_level: log::LevelFilter,
}

fn parse(args: Vec<String>) -> Result<Option<Args>, String> {
    let mut config = ClientConfig::new("");
    let (mut server, mut path, mut topics) = (None, "/ws".to_string(), Vec::new());
    let (mut json, mut count, mut log_level) = (false, None, log::LevelFilter::Info);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{flag} needs a value"))
        };
        let duration = |v: String| {
            parse_duration(&v).ok_or(format!("{flag}: expected a duration like 500ms, 3s"))
        };
        match flag.as_str() {
            "-r" | "--server" => server = Some(value()?),
            "-t" | "--topic" => topics.push(value()?),
            "--claim" => config.claims.push(value()?),
            "--path" => path = value()?,
            "--token" => config.token = Some(value()?),
            "--token-in-message" => config.token_in = TokenIn::Message,
            "--json" => json = true,
            "--count" => count = Some(value()?.parse().map_err(|_| "--count: expected a number")?),
            "--recent" => {
                config.recent = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--recent: expected a number")?,
                )
            }
            "--ping-interval" => config.ping_interval = duration(value()?)?,
            "--heartbeat-timeout" => config.heartbeat_timeout = duration(value()?)?,
            "--write-timeout" => config.write_timeout = duration(value()?)?,
            "--connect-timeout" => config.connect_timeout = duration(value()?)?,
            "--backoff-initial" => config.backoff_initial = duration(value()?)?,
            "--backoff-max" => config.backoff_max = duration(value()?)?,
            "--log-level" => {
                log_level = value()?
                    .parse()
                    .map_err(|_| "--log-level: off|error|warn|info|debug|trace")?
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    let server = server.ok_or("-r HOST:PORT is required")?;
    // Any scheme is passed on as a URL so that parse_url can name it (wss:// is refused there).
    config.url = if server.contains("://") {
        server
    } else {
        format!("ws://{server}{path}")
    };
    wspush::client::parse_url(&config.url).map_err(|e| e.to_string())?;
    if !topics.is_empty() {
        config.topics = topics;
    }
    if config.token_in == TokenIn::Message && config.token.is_none() {
        return Err("--token-in-message needs --token".into());
    }
    if config.ping_interval.is_zero() || config.heartbeat_timeout.is_zero() {
        return Err("intervals must be positive".into());
    }
    Ok(Some(Args {
        config,
        json,
        count,
        log_level,
    }))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wspush-client: {e}");
            return ExitCode::from(2);
        }
    };
    // stderr, so stdout stays free for the pushes.
    wspush::logger::Logger::new(args.log_level, wspush::logger::LogFormat::Text).install();
    let client = match Client::connect(args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wspush-client: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    for event in client.iter() {
        match event {
            Event::Push {
                topic,
                data,
                offset,
                epoch,
            } => {
                let mut out = stdout.lock();
                // `data` is the server's JSON text, printed as is. A raw CR or LF in valid JSON
                // can only be whitespace between tokens, so a space keeps one line per push
                // without changing the value.
                let data = data.replace(['\r', '\n'], " ");
                let line = if args.json {
                    // The topic is re-encoded; data is spliced in, never re-serialized.
                    let topic = serde_json::Value::from(topic);
                    let mut line = format!(r#"{{"topic":{topic},"data":{data}"#);
                    if let Some(offset) = offset {
                        line.push_str(&format!(r#","offset":{offset}"#));
                    }
                    if let Some(epoch) = epoch {
                        line.push_str(&format!(r#","epoch":{}"#, serde_json::Value::from(epoch)));
                    }
                    line.push('}');
                    line
                } else {
                    format!("{topic} {data}")
                };
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    break; // stdout closed (e.g. piped into head)
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            Event::Connected => log::info!("connected"),
            Event::ContinuityLost {
                topic,
                epoch,
                from,
                reason,
            } => log::warn!(
                "continuity lost on {topic} (epoch {epoch}): continuing from offset {from}; {reason}"
            ),
            Event::Disconnected { .. } => {}
            Event::ServerError(e) => log::warn!("server error: {e}"),
            Event::SubscribeRefused {
                topic,
                reason,
                error,
            } => log::error!("subscribe refused for {topic} ({reason}): {error}; not retried"),
            Event::Unsubscribed { topics, reason } => {
                log::warn!("the server ended {}: {reason}", topics.join(", "));
            }
            Event::Undecodable { text, error } => {
                let preview: String = text.chars().take(200).collect();
                log::error!("undecodable server message ({error}): {preview}");
            }
        }
    }
    client.stop();
    ExitCode::SUCCESS
}
