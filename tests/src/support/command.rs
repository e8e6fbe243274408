//! Commands a test runs to their end (mailctl, python3 with smtplib, openssl, hcu-sizing) and
//! whose success it needs.

use std::process::{Command, Output, Stdio};

/// The standard output of a finished command, which must have succeeded; otherwise the test
/// fails naming `what`, with the exit status and both outputs.
pub fn succeeded(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Run `cmd` to its end (no standard input); it must succeed, as [`succeeded`] checks. Its
/// standard output.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    succeeded(&out, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_both_outputs() {
        let out = run_ok(Command::new("sh").args(["-c", "echo hello"]), "echo");
        assert_eq!(out, "hello\n");
        let failed = std::panic::catch_unwind(|| {
            run_ok(
                Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
                "a script",
            )
        });
        let message = failed.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(
            message.starts_with("a script failed (exit status: 3): out\nerr"),
            "{message}"
        );
    }
}
