//! The process figures of `/stats` and `/metrics`, read from Linux's `/proc` when a report is
//! asked for (no periodic work). A figure that cannot be read is `None` and left out of the
//! reports; off Linux all of them are.

use std::fs;

use crate::app::metrics::Process;

/// Clock ticks per second of `/proc/*/stat` times: the kernel reports them in USER_HZ, which
/// is 100 on every Linux architecture (what `sysconf(_SC_CLK_TCK)` returns).
const TICKS_PER_SECOND: f64 = 100.0;

pub(super) fn read() -> Process {
    let stat = fs::read_to_string("/proc/self/stat").ok();
    let stat_fields = stat.as_deref().map(after_comm);
    let field = |n: usize| -> Option<u64> { stat_fields.as_ref()?.get(n)?.parse().ok() };
    // Fields of `man 5 proc` numbered from 1; `after_comm` starts at field 3 (state).
    let (utime, stime, start_ticks) = (field(14 - 3), field(15 - 3), field(22 - 3));
    let boot_time = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| value_after(&s, "btime"));
    Process {
        rss_bytes: rss_bytes(),
        open_fds: open_fds(),
        max_fds: fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| value_after(&s, "Max open files")),
        cpu_seconds: utime
            .zip(stime)
            .map(|(u, s)| (u + s) as f64 / TICKS_PER_SECOND),
        start_time_seconds: boot_time
            .zip(start_ticks)
            .map(|(boot, ticks)| boot as f64 + ticks as f64 / TICKS_PER_SECOND),
    }
}

/// The resident set size (`VmRSS`), for `/stats` and the summary line.
pub(super) fn rss_bytes() -> Option<u64> {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| value_after(&s, "VmRSS:"))
        .map(|kib| kib * 1024)
}

/// The space-separated fields of `/proc/self/stat` after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn after_comm(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect())
}

/// The first number after `key` on the line that starts with it (`VmRSS:   1234 kB`,
/// `Max open files  1024  4096  files`); `None` for `unlimited`.
fn value_after(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Linux 6.2 and later report the count as the size of `/proc/self/fd`: one `stat`, whatever
/// the number of connections. Older kernels say 0; listing the directory then costs one entry
/// per descriptor (and the listing's own descriptor is not counted).
fn open_fds() -> Option<u64> {
    match fs::metadata("/proc/self/fd") {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        Ok(_) => {
            let listed = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
            Some(listed.saturating_sub(1))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_name_may_hold_spaces_and_parentheses() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5000 0";
        let fields = after_comm(stat);
        assert_eq!(fields[0], "S");
        assert_eq!(fields[14 - 3], "7");
        assert_eq!(fields[15 - 3], "3");
        assert_eq!(fields[22 - 3], "5000");
        assert!(after_comm("no parenthesis").is_empty());
    }

    #[test]
    fn values_after_keys() {
        let status = "Name:\twspush\nVmHWM:\t  900 kB\nVmRSS:\t  812 kB\n";
        assert_eq!(value_after(status, "VmRSS:"), Some(812));
        assert_eq!(value_after(status, "VmSwap:"), None);
        let limits = "Max cpu time              unlimited            unlimited            \
                      seconds\nMax open files            1024                 524288               \
                      files\n";
        assert_eq!(value_after(limits, "Max open files"), Some(1024));
        assert_eq!(value_after(limits, "Max cpu time"), None, "unlimited");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_plausibly() {
        let p = read();
        let rss = p.rss_bytes.expect("VmRSS");
        assert!(rss > 100 * 1024 && rss < 1 << 40, "{rss}");
        let extra: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        // Other test threads open and close files too: at least stdio and ours are seen.
        let open = read().open_fds.expect("open fds");
        assert!(open >= 3 + 5, "{open}");
        drop(extra);
        assert!(p.max_fds.is_some_and(|m| m >= 3));
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.expect("start time");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
