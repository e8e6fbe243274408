//! The shared `main`: --check-config, config errors, and what `run` returning means for the exit status.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use runtime::cli::main_with_args;
use runtime::config::CommonConfig;

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn never_run(
    _: CommonConfig,
    _: runtime::shutdown::Shutdown,
) -> std::future::Ready<anyhow::Result<()>> {
    panic!("run must not be called");
}

#[test]
fn check_config_accepts_a_good_file() {
    let file = config_file("[log]\nlevel = \"warn\"\n");
    let path = file.path().to_str().unwrap();
    let code = main_with_args(
        "test",
        ["test", "--config", path, "--check-config"],
        never_run,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    // The example's fault points are a web role's; its token file is checked relative to the
    // working directory, so it is given with one that exists.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("operator.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let example = include_str!("../example.toml").replace(
        "\"secrets/operator.secret\"",
        &format!("{:?}", secret.to_str().unwrap()),
    );
    let file = config_file(&example);
    let path = file.path().to_str().unwrap();
    let code = main_with_args(
        "login",
        ["login", "--check-config", "--config", path],
        never_run,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    // For a role without those points, or with the token file missing, the same file is bad.
    let code = main_with_args(
        "ustore",
        ["ustore", "--check-config", "--config", path],
        never_run,
    );
    assert_eq!(code, ExitCode::from(2));
    std::fs::remove_file(&secret).unwrap();
    let code = main_with_args(
        "login",
        ["login", "--check-config", "--config", path],
        never_run,
    );
    assert_eq!(code, ExitCode::from(2));
}

#[test]
fn start_up_faults_past_the_bounds_are_config_errors() {
    for text in [
        "[faults.\"login.stor\"]\nfail-rate = 1\n",
        "[faults.\"login.store\"]\ndelay-ms = 10001\n",
        "[admin]\nmax-fault-delay-ms = 5\n[faults.\"login.store\"]\ndelay-ms = 6\n",
    ] {
        let file = config_file(text);
        let path = file.path().to_str().unwrap();
        let code = main_with_args(
            "login",
            ["login", "--config", path, "--check-config"],
            never_run,
        );
        assert_eq!(code, ExitCode::from(2), "{text}");
    }
}

#[test]
fn check_config_rejects_a_bad_file_with_status_2() {
    let file = config_file("[log]\nlevle = \"warn\"\n");
    let path = file.path().to_str().unwrap();
    let code = main_with_args(
        "test",
        ["test", "--config", path, "--check-config"],
        never_run,
    );
    assert_eq!(code, ExitCode::from(2));
}

#[test]
fn bad_config_without_check_fails_before_run() {
    let file = config_file("[faults.\"a\"]\nfail-rate = 9\n");
    let path = file.path().to_str().unwrap();
    let code = main_with_args("test", ["test", "--config", path], never_run);
    assert_eq!(code, ExitCode::FAILURE);
}

#[test]
fn bad_arguments_exit_2() {
    let code = main_with_args("test", ["test", "--no-such-flag"], never_run);
    assert_eq!(code, ExitCode::from(2));
}

#[test]
fn run_gets_the_config_and_its_result_sets_the_status() {
    let file = config_file("[admin]\nlisten = \"127.0.0.1:9999\"\n");
    let path = file.path().to_str().unwrap().to_owned();
    let ran = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&ran);
    let code = main_with_args(
        "test",
        ["test", "--config", &path],
        move |cfg: CommonConfig, shutdown| async move {
            assert_eq!(cfg.admin.listen.port(), 9999);
            assert!(!shutdown.is_triggered());
            // A tracked task that stops on shutdown: main triggers and waits for it after run returns.
            let watcher = shutdown.clone();
            shutdown.spawn(async move { watcher.triggered().await });
            seen.store(true, Ordering::SeqCst);
            Ok(())
        },
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(ran.load(Ordering::SeqCst));

    let code = main_with_args("test", ["test"], |_: CommonConfig, _| async {
        Err(anyhow::anyhow!("disk on fire").context("opening the store"))
    });
    assert_eq!(code, ExitCode::FAILURE);
}
