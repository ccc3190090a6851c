//! `flush-probe` flushes at the rate asked, reports ordered percentiles, leaves nothing behind
//! and refuses what it cannot use.

use std::process::Command;

fn probe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flush-probe"))
        .args(args)
        .output()
        .expect("run flush-probe")
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one line of JSON")
}

#[test]
fn it_flushes_at_the_rate_asked_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let r = report(&probe(&[dir.path().to_str().unwrap(), "0.5", "100"]));
    // 100 a second for half a second: paced, so never more than 51; a slow disk may make fewer.
    let flushes = r["flushes"].as_u64().unwrap();
    assert!((5..=51).contains(&flushes), "{r}");
    let ms = |k: &str| r[k].as_f64().unwrap();
    assert!(ms("p50_ms") > 0.0, "{r}");
    assert!(ms("p50_ms") <= ms("p99_ms"), "{r}");
    assert!(ms("p99_ms") <= ms("p999_ms"), "{r}");
    assert!(ms("p999_ms") <= ms("max_ms"), "{r}");
    assert!(r["over_5ms"].as_u64().unwrap() <= flushes, "{r}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "its file is removed"
    );
}

#[test]
fn a_rate_of_zero_flushes_as_fast_as_the_disk_answers() {
    let dir = tempfile::tempdir().unwrap();
    let r = report(&probe(&[dir.path().to_str().unwrap(), "0.3", "0"]));
    // Any disk, even a slow shared one, flushes a 4 KiB page more often than 10 times a second
    // when nothing paces it; at 100 a second the paced case above could not pass 51.
    assert!(r["flushes"].as_u64().unwrap() > 3, "{r}");
}

#[test]
fn a_missing_folder_is_named_in_the_error() {
    let out = probe(&["/nonexistent/baton-flush-probe", "0.1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/baton-flush-probe"), "{err}");
}

#[test]
fn a_bad_argument_is_refused() {
    for args in [&[".", "soon"][..], &[".", "1", "-5"], &[".", "1", "2", "3"]] {
        let out = probe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
}
