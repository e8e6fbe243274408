//! `mailctl queue`: the outbound queue as an operator sees it. Entries live in their senders'
//! mailboxes, so an entry is named `USER/ID`; `list` pages through every segment of every store
//! (pending entries), or one user's entries (finished ones too).

use anyhow::Context;
use serde_json::{json, Value};
use xfs::{ops, QueueEntry, QueueId, QueueState, Target};

use crate::admin::Hcu;
use crate::cli::{print, QueueCmd};

/// A page of a segment's listing.
const PAGE: u32 = 500;

/// Run one `mailctl queue` command.
pub async fn run(hcu: &Hcu, cmd: QueueCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::List { user, domain } => {
            let mut entries = match &user {
                Some(u) => {
                    let (store, target) = target(hcu, u).await?;
                    let call = ops::MailboxQueue {
                        target,
                        after: None,
                        limit: 1000,
                    };
                    hcu.call(&store, call).await?
                }
                None => pending(hcu).await?,
            };
            if let Some(d) = &domain {
                let d = d.to_ascii_lowercase();
                entries.retain(|e| e.rcpt.to_ascii_lowercase().ends_with(&format!("@{d}")));
            }
            let mut human = format!(
                "{:<40} {:<32} {:<10} {:>8}  {}",
                "ID", "RECIPIENT", "STATE", "ATTEMPTS", "LAST REPLY"
            );
            for e in &entries {
                human.push_str(&format!(
                    "\n{:<40} {:<32} {:<10} {:>8}  {}",
                    format!("{}/{}", e.user, e.id),
                    e.rcpt,
                    state_name(&e.state),
                    e.attempts,
                    e.last_reply.as_deref().unwrap_or("-")
                ));
            }
            let rows: Vec<Value> = entries.iter().map(row).collect();
            print(json_out, json!(rows), human);
        }
        QueueCmd::Show { id } => {
            let (user, qid) = parse_id(&id)?;
            let (store, target) = target(hcu, &user).await?;
            let mut after = None;
            let found = loop {
                let call = ops::MailboxQueue {
                    target: target.clone(),
                    after,
                    limit: 1000,
                };
                let page = hcu.call(&store, call).await?;
                if let Some(e) = page.iter().find(|e| e.id == qid) {
                    break e.clone();
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => after = Some(last.id),
                    _ => anyhow::bail!("{user} has no queue entry {qid}"),
                }
            };
            let human =
                format!(
                "entry     {}/{}\nfrom      {}\nto        {}\nstate     {}\nsize      {} bytes\n\
                 queued    {}\nattempts  {}\nnext      {}\nwarned    {}\nreply     {}",
                found.user,
                found.id,
                if found.from.is_empty() { "<>" } else { &found.from },
                found.rcpt,
                state_name(&found.state),
                found.size,
                runtime::time::rfc5322_date(found.queued_ms),
                found.attempts,
                runtime::time::rfc5322_date(found.next_attempt_ms),
                found.warned,
                found.last_reply.as_deref().unwrap_or("-"),
            );
            print(json_out, row(&found), human);
        }
        QueueCmd::Retry {
            domain: Some(domain),
            ..
        } => {
            let to = format!("@{}", domain.to_ascii_lowercase());
            let mut n = 0;
            for e in pending(hcu).await? {
                if !e.rcpt.to_ascii_lowercase().ends_with(&to) {
                    continue;
                }
                let (store, target) = target(hcu, &e.user).await?;
                let call = ops::RetryQueue {
                    target,
                    id: Some(e.id),
                };
                match hcu.call(&store, call).await {
                    Ok(made) => n += made,
                    // Finished (or moved on) since the listing: nothing left to make due.
                    Err(err) => tracing::debug!(entry = %format!("{}/{}", e.user, e.id),
                        error = %err, "not made due"),
                }
            }
            print(
                json_out,
                json!({"domain": domain, "made_due": n}),
                format!("OK {n} entries to {domain} are due now"),
            );
        }
        QueueCmd::Retry { id, user, .. } => {
            let (user, qid) = match (id, user) {
                (Some(id), _) => {
                    let (u, q) = parse_id(&id)?;
                    (u, Some(q))
                }
                (None, Some(u)) => (u, None),
                (None, None) => anyhow::bail!("name an entry (USER/ID), --user or --domain"),
            };
            let (store, target) = target(hcu, &user).await?;
            let n = hcu
                .call(&store, ops::RetryQueue { target, id: qid })
                .await?;
            print(
                json_out,
                json!({"user": user, "made_due": n}),
                format!("OK {n} entries of {user} are due now"),
            );
        }
        QueueCmd::Delete { id, bounce } => {
            let (user, qid) = parse_id(&id)?;
            let (store, target) = target(hcu, &user).await?;
            hcu.call(
                &store,
                ops::CancelQueued {
                    target,
                    id: qid,
                    bounce,
                },
            )
            .await?;
            let told = if bounce { "; the sender is told" } else { "" };
            print(
                json_out,
                json!({"entry": id, "deleted": true, "bounced": bounce}),
                format!("OK {id} will not be delivered{told}"),
            );
        }
    }
    Ok(())
}

/// `USER/ID`.
fn parse_id(id: &str) -> anyhow::Result<(String, QueueId)> {
    let (user, n) = id
        .rsplit_once('/')
        .with_context(|| format!("`{id}` is not USER/ID"))?;
    let n = n
        .parse()
        .with_context(|| format!("`{n}` is not a queue entry id"))?;
    Ok((user.to_lowercase(), n))
}

/// Where `user`'s mailbox is: its store's name and the target to call.
async fn target(hcu: &Hcu, user: &str) -> anyhow::Result<(String, Target)> {
    let p = hcu
        .mserv
        .lookup(user)
        .await
        .with_context(|| format!("looking up {user}"))?;
    Ok((p.store.clone(), Target::new(user, p.segment, p.epoch)))
}

/// Every pending entry of every store, page by page.
async fn pending(hcu: &Hcu) -> anyhow::Result<Vec<QueueEntry>> {
    let mut out = Vec::new();
    for s in hcu.mserv.list_stores().await? {
        for &segment in &s.info.segments {
            let mut after = None;
            loop {
                let call = ops::ListQueue {
                    segment,
                    after: after.clone(),
                    limit: PAGE,
                };
                let page = hcu.call(&s.info.name, call).await?;
                let last = page.last().map(|e| (e.user.clone(), e.id));
                let full = page.len() as u32 == PAGE;
                out.extend(page);
                match last {
                    Some(l) if full => after = Some(l),
                    _ => break,
                }
            }
        }
    }
    Ok(out)
}

fn state_name(s: &QueueState) -> &'static str {
    match s {
        QueueState::Queued => "queued",
        QueueState::Leased { .. } => "sending",
        QueueState::Delivered { .. } => "delivered",
        QueueState::Failed { .. } => "failed",
    }
}

fn row(e: &QueueEntry) -> Value {
    json!({
        "id": format!("{}/{}", e.user, e.id),
        "user": e.user,
        "from": e.from,
        "rcpt": e.rcpt,
        "state": state_name(&e.state),
        "size": e.size,
        "queued_ms": e.queued_ms,
        "attempts": e.attempts,
        "next_attempt_ms": e.next_attempt_ms,
        "warned": e.warned,
        "last_reply": e.last_reply,
    })
}
