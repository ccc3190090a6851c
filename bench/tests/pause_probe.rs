//! `pause-probe` wakes many times, counts every late wakeup once in its phase, and reports a
//! pause that its own process caused.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::Command;
use std::time::Duration;

fn probe(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pause-probe"))
        .args(args)
        .output()
        .expect("run pause-probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one line of JSON")
}

fn late_by_phase(report: &serde_json::Value) -> Vec<u64> {
    report["late_by_phase"]
        .as_array()
        .expect("late_by_phase")
        .iter()
        .map(|c| c.as_u64().expect("a count"))
        .collect()
}

#[test]
fn every_late_wakeup_is_counted_once_in_its_phase() {
    let report = probe(&["0.3", "0"]);
    let wakeups = report["wakeups"].as_u64().unwrap();
    let late = report["late"].as_u64().unwrap();
    // 200 µs naps for 0.3 s: at most 1,500 wakeups, and even a slow machine makes dozens.
    assert!((10..=1500).contains(&wakeups), "{report}");
    // With no threshold every nap that overslept at all is late: nearly all of them.
    assert!(late > 0 && late <= wakeups, "{report}");
    let phases = late_by_phase(&report);
    assert_eq!(phases.len(), 10, "{report}");
    assert_eq!(phases.iter().sum::<u64>(), late, "{report}");
}

#[test]
fn a_stopped_probe_reports_the_pause() {
    let child = Command::new(env!("CARGO_BIN_EXE_pause-probe"))
        .args(["1.5", "50"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run pause-probe");
    std::thread::sleep(Duration::from_millis(300));
    // SIGSTOP then SIGCONT: the machine pausing the probe, as a host pauses a VM.
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    // Our own child's pid, which it cannot outlive before `wait` below.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(400));
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let out = child.wait_with_output().expect("wait");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(report["late"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["worst_ms"].as_f64().unwrap() >= 350.0, "{report}");
    assert_eq!(
        late_by_phase(&report).iter().sum::<u64>(),
        report["late"].as_u64().unwrap()
    );
}

#[test]
fn a_bad_argument_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_pause-probe"))
        .arg("soon")
        .output()
        .expect("run pause-probe");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
