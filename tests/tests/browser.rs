//! Webmail in a real browser: a whole HCU run by `mailctl up`, and headless Chromium (driven by
//! `tests/py/browser.py` through chromedriver) signing in with the login form, reading, replying
//! with an uploaded attachment, filing, deleting and signing out. Screenshots of every page go
//! to `$CARGO_TARGET_DIR/test-output/browser/`; the store is then checked for what the browser
//! did.
//!
//! Needs Debian's `chromium`, `chromium-driver` and `python3-selenium` (run with
//! `/usr/bin/python3`). Without them the test fails: it never passes without a browser.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lettre::message::Mailbox as Address;
use lettre::{AsyncTransport, Message};
use megamail_tests::bin_dir;
use megamail_tests::support::mail::mailer;
use megamail_tests::support::mailbox::subjects;
use megamail_tests::support::Mailbox;
use megamail_tests::up::{addr, Up};
use mserv::Policy;
use xfs::INBOX;

const PYTHON: &str = "/usr/bin/python3";
const CHROMIUM: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const CHROMEDRIVER: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
const PACKAGES: &str = "chromium chromium-driver python3-selenium";

const ALICE: &str = "alice@megamail.test";
const ALICE_PASSWORD: &str = "correct horse battery staple";
const BOB: &str = "bob@megamail.test";
const REPLY_SUBJECT: &str = "Quarterly notes";
const MOVE_SUBJECT: &str = "Project kickoff";
const DELETE_SUBJECT: &str = "Lunch on Friday?";
const FOLDER: &str = "Projects";
/// The file the script uploads, and what it writes in it.
const ATTACHMENT: &str = "notes.txt";
const ATTACHMENT_TEXT: &str = "Attached from a browser.\nline two\n";
/// The longest the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long mail may take to show in a folder.
const WAIT: Duration = Duration::from_secs(60);

/// The `tests/` directory of this checkout.
fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail, naming what to install, unless the browser, its driver and Selenium are all here.
fn require_browser() {
    let missing = |what: &str| -> ! {
        panic!(
            "the browser test cannot run: {what}. Install Debian's packages with \
             `apt-get install -y {PACKAGES}`"
        )
    };
    if !Path::new(PYTHON).exists() {
        missing(&format!("{PYTHON} does not exist"));
    }
    if !CHROMIUM.iter().any(|p| Path::new(p).exists()) {
        missing(&format!("no Chromium at {}", CHROMIUM.join(" or ")));
    }
    if !CHROMEDRIVER.iter().any(|p| Path::new(p).exists()) {
        missing(&format!("no chromedriver at {}", CHROMEDRIVER.join(" or ")));
    }
    let selenium = std::process::Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .output()
        .expect("running python3");
    if !selenium.status.success() {
        missing(&format!(
            "{PYTHON} cannot import selenium ({})",
            String::from_utf8_lossy(&selenium.stderr).trim()
        ));
    }
}

/// `$CARGO_TARGET_DIR` (relative to the workspace when relative), else the target directory
/// this test binary was built into.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                tests_dir().parent().expect("tests/ has a parent").join(d)
            }
        }
        _ => bin_dir()
            .parent()
            .expect("target/<profile> has a parent")
            .to_path_buf(),
    }
}

/// The screenshot directory, emptied of an earlier run's pictures.
fn screenshot_dir() -> PathBuf {
    let dir = target_dir().join("test-output").join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "png" || x == "log") {
            let _ = std::fs::remove_file(p);
        }
    }
    dir
}

/// Three messages from Bob to Alice, through smtp-in.
async fn send_mail(smtp: std::net::SocketAddr) {
    let mailer = mailer(smtp);
    let from: Address = format!("Bob Example <{BOB}>").parse().unwrap();
    let to: Address = format!("Alice Example <{ALICE}>").parse().unwrap();
    for (i, subject) in [DELETE_SUBJECT, MOVE_SUBJECT, REPLY_SUBJECT]
        .iter()
        .enumerate()
    {
        let msg = Message::builder()
            .from(from.clone())
            .to(to.clone())
            .message_id(Some(format!("<browser-{i}@megamail.test>")))
            .subject(*subject)
            .body(format!(
                "Hi Alice,\n\nthis is about: {subject}.\nCould you send me your notes?\n\nBob\n"
            ))
            .unwrap();
        mailer.send(msg).await.expect("smtp-in accepts the message");
    }
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 8 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_replies_with_an_attachment_files_deletes_and_signs_out() {
    require_browser();
    let shots = screenshot_dir();
    let up = Up::start().await;
    let e = up.endpoints();
    let login_url = e["login_url"].as_str().expect("a login URL").to_string();
    let hcu = up.hcu();
    hcu.add_user(
        ALICE,
        ALICE_PASSWORD,
        "Alice Example",
        Policy::LeastLoaded,
        0,
    )
    .await
    .unwrap();
    hcu.add_user(
        BOB,
        "another long password",
        "Bob Example",
        Policy::LeastLoaded,
        0,
    )
    .await
    .unwrap();

    send_mail(addr(&e["smtp"])).await;
    let alice = Mailbox::of(&hcu, ALICE).await.unwrap();
    let bob = Mailbox::of(&hcu, BOB).await.unwrap();
    for s in [REPLY_SUBJECT, MOVE_SUBJECT, DELETE_SUBJECT] {
        alice.wait_for(INBOX, s, WAIT).await;
    }

    let files = tempfile::tempdir().unwrap();
    let script = tests_dir().join("py/browser.py");
    let started = Instant::now();
    let child = tokio::process::Command::new(PYTHON)
        .arg(&script)
        .arg("--login-url")
        .arg(&login_url)
        .args(["--user", ALICE, "--password", ALICE_PASSWORD])
        .arg("--shots")
        .arg(&shots)
        .arg("--files")
        .arg(files.path())
        .args(["--reply-subject", REPLY_SUBJECT])
        .args(["--move-subject", MOVE_SUBJECT])
        .args(["--delete-subject", DELETE_SUBJECT])
        .args(["--folder", FOLDER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the browser script");
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("waiting for the browser script"),
        Err(_) => panic!("the browser script did not finish within {SCRIPT_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "browser script ({:.1} s):\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    if !stderr.trim().is_empty() {
        println!("browser script stderr:\n{stderr}");
    }
    assert!(
        out.status.success(),
        "the browser script failed ({}); screenshots in {}\n{stdout}\n{stderr}",
        out.status,
        shots.display()
    );
    assert!(stdout.contains("BROWSER OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("ATTACHED {ATTACHMENT}")),
        "{stdout}"
    );

    // A picture of every page, named in order.
    let pictures: Vec<PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SCREENSHOT "))
        .map(PathBuf::from)
        .collect();
    let names: Vec<String> = pictures
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "01-login.png",
        "02-inbox.png",
        "03-message.png",
        "04-reply.png",
        "05-sent-notice.png",
        "06-sent.png",
        "07-folder-created.png",
        "08-moved.png",
        "09-deleted.png",
        "10-trash.png",
        "11-signed-out.png",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} among {names:?}");
    }
    println!("screenshots in {}:", shots.display());
    for p in &pictures {
        assert!(p.starts_with(&shots), "{} is elsewhere", p.display());
        assert!(is_png(p), "{} is not a PNG", p.display());
        println!("  {}", p.display());
    }
    // The front door the browser landed on is one of this HCU's.
    let door = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FRONT_DOOR "))
        .expect("the script names the front door");
    let doors: Vec<&str> = e["frontdoor_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().trim_end_matches('/'))
        .collect();
    assert!(doors.contains(&door), "{door} is not among {doors:?}");

    // The reply reached Bob, with the uploaded file attached.
    let reply_subject = format!("Re: {REPLY_SUBJECT}");
    let reply = bob.wait_for(INBOX, &reply_subject, WAIT).await;
    assert!(
        reply.summary.attachments.iter().any(|a| a == ATTACHMENT),
        "the reply's attachments: {:?}",
        reply.summary.attachments
    );
    let body = bob.body(reply.msg).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(ATTACHMENT), "{text}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(ATTACHMENT_TEXT);
    let compact: String = text.split_whitespace().collect();
    assert!(
        text.contains(ATTACHMENT_TEXT.lines().next().unwrap()) || compact.contains(&b64),
        "the attachment's content is not in the reply:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("in-reply-to:")
                && l.contains("browser-2@megamail.test")),
        "the reply does not answer the original:\n{text}"
    );
    assert!(text.contains("Thanks, the notes are attached."), "{text}");
    // Alice keeps a copy in Sent, and the original is marked answered.
    alice.wait_for("Sent", &reply_subject, WAIT).await;
    let original = alice.wait_for(INBOX, REPLY_SUBJECT, WAIT).await;
    assert!(
        original.flags.contains(xfs::Flags::ANSWERED),
        "{:?}",
        original.flags
    );

    // The moved message is in the new folder and no longer in the Inbox; the deleted one is in
    // Trash.
    let moved = alice.entries(FOLDER).await.unwrap();
    assert_eq!(subjects(&moved), vec![MOVE_SUBJECT]);
    let trash = alice.entries("Trash").await.unwrap();
    assert_eq!(subjects(&trash), vec![DELETE_SUBJECT]);
    let inbox = alice.entries(INBOX).await.unwrap();
    assert_eq!(subjects(&inbox), vec![REPLY_SUBJECT]);
}
