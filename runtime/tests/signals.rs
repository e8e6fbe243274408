//! SIGTERM triggers the shutdown that `on_signals` watches, and a second one ends the process at once.
//! Alone in its file: these tests signal their own process (or a copy of it).

use std::process::Stdio;
use std::time::Duration;

use runtime::shutdown::{on_signals, Shutdown};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const HANG: Duration = Duration::from_secs(20);
/// Set in the copy of this test binary that `second_signal_exits_at_once` starts.
const CHILD_ENV: &str = "RUNTIME_SIGNAL_TEST_CHILD";

fn send_sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_triggers_shutdown() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let shutdown = Shutdown::new();
    on_signals(&shutdown);
    assert!(!shutdown.is_triggered());
    send_sigterm(std::process::id());
    tokio::time::timeout(HANG, shutdown.triggered())
        .await
        .expect("SIGTERM triggered the shutdown");
}

/// In the child: a process whose drain never finishes.
#[tokio::test]
async fn signal_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let shutdown = Shutdown::new();
    on_signals(&shutdown);
    println!("child: ready");
    shutdown.triggered().await;
    println!("child: draining");
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = tokio::process::Command::new(exe)
        .args(["--exact", "signal_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
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
