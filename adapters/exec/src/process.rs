//! Processes seen through `/proc`, and process groups stopped with signals.
//!
//! Linux only: the pid file pairs a pid with its start time (field 22 of `/proc/<pid>/stat`)
//! so that a pid recycled after a reboot or a long outage is not mistaken for ours.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often a stopping group is checked for members left.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How long to wait for the kernel to tear down a group after `SIGKILL`.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` this crate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, …).
    pub state: char,
    /// Process group id.
    pub pgrp: i32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// True unless the process has exited and only waits to be reaped.
    pub(crate) fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may itself hold spaces and `)`, so
    // fields are counted from the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field N is `fields[N - 3]`.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// True when `pid` is a live process that started at `start_time`.
pub(crate) fn is_alive(pid: i32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && s.is_live())
}

/// The live (not zombie) members of process group `pgid`.
///
/// Zombies are left out because a group whose processes have all exited is done, even if
/// no one has reaped them yet (a container's pid 1 may never do so).
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && s.is_live()))
        .collect()
}

/// Sends `signal` to group `pgid`; a group already gone is not an error.
fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Stops group `pgid`: `SIGTERM`, then `SIGKILL` to whatever is left after `grace`.
/// Returns once the group has no live member, or after a bounded wait.
///
/// The caller must know the group is ours (its leader matched the pid file) when this
/// starts. Linux does not hand out a pid that is still some group's id, so the group stays
/// ours for as long as it has members, and the later signals cannot reach strangers.
pub(crate) async fn stop_group(pgid: i32, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    if wait_empty(pgid, grace).await {
        return;
    }
    signal_group(pgid, Signal::SIGKILL);
    if !wait_empty(pgid, KILL_WAIT).await {
        tracing::warn!(pgid, "processes of the group survived SIGKILL");
    }
}

async fn wait_empty(pgid: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        let members = tokio::task::spawn_blocking(move || group_members(pgid))
            .await
            .unwrap_or_default();
        if members.is_empty() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(STOP_CHECK).await;
    }
}

/// `SIGKILL` for 9; `signal 77` for numbers without a name.
pub(crate) fn signal_name(number: i32) -> String {
    Signal::try_from(number)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {number}"))
}

/// The start time of the calling process, for tests.
#[cfg(test)]
pub(crate) fn own_start_time() -> u64 {
    stat(std::process::id() as i32).map_or(0, |s| s.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let line =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 1234,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn sees_itself_alive_and_others_not() {
        let me = std::process::id() as i32;
        let start = own_start_time();
        assert!(start > 0);
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert!(!is_alive(0, 0));
        assert!(!is_alive(-5, 0));
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(77), "signal 77");
    }
}
