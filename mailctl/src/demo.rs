//! `mailctl up --demo`: a demo account with a few messages, delivered the way all mail is
//! (through SMTP into its store).

use std::time::Duration;

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mserv_client::{MservError, Policy};

use crate::admin::Hcu;

pub const DEMO_PASSWORD: &str = "demo-password";

const MESSAGES: &[(&str, &str, &str)] = &[
    (
        "Ada Lovelace <ada@example.test>",
        "Welcome to megamail",
        "Hello!\n\nThis mailbox lives on one of this HCU's user stores. Every message you see here came in through SMTP,\nlike mail from anywhere else.\n\nAda",
    ),
    (
        "Operations <ops@example.test>",
        "How this HCU is put together",
        "Three member index replicas, two user stores with two segments each, two front doors,\none login server and one SMTP ingress: each its own process, restarted if it dies.\n\nTry `mailctl status` and `mailctl probe`.",
    ),
    (
        "Grace Hopper <grace@example.test>",
        "Lunch on Friday?",
        "Are you free on Friday at noon?\n\n- Grace",
    ),
];

/// Make sure the demo account exists (with its first messages); say how to sign in.
pub async fn ensure(hcu: &Hcu) -> anyhow::Result<String> {
    let domain = hcu.endpoints.domains.first().context("no domain")?;
    let user = format!("demo@{domain}");
    let fresh = match hcu.mserv.lookup_uncached(&user).await {
        Ok(_) => false,
        Err(MservError::NoSuchUser) => {
            hcu.add_user(&user, DEMO_PASSWORD, "Demo User", Policy::LeastLoaded, 0)
                .await?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    if fresh {
        let smtp = hcu.endpoints.smtp.context("this HCU has no smtp-in")?;
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
            .port(smtp.port())
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let to: Mailbox = format!("Demo User <{user}>").parse()?;
        for (from, subject, body) in MESSAGES {
            let msg = Message::builder()
                .from(from.parse()?)
                .to(to.clone())
                .subject(*subject)
                .body(body.to_string())?;
            mailer
                .send(msg)
                .await
                .with_context(|| format!("sending the demo message `{subject}`"))?;
        }
    }
    let login = hcu
        .endpoints
        .login_url
        .clone()
        .unwrap_or_else(|| "(no login server)".into());
    Ok(format!(
        "Demo account: sign in at {login}/ as {user} with password {DEMO_PASSWORD}"
    ))
}
