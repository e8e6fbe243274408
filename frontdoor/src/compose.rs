//! Sending: a draft becomes an RFC 5322 message built with `lettre`, and one `Submit` to the
//! user's store files it in Sent and queues it for every recipient in one synced batch (the
//! outbound workers deliver it from there). The submission's id is the message's sha256, so a
//! retried send is stored and queued once. "Sent" means durable in the user's own store: there
//! is no state where the message went out but its Sent copy is missing, or the reverse.

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use sha2::{Digest, Sha256};
use xfs::{Delivery, Flags, MsgId, Submission};

use crate::auth::{now_ms, Session};
use crate::mailbox::StoreError;
use crate::text::starts_with_ignore_ascii_case;
use crate::{metrics, Ctx};

/// Recipients one message may have (To, Cc and Bcc together).
pub const MAX_RECIPIENTS: usize = 100;
/// The folder sent messages are filed in.
pub const SENT: &str = "Sent";

/// A file to attach.
#[derive(Debug, Clone)]
pub struct OutAttachment {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// A message to send, as the user wrote it.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub attachments: Vec<OutAttachment>,
    /// The Message-ID being answered, if this is a reply.
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

/// How a send ended.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    /// The copy in Sent.
    pub copy: MsgId,
    /// Recipients queued.
    pub queued: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The draft cannot be sent as it is (the user can fix it).
    #[error("{0}")]
    Invalid(String),
    /// The user's store refused it for good (the mailbox is full).
    #[error("the message was not sent: {0}")]
    Refused(String),
    /// The user's store could not be reached or failed for now.
    #[error("the message could not be sent just now ({0}); please try again")]
    Failed(String),
}

/// Split a list of addresses as people type them: commas, semicolons or new lines between
/// them, each a bare address or `Name <address>`.
pub fn split_addresses(text: &str) -> Vec<String> {
    text.split([',', ';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn mailbox(text: &str) -> Result<Mailbox, SendError> {
    text.parse::<Mailbox>()
        .map_err(|_| SendError::Invalid(format!("`{text}` is not an email address")))
}

fn clean_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Build the message: headers, the text, the attachments. Returns the message and its id.
pub fn build(
    user: &str,
    display_name: &str,
    draft: &Draft,
) -> Result<(Message, String), SendError> {
    let addr: Address = user
        .parse()
        .map_err(|_| SendError::Invalid(format!("`{user}` cannot send mail")))?;
    let domain = addr.domain().to_string();
    let name = clean_line(display_name);
    let from = Mailbox::new((!name.is_empty() && name != user).then_some(name), addr);
    let count = draft.to.len() + draft.cc.len() + draft.bcc.len();
    if count == 0 {
        return Err(SendError::Invalid("Add at least one recipient.".into()));
    }
    if count > MAX_RECIPIENTS {
        return Err(SendError::Invalid(format!(
            "At most {MAX_RECIPIENTS} recipients per message."
        )));
    }
    let id_bytes: [u8; 16] = rand::random();
    let message_id = format!("<{}@{domain}>", hex::encode(id_bytes));
    let mut b = Message::builder()
        .from(from)
        .subject(clean_line(&draft.subject))
        .date_now()
        .message_id(Some(message_id.clone()))
        .user_agent("megamail".into());
    for t in &draft.to {
        b = b.to(mailbox(t)?);
    }
    for t in &draft.cc {
        b = b.cc(mailbox(t)?);
    }
    for t in &draft.bcc {
        b = b.bcc(mailbox(t)?);
    }
    if let Some(id) = &draft.in_reply_to {
        let id = angle(id);
        b = b.in_reply_to(id.clone());
        let mut refs: Vec<String> = draft.references.iter().map(|r| angle(r)).collect();
        if !refs.contains(&id) {
            refs.push(id);
        }
        b = b.references(refs.join(" "));
    }
    // Line endings as a mail server expects them.
    let text = draft.text.replace("\r\n", "\n").replace('\n', "\r\n");
    let msg = if draft.attachments.is_empty() {
        b.singlepart(SinglePart::plain(text))
    } else {
        let mut mp = MultiPart::mixed().singlepart(SinglePart::plain(text));
        for a in &draft.attachments {
            let ct = ContentType::parse(&a.content_type)
                .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"));
            let name = crate::mime::safe_filename(&a.name);
            mp = mp.singlepart(Attachment::new(name).body(a.data.clone(), ct));
        }
        b.multipart(mp)
    }
    .map_err(|e| SendError::Invalid(format!("the message could not be built: {e}")))?;
    Ok((msg, message_id))
}

/// `<id>` for a Message-ID given with or without its angle brackets.
fn angle(id: &str) -> String {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

/// Send a draft for the signed-in user: file the copy in Sent and queue it for every recipient.
pub async fn send(ctx: &Ctx, session: &Session, draft: &Draft) -> Result<Sent, SendError> {
    let (msg, message_id) = build(&session.user, &session.display_name, draft)?;
    let mut bytes = msg.formatted();
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    let rcpts: Vec<String> = msg.envelope().to().iter().map(|a| a.to_string()).collect();
    let submission = Submission {
        sent: Delivery {
            id: Sha256::digest(&bytes).into(),
            folder: Some(SENT.into()),
            internal_date_ms: now_ms(),
            flags: Flags::SEEN,
            summary: crate::mime::summarize(&bytes),
            body: bytes.into(),
        },
        from: session.user.clone(),
        rcpts,
    };
    let queued = submission.rcpts.len();
    let submitted = match ctx.faults.inject("frontdoor.send").await {
        Err(e) => Err(SendError::Failed(e.to_string())),
        Ok(()) => session
            .mailbox(ctx)
            .submit(submission)
            .await
            .map_err(|e| match e {
                StoreError::Quota => {
                    SendError::Refused("your mailbox is full; delete some mail first".into())
                }
                StoreError::BadRequest(why) => SendError::Invalid(why),
                other => SendError::Failed(other.to_string()),
            }),
    };
    let copy = match submitted {
        Ok(msg) => msg,
        Err(e) => {
            let label = match e {
                SendError::Refused(_) | SendError::Invalid(_) => "refused",
                SendError::Failed(_) => "failed",
            };
            metrics::SENDS.with_label_values(&[label]).inc();
            tracing::warn!(user = %session.user, error = %e, trace = %session.trace, "send failed");
            return Err(e);
        }
    };
    metrics::SENDS.with_label_values(&["sent"]).inc();
    tracing::info!(user = %session.user, %message_id, recipients = queued,
        trace = %session.trace, "message submitted");
    Ok(Sent {
        message_id,
        copy,
        queued,
    })
}

/// Where one recipient of a sent message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub rcpt: String,
    /// `queued`, `retrying` (at `at_ms`), `sending`, `delivered` or `failed` (at `at_ms`).
    pub state: &'static str,
    pub at_ms: Option<u64>,
    pub attempts: u32,
    pub last_reply: Option<String>,
}

/// The recipients of the sent message `sent` with their states, from the mailbox's queue.
pub fn delivery(queue: &[xfs::QueueEntry], sent: MsgId) -> Vec<DeliveryState> {
    use xfs::QueueState;
    queue
        .iter()
        .filter(|e| e.sent_msg == sent)
        .map(|e| {
            let (state, at_ms) = match &e.state {
                QueueState::Queued if e.attempts == 0 => ("queued", None),
                QueueState::Queued => ("retrying", Some(e.next_attempt_ms)),
                QueueState::Leased { .. } => ("sending", None),
                QueueState::Delivered { at_ms } => ("delivered", Some(*at_ms)),
                QueueState::Failed { at_ms } => ("failed", Some(*at_ms)),
            };
            DeliveryState {
                rcpt: e.rcpt.clone(),
                state,
                at_ms,
                attempts: e.attempts,
                last_reply: e.last_reply.clone(),
            }
        })
        .collect()
}

/// "Re: subject" (once). The prefix is looked for on characters: a subject is any Unicode.
pub fn reply_subject(s: &str) -> String {
    let t = s.trim();
    if starts_with_ignore_ascii_case(t, "re:") {
        t.to_string()
    } else {
        format!("Re: {t}")
    }
}

/// "Fwd: subject" (once).
pub fn forward_subject(s: &str) -> String {
    let t = s.trim();
    if starts_with_ignore_ascii_case(t, "fwd:") {
        t.to_string()
    } else {
        format!("Fwd: {t}")
    }
}

/// The original text quoted for a reply.
pub fn quote(date: &str, from: &str, text: &str) -> String {
    let mut out = format!("\n\nOn {date}, {from} wrote:\n");
    for line in text.trim_end().lines() {
        if line.is_empty() {
            out.push_str(">\n");
        } else {
            out.push_str("> ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The original's headers and text, for a forward.
pub fn forwarded(p: &crate::mime::Parsed) -> String {
    format!(
        "\n\n---------- Forwarded message ----------\nFrom: {}\nDate: {}\nSubject: {}\nTo: {}\n\n{}",
        p.from,
        p.date,
        p.subject,
        p.to,
        p.text_or_html().trim_end()
    )
}

/// Who a reply goes to: Reply-To or From; for reply-all also the other recipients, never the
/// user.
pub fn reply_recipients(
    p: &crate::mime::Parsed,
    user: &str,
    all: bool,
) -> (Vec<String>, Vec<String>) {
    let is_me = |a: &String| a.eq_ignore_ascii_case(user);
    let mut to: Vec<String> = if p.reply_to_addrs.is_empty() {
        p.from_addrs.clone()
    } else {
        p.reply_to_addrs.clone()
    };
    let mut cc = Vec::new();
    if all {
        to.extend(p.to_addrs.iter().cloned());
        cc.extend(p.cc_addrs.iter().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    to.retain(|a| !is_me(a) && seen.insert(a.to_lowercase()));
    cc.retain(|a| !is_me(a) && seen.insert(a.to_lowercase()));
    if to.is_empty() && cc.is_empty() {
        // Answering one's own message: to the same people again.
        to = p.to_addrs.clone();
    }
    (to, cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> Draft {
        Draft {
            to: vec!["Bob <bob@megamail.test>".into()],
            cc: vec!["carol@megamail.test".into()],
            bcc: vec!["dave@megamail.test".into()],
            subject: "hello\r\nBcc: injected@evil.test".into(),
            text: "line one\nline two\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_is_built_from_the_users_address() {
        let (msg, id) = build("alice@megamail.test", "Alice A.", &draft()).unwrap();
        let text = String::from_utf8(msg.formatted()).unwrap();
        assert!(
            text.contains("From: \"Alice A.\" <alice@megamail.test>"),
            "{text}"
        );
        assert!(text.contains("To: Bob <bob@megamail.test>"), "{text}");
        assert!(text.contains(&format!("Message-ID: {id}")), "{text}");
        assert!(id.ends_with("@megamail.test>"));
        assert!(!text.contains("dave@"), "Bcc must not show: {text}");
        assert!(!text.contains("\r\nBcc: injected"), "{text}");
        assert!(text.contains("line one\r\nline two"), "{text}");
        let rcpts: Vec<String> = msg.envelope().to().iter().map(|a| a.to_string()).collect();
        assert_eq!(rcpts.len(), 3);
        assert!(rcpts.contains(&"dave@megamail.test".to_string()));
        assert_eq!(
            msg.envelope().from().map(|a| a.to_string()).as_deref(),
            Some("alice@megamail.test")
        );
    }

    #[test]
    fn attachments_and_replies() {
        let mut d = draft();
        d.attachments.push(OutAttachment {
            name: "../notes.txt".into(),
            content_type: "text/plain".into(),
            data: b"some notes".to_vec(),
        });
        d.in_reply_to = Some("orig@remote.test".into());
        d.references = vec!["<root@remote.test>".into()];
        let (msg, _) = build("alice@megamail.test", "", &d).unwrap();
        let bytes = msg.formatted();
        let p = crate::mime::parse(&bytes);
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].name, "notes.txt");
        assert_eq!(p.attachments[0].data, b"some notes");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("In-Reply-To: <orig@remote.test>"), "{text}");
        assert!(
            text.contains("References: <root@remote.test> <orig@remote.test>"),
            "{text}"
        );
    }

    #[test]
    fn bad_drafts_are_named() {
        let mut d = draft();
        d.to = vec!["not an address".into()];
        assert!(matches!(
            build("alice@megamail.test", "", &d),
            Err(SendError::Invalid(m)) if m.contains("not an address")
        ));
        let empty = Draft::default();
        assert!(build("alice@megamail.test", "", &empty).is_err());
        assert_eq!(
            split_addresses("a@x, b@y;\n c@z ,"),
            vec!["a@x", "b@y", "c@z"]
        );
    }

    #[test]
    fn reply_and_forward_subjects_in_any_script() {
        for s in crate::text::tests::WORLD {
            assert_eq!(reply_subject(s), format!("Re: {s}"));
            assert_eq!(forward_subject(s), format!("Fwd: {s}"));
            // Once only, whatever the case of the prefix already there.
            assert_eq!(reply_subject(&reply_subject(s)), format!("Re: {s}"));
            assert_eq!(reply_subject(&format!("RE: {s}")), format!("RE: {s}"));
            assert_eq!(forward_subject(&forward_subject(s)), format!("Fwd: {s}"));
            assert_eq!(forward_subject(&format!("FWD:{s}")), format!("FWD:{s}"));
        }
        // Multibyte characters right where the prefix would end.
        assert_eq!(reply_subject("ab日"), "Re: ab日");
        assert_eq!(forward_subject("abc日"), "Fwd: abc日");
        assert_eq!(reply_subject("Re日"), "Re: Re日");
        assert_eq!(forward_subject("Fwd日"), "Fwd: Fwd日");
        assert_eq!(reply_subject("  Тема  "), "Re: Тема");
        assert_eq!(reply_subject(""), "Re: ");
    }

    #[test]
    fn reply_helpers() {
        assert_eq!(reply_subject("Re: hi"), "Re: hi");
        assert_eq!(reply_subject("hi"), "Re: hi");
        assert_eq!(forward_subject("hi"), "Fwd: hi");
        assert_eq!(
            quote("today", "Ann", "a\n\nb"),
            "\n\nOn today, Ann wrote:\n> a\n>\n> b\n"
        );
        let p = crate::mime::Parsed {
            from_addrs: vec!["ann@remote.test".into()],
            to_addrs: vec!["me@megamail.test".into(), "bob@megamail.test".into()],
            cc_addrs: vec!["carol@megamail.test".into(), "Ann@remote.test".into()],
            ..Default::default()
        };
        let (to, cc) = reply_recipients(&p, "me@megamail.test", true);
        assert_eq!(to, vec!["ann@remote.test", "bob@megamail.test"]);
        assert_eq!(cc, vec!["carol@megamail.test"]);
        let (to, cc) = reply_recipients(&p, "me@megamail.test", false);
        assert_eq!((to.len(), cc.len()), (1, 0));
    }
}
