//! SIGTERM triggers the shutdown that `on_signals` watches, and a second one ends the process at once.
//! Alone in its file: these tests signal their own process (or the `signal_child` example).

use std::process::Stdio;
use std::time::Duration;

use runtime::shutdown::{on_signals, Shutdown};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const HANG: Duration = Duration::from_secs(20);
/// The `signal_child` example, built beside this test binary (`target/<profile>/examples/`).
fn child_exe() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("test binary path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    profile_dir.join("examples").join("signal_child")
}

fn send_sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_triggers_shutdown() {
    let shutdown = Shutdown::new();
    on_signals(&shutdown);
    assert!(!shutdown.is_triggered());
    send_sigterm(std::process::id());
    tokio::time::timeout(HANG, shutdown.triggered())
        .await
        .expect("SIGTERM triggered the shutdown");
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    let exe = child_exe();
    assert!(exe.exists(), "{} is built with the tests", exe.display());
    let mut child = tokio::process::Command::new(exe)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start child");
    let pid = child.id().expect("child pid");
    let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let mut wait_for = async |marker: &str| {
        while let Some(line) = lines.next_line().await.expect("read child stdout") {
            if line.contains(marker) {
                return;
            }
        }
        panic!("child ended before printing {marker:?}");
    };

    tokio::time::timeout(HANG, wait_for("child: ready"))
        .await
        .expect("child ready");
    send_sigterm(pid);
    tokio::time::timeout(HANG, wait_for("child: draining"))
        .await
        .expect("child draining");
    send_sigterm(pid);
    let status = tokio::time::timeout(HANG, child.wait())
        .await
        .expect("child exits after the second signal")
        .expect("wait for child");
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
}
