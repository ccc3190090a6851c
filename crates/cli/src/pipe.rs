//! A closed standard output or error (`baton validate | head -1`) ends baton quietly, as it
//! ends other command-line tools, instead of with a panic message.
//!
//! Rust ignores `SIGPIPE`, so a write to a pipe whose reader is gone fails, and `print!`
//! panics on the failure. Restoring the signal would also end `serve` and `run` on a write
//! to a closed socket or to a command's stdin; catching the one panic here covers every
//! command that prints, in one place.

use std::any::Any;

/// The status a shell reports for a process that `SIGPIPE` ended (128 + 13): what scripts
/// that use `set -o pipefail` already expect from the left side of `| head`.
pub(crate) const CLOSED_PIPE_STATUS: i32 = 141;

/// Makes a print to a closed pipe end the process with [`CLOSED_PIPE_STATUS`], silently.
pub(crate) fn exit_quietly_when_closed() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_closed_pipe(info.payload()) {
            std::process::exit(CLOSED_PIPE_STATUS);
        }
        report(info);
    }));
}

/// True for the panic of `print!`, `eprint!` and their kin when their reader is gone.
fn is_closed_pipe(payload: &(dyn Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to std")
        && message.ends_with(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_print_to_a_closed_pipe_counts() {
        let epipe = std::io::Error::from_raw_os_error(libc::EPIPE);
        let closed = format!("failed printing to stdout: {epipe}");
        assert!(is_closed_pipe(&closed));
        assert!(is_closed_pipe(&format!(
            "failed printing to stderr: {epipe}"
        )));
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(!is_closed_pipe(&format!(
            "failed printing to stdout: {full}"
        )));
        assert!(!is_closed_pipe(&"index out of bounds"));
        assert!(!is_closed_pipe(&42));
    }
}
