//! `mailctl user`: add, delete and show users, and set their password. Passwords are read from
//! standard input (without echo on a terminal), never from the command line.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{bail, Context};
use mserv_client::Policy;
use serde_json::json;

use crate::admin::Hcu;
use crate::cli::{self, print, UserCmd};

/// Run one `mailctl user` command.
pub async fn run(hcu: &Hcu, cmd: UserCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add {
            user,
            display_name,
            store,
            quota,
        } => {
            let policy = match &store {
                Some(s) => cli::placement(s)?,
                None => Policy::LeastLoaded,
            };
            let pw = read_password()?;
            let name = if display_name.is_empty() {
                user.split('@').next().unwrap_or("").to_string()
            } else {
                display_name
            };
            let p = hcu.add_user(&user, &pw, &name, policy, quota).await?;
            print(
                json_out,
                json!({"user": user, "store": p.store, "segment": p.segment, "epoch": p.epoch}),
                format!("OK {user} on {} segment {}", p.store, p.segment),
            );
        }
        UserCmd::Del { user } => {
            let p = hcu.del_user(&user).await?;
            print(
                json_out,
                json!({"user": user, "deleted": true, "store": p.store}),
                format!("OK {user} deleted (was on {})", p.store),
            );
        }
        UserCmd::Show { user } => {
            let v = hcu.show_user(&user).await?;
            let human = show_table(&v);
            print(json_out, v, human);
        }
        UserCmd::Passwd { user } => {
            let pw = read_password()?;
            hcu.passwd(&user, &pw).await?;
            print(
                json_out,
                json!({"user": user, "password_changed": true}),
                format!("OK password of {user} changed; its older sessions are signed out"),
            );
        }
    }
    Ok(())
}

/// Human lines for `user show`.
fn show_table(v: &serde_json::Value) -> String {
    let mut human = format!(
        "{}\n  store {} segment {} (epoch {})\n  name {:?}, state {}, {} messages, {} bytes used\n  folders:",
        v["user"].as_str().unwrap_or(""),
        v["store"].as_str().unwrap_or(""),
        v["segment"],
        v["epoch"],
        v["display_name"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        v["messages"],
        v["used_bytes"],
    );
    for f in v["folders"].as_array().into_iter().flatten() {
        human.push_str(&format!(
            "\n    {:<12} {:>6} messages, {:>6} unread",
            f["name"].as_str().unwrap_or(""),
            f["total"],
            f["unread"]
        ));
    }
    human
}

/// Read a password: one line from standard input (prompted, without echo, on a terminal).
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    // SAFETY: termios calls on standard input with a zeroed, then filled, struct.
    let saved = tty.then(|| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut t);
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        saved
    });
    if tty {
        eprint!("Password: ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restoring the attributes read above.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        eprintln!();
    }
    r.context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("no password on standard input");
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_lists_the_account_and_its_folders() {
        let v = json!({"user": "a@x.test", "store": "store-1", "segment": 1, "epoch": 3,
            "display_name": "A", "state": "active", "messages": 2, "used_bytes": 40,
            "folders": [{"name": "Inbox", "total": 2, "unread": 1}]});
        let text = show_table(&v);
        assert!(
            text.starts_with("a@x.test\n  store store-1 segment 1 (epoch 3)"),
            "{text}"
        );
        let folder = text.lines().last().unwrap();
        assert!(
            folder.trim_start().starts_with("Inbox")
                && folder.contains(" 2 messages, ")
                && folder.ends_with(" 1 unread"),
            "{text}"
        );
    }
}
