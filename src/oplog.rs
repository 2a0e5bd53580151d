//! Operator log lines that need state, sans-IO (time passed in): a rate limit for classes of
//! lines a peer can provoke ([`LogLimiter`]), and the authentication-failure line built on it
//! ([`AuthLog`]).
//!
//! An authentication failure is one `info` line with its kind, the client's address
//! ([`ClientAddr`]: a trusted proxy's forwarded address and the TCP peer) and the path or
//! route, never the token. At most [`AuthLog::PER_WINDOW`] lines per [`AuthLog::WINDOW_MS`];
//! what a window suppressed is counted in one line when it ends.

use std::fmt;

use log::info;

use crate::wire::forwarded::ClientAddr;

/// Rate limits one class of log lines: at most `per_window` per window of `window_ms`; the
/// rest are counted and reported once the window is over.
#[derive(Clone, Copy, Debug)]
pub struct LogLimiter {
    per_window: u32,
    window_ms: u64,
    window_start_ms: u64,
    in_window: u32,
    suppressed: u32,
}

/// Lines a limiter held back: `count` of them over the last `over_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u32,
    pub over_ms: u64,
}

impl Suppressed {
    /// The span in whole seconds, rounded up (at least 1), as the report line shows it.
    pub fn secs(&self) -> u64 {
        self.over_ms.div_ceil(1000).max(1)
    }
}

impl LogLimiter {
    pub const fn new(per_window: u32, window_ms: u64) -> Self {
        LogLimiter {
            per_window,
            window_ms,
            window_start_ms: 0,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now_ms`. When the window it falls in is a new one,
    /// `report` first gets what the last one suppressed, if anything.
    pub fn allow(&mut self, now_ms: u64, report: impl FnOnce(Suppressed)) -> bool {
        self.end_window(now_ms, report);
        self.in_window += 1;
        let allowed = self.in_window <= self.per_window;
        if !allowed {
            self.suppressed += 1;
        }
        allowed
    }

    /// Ends the window if it is over at `now_ms`, reporting what it suppressed.
    pub fn end_window(&mut self, now_ms: u64, report: impl FnOnce(Suppressed)) {
        if now_ms >= self.window_end_ms() {
            self.flush(now_ms, report);
        }
    }

    /// Reports what the current window has suppressed so far, whether it is over or not (at
    /// shutdown), and starts a new one.
    pub fn flush(&mut self, now_ms: u64, report: impl FnOnce(Suppressed)) {
        if self.suppressed > 0 {
            report(Suppressed {
                count: self.suppressed,
                over_ms: now_ms.saturating_sub(self.window_start_ms),
            });
        }
        *self = LogLimiter {
            window_start_ms: now_ms,
            in_window: 0,
            suppressed: 0,
            ..*self
        };
    }

    /// When the current window ends, if it has suppressed lines to report then.
    pub fn report_due_ms(&self) -> Option<u64> {
        (self.suppressed > 0).then(|| self.window_end_ms())
    }

    fn window_end_ms(&self) -> u64 {
        self.window_start_ms.saturating_add(self.window_ms)
    }
}

/// What failed to authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailureKind {
    /// A missing or wrong client token at the WebSocket upgrade (HTTP 401).
    UpgradeToken,
    /// A wrong token in the `auth` message (close 1008).
    MessageToken,
    /// Another message where the `auth` message was awaited (close 1008).
    MessageMissing,
    /// No `auth` message by the setup deadline (close 1008).
    MessageTimeout,
    /// A missing or wrong bearer token on the API (HTTP 401).
    ApiToken,
}

impl AuthFailureKind {
    /// The `kind=` of the log line.
    pub fn name(self) -> &'static str {
        match self {
            Self::UpgradeToken => "client_token_upgrade",
            Self::MessageToken => "client_token_message",
            Self::MessageMissing => "client_token_missing",
            Self::MessageTimeout => "client_token_timeout",
            Self::ApiToken => "api_token",
        }
    }

    /// What the client got: an HTTP status or a close code.
    fn answer(self) -> &'static str {
        match self {
            Self::UpgradeToken | Self::ApiToken => "status=401",
            Self::MessageToken | Self::MessageMissing | Self::MessageTimeout => "close=1008",
        }
    }
}

/// One failed authentication, as it is logged.
#[derive(Clone, Copy)]
pub struct AuthFailure<'a> {
    pub kind: AuthFailureKind,
    /// The connection, as other log lines name it (`session #12`, `API connection #3`).
    pub connection: &'a dyn fmt::Display,
    pub client: ClientAddr,
    /// The server's own path or route the request was for (never the request's query).
    pub path: &'a str,
}

impl fmt::Display for AuthFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from {}: authentication failed: kind={} {} path={}",
            self.connection,
            self.client,
            self.kind.name(),
            self.kind.answer(),
            self.path
        )
    }
}

/// The rate-limited authentication-failure lines. The server arms one timer when a window has
/// suppressed lines ([`AuthLog::timer_wanted`]), so the count is reported even if no failure
/// follows.
#[derive(Debug)]
pub struct AuthLog {
    limiter: LogLimiter,
    timer_armed: bool,
}

impl Default for AuthLog {
    fn default() -> Self {
        AuthLog {
            limiter: LogLimiter::new(Self::PER_WINDOW, Self::WINDOW_MS),
            timer_armed: false,
        }
    }
}

impl AuthLog {
    pub const PER_WINDOW: u32 = 10;
    pub const WINDOW_MS: u64 = 10_000;

    /// Logs `failure` at info unless this window's lines are used up.
    pub fn failed(&mut self, now_ms: u64, failure: &AuthFailure<'_>) {
        if self.limiter.allow(now_ms, report_suppressed) {
            info!("{failure}");
        }
    }

    /// When the server should call [`AuthLog::on_timer`], once per window that suppressed lines.
    pub fn timer_wanted(&mut self) -> Option<u64> {
        if self.timer_armed {
            return None;
        }
        let due = self.limiter.report_due_ms()?;
        self.timer_armed = true;
        Some(due)
    }

    pub fn on_timer(&mut self, now_ms: u64) {
        self.timer_armed = false;
        self.limiter.end_window(now_ms, report_suppressed);
    }

    /// Reports what is suppressed so far (the server stops: no window end will come).
    pub fn flush(&mut self, now_ms: u64) {
        self.limiter.flush(now_ms, report_suppressed);
    }
}

fn report_suppressed(suppressed: Suppressed) {
    let noun = if suppressed.count == 1 {
        "failure"
    } else {
        "failures"
    };
    info!(
        "{} similar authentication {noun} suppressed in the last {}s",
        suppressed.count,
        suppressed.secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Runs `allow` at each time, collecting the verdicts and the reports.
    fn drive(limiter: &mut LogLimiter, times: &[u64]) -> (Vec<bool>, Vec<Suppressed>) {
        let reports = RefCell::new(Vec::new());
        let verdicts = times
            .iter()
            .map(|&t| limiter.allow(t, |s| reports.borrow_mut().push(s)))
            .collect();
        (verdicts, reports.into_inner())
    }

    #[test]
    fn allows_a_burst_then_counts_the_rest() {
        let mut limiter = LogLimiter::new(3, 10_000);
        let (verdicts, reports) = drive(&mut limiter, &[0, 1, 2, 3, 4, 9_999]);
        assert_eq!(verdicts, [true, true, true, false, false, false]);
        assert!(reports.is_empty(), "nothing reported inside the window");
        assert_eq!(limiter.report_due_ms(), Some(10_000));
        // The next line after the window reports the count first, and is logged.
        let (verdicts, reports) = drive(&mut limiter, &[12_500]);
        assert_eq!(verdicts, [true]);
        assert_eq!(
            reports,
            [Suppressed {
                count: 3,
                over_ms: 12_500
            }]
        );
        assert_eq!(reports[0].secs(), 13);
        assert_eq!(limiter.report_due_ms(), None);
    }

    #[test]
    fn a_window_without_suppression_reports_nothing() {
        let mut limiter = LogLimiter::new(2, 1_000);
        let (verdicts, reports) = drive(&mut limiter, &[0, 500, 1_000, 1_500, 5_000]);
        assert_eq!(verdicts, [true, true, true, true, true]);
        assert!(reports.is_empty());
        assert_eq!(limiter.report_due_ms(), None);
    }

    #[test]
    fn the_window_end_reports_without_another_line() {
        let mut limiter = LogLimiter::new(1, 10_000);
        drive(&mut limiter, &[100, 200, 300]);
        let mut reported = Vec::new();
        limiter.end_window(9_999, |s| reported.push(s));
        assert!(reported.is_empty(), "too early");
        limiter.end_window(10_000, |s| reported.push(s));
        assert_eq!(
            reported,
            [Suppressed {
                count: 2,
                over_ms: 10_000
            }]
        );
        // Reported once: the new window starts empty.
        limiter.end_window(30_000, |s| reported.push(s));
        assert_eq!(reported.len(), 1);
        let (verdicts, _) = drive(&mut limiter, &[30_001]);
        assert_eq!(verdicts, [true]);
        // A flush reports before the window is over.
        drive(&mut limiter, &[30_002, 30_003]);
        limiter.flush(31_000, |s| reported.push(s));
        assert_eq!(reported.len(), 2);
        assert_eq!(reported[1].count, 2);
        limiter.flush(31_001, |s| reported.push(s));
        assert_eq!(reported.len(), 2, "nothing left to report");
    }

    #[test]
    fn auth_log_arms_one_timer_per_suppressing_window() {
        let mut log = AuthLog::default();
        let failure = AuthFailure {
            kind: AuthFailureKind::ApiToken,
            connection: &"API connection #1",
            client: ClientAddr {
                peer: Some("127.0.0.1:5555".parse().unwrap()),
                forwarded: None,
            },
            path: "/publish",
        };
        for t in 0..AuthLog::PER_WINDOW as u64 {
            log.failed(t, &failure);
        }
        assert_eq!(log.timer_wanted(), None, "nothing suppressed yet");
        log.failed(50, &failure);
        assert_eq!(log.timer_wanted(), Some(AuthLog::WINDOW_MS));
        log.failed(60, &failure);
        assert_eq!(log.timer_wanted(), None, "armed already");
        log.on_timer(AuthLog::WINDOW_MS);
        assert_eq!(log.timer_wanted(), None, "reported: nothing left");
    }

    #[test]
    fn failure_lines_name_kind_address_and_path() {
        let failure = AuthFailure {
            kind: AuthFailureKind::UpgradeToken,
            connection: &"session #12",
            client: ClientAddr {
                peer: Some("127.0.0.1:5555".parse().unwrap()),
                forwarded: Some("203.0.113.7".parse().unwrap()),
            },
            path: "/ws",
        };
        assert_eq!(
            failure.to_string(),
            "session #12 from 203.0.113.7 (via 127.0.0.1:5555): authentication failed: \
             kind=client_token_upgrade status=401 path=/ws"
        );
    }
}
