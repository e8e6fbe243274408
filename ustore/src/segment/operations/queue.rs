//! The outbound queue, kept inside the sender's mailbox: `Submit` files the Sent copy and one
//! entry per recipient in one synced batch, workers lease due entries and report how each
//! attempt ended, and the store writes delivery status notifications into the sender's Inbox.
//!
//! - `queue` holds the entries still to deliver, `sendlog` those finished (delivered or
//!   failed), both keyed `user\0 id` so a move, an export, a backup and a purge carry them with
//!   the mailbox. The message itself is kept once per submission in `body` under an id of its
//!   own (not the Sent copy's: deleting the Sent copy neither cancels nor breaks a delivery) and
//!   removed when the submission's last pending entry finishes.
//! - A lease marks an entry `Leased{worker, until}` with a fresh token; a worker that dies
//!   loses nothing, since the entry is due again once the lease runs out. A report must carry
//!   the current token, so a worker whose lease ran out cannot overwrite a newer attempt; a
//!   report repeated after it was applied (its reply lost) is answered `Done`.
//! - Policy (the retry schedule, the lifetime, when to warn) is the workers'; the store records
//!   what they report. Only a live mailbox's entries are leased (not one frozen for a move, or
//!   moved out).

use rand::Rng;
use xfs::{Lease, Outcome, QueueEntry, QueueId, QueueState, Reply, Submission, XfsError, SENT};

use crate::keys::{self, encode_body, prefix, prefix_end, CF_BODY, CF_QUEUE, CF_SENDLOG};
use crate::segment::dsn::{self, Notice, Report};
use crate::segment::records::QueueRec;
use crate::segment::transaction::Tx;
use crate::segment::{bad, now_ms, validate_user, Segment};

/// Most recipients one submission may have.
pub const MAX_RECIPIENTS: usize = 1000;
/// Most body bytes one lease hands out (always at least one entry), well inside a frame.
const MAX_LEASE_BYTES: u64 = 32 << 20;
/// Most entries one lease hands out.
const MAX_LEASE: u32 = 1000;
/// Longest lease a worker may ask for.
const MAX_LEASE_MS: u32 = 3_600_000;

/// An address as the queue accepts it: `local@domain`, no spaces or control characters, at
/// most 254 bytes (RFC 5321 §4.5.3.1.3).
fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>".contains(c))
}

impl Segment {
    /// File the Sent copy and queue its recipients, in one synced batch.
    pub(in crate::segment) fn submit(&self, user: &str, s: Submission) -> Result<Reply, XfsError> {
        if s.rcpts.is_empty() || s.rcpts.len() > MAX_RECIPIENTS {
            return Err(bad(format!(
                "a submission has 1 to {MAX_RECIPIENTS} recipients, not {}",
                s.rcpts.len()
            )));
        }
        if let Some(r) = s.rcpts.iter().find(|r| !valid_address(r)) {
            return Err(bad(format!("not a recipient address: {r:?}")));
        }
        if !s.from.is_empty() && !valid_address(&s.from) {
            return Err(bad(format!("not a sender address: {:?}", s.from)));
        }
        self.mutate(user, |tx| {
            let body = s.sent.body.clone();
            let mut sent = s.sent;
            sent.folder = Some(SENT.to_string());
            let filed = tx.file(sent)?;
            if filed.duplicate {
                let queued = tx.seg.queue_of_sent(user, filed.msg)?;
                return Ok(Reply::Submitted {
                    msg: filed.msg,
                    uid: filed.uid,
                    queued,
                    duplicate: true,
                });
            }
            let body_id = tx.next_id();
            let seg = tx.seg;
            tx.batch.put_cf(
                seg.cf(CF_BODY),
                keys::msg(user, body_id),
                encode_body(&body),
            );
            let mut queued = Vec::with_capacity(s.rcpts.len());
            for rcpt in s.rcpts {
                let id = tx.next_id();
                let rec = QueueRec {
                    sent_msg: filed.msg,
                    body: body_id,
                    body_crc: crc32fast::hash(&body),
                    from: s.from.clone(),
                    rcpt,
                    size: body.len() as u64,
                    queued_ms: tx.now,
                    attempts: 0,
                    next_attempt_ms: tx.now,
                    last_reply: None,
                    warned: false,
                    state: QueueState::Queued,
                    token: 0,
                };
                tx.batch
                    .put_cf(seg.cf(CF_QUEUE), keys::queued(user, id), keys::encode(&rec));
                queued.push(id);
            }
            crate::metrics::QUEUE
                .with_label_values(&["queued"])
                .inc_by(queued.len() as u64);
            Ok(Reply::Submitted {
                msg: filed.msg,
                uid: filed.uid,
                queued,
                duplicate: false,
            })
        })
    }

    /// The ids of the entries a Sent copy was queued with, pending or finished.
    fn queue_of_sent(&self, user: &str, sent: u64) -> Result<Vec<QueueId>, XfsError> {
        let mut ids = Vec::new();
        for cf in [CF_QUEUE, CF_SENDLOG] {
            for kv in self.scan(cf, prefix(user), prefix_end(user), false) {
                let (k, v) = kv?;
                let rec: QueueRec = keys::decode(&v, cf)?;
                if rec.sent_msg == sent {
                    ids.extend(keys::parse_queued(&k).map(|(_, id)| id));
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Lease up to `max` due entries of this segment to `worker` for `lease_ms`, at most
    /// [`MAX_LEASE_BYTES`] of bodies (and always one if any is due).
    pub fn lease_queue(
        &self,
        worker: &str,
        max: u32,
        lease_ms: u32,
    ) -> Result<Vec<Lease>, XfsError> {
        if worker.is_empty() || worker.len() > 253 || worker.chars().any(char::is_control) {
            return Err(bad("a worker is named by 1 to 253 printable characters"));
        }
        if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
            return Err(bad(format!("a lease lasts 1 to {MAX_LEASE_MS} ms")));
        }
        let max = max.clamp(1, MAX_LEASE) as usize;
        let now = now_ms();
        // Candidates first, from a scan without locks; each is checked again under its lock.
        let mut due: Vec<(String, QueueId)> = Vec::new();
        for kv in self.scan(CF_QUEUE, Vec::new(), vec![0xff], false) {
            let (k, v) = kv?;
            // A damaged entry (counted by `decode`) must not hold up every other.
            let Ok(rec) = keys::decode::<QueueRec>(&v, CF_QUEUE) else {
                tracing::warn!(key = ?String::from_utf8_lossy(&k), "a damaged queue entry is skipped");
                continue;
            };
            if rec.is_due(now) {
                if let Some(key) = keys::parse_queued(&k) {
                    due.push(key);
                }
            }
            if due.len() >= max {
                break;
            }
        }
        let mut leases = Vec::new();
        let mut bytes = 0u64;
        let mut i = 0;
        while i < due.len() && (leases.is_empty() || bytes < MAX_LEASE_BYTES) {
            let user = due[i].0.clone();
            let mut ids = Vec::new();
            while i < due.len() && due[i].0 == user {
                ids.push(due[i].1);
                i += 1;
            }
            if validate_user(&user).is_err() {
                continue;
            }
            match self.lease_of(&user, &ids, worker, lease_ms, &mut bytes) {
                Ok(mut l) => leases.append(&mut l),
                // A mailbox frozen, moved or gone keeps its entries for where it lives now.
                Err(e) if !matches!(e, XfsError::Corrupt { .. }) => {}
                Err(e) => {
                    tracing::warn!(%user, error = %e, "a queue entry cannot be leased");
                }
            }
        }
        crate::metrics::QUEUE
            .with_label_values(&["leased"])
            .inc_by(leases.len() as u64);
        Ok(leases)
    }

    /// Lease `ids` of one live mailbox, each checked again under the mailbox's lock.
    fn lease_of(
        &self,
        user: &str,
        ids: &[QueueId],
        worker: &str,
        lease_ms: u32,
        bytes: &mut u64,
    ) -> Result<Vec<Lease>, XfsError> {
        let mut out = Vec::new();
        let mut bodies: Vec<(u64, bytes::Bytes)> = Vec::new();
        self.mutate(user, |tx| {
            let epoch = tx.acc.epoch;
            for &id in ids {
                if !out.is_empty() && *bytes >= MAX_LEASE_BYTES {
                    break;
                }
                let key = keys::queued(user, id);
                let Some(mut rec) = tx.seg.get_rec::<QueueRec>(CF_QUEUE, &key)? else {
                    continue;
                };
                if !rec.is_due(tx.now) {
                    continue;
                }
                let body = match bodies.iter().find(|(b, _)| *b == rec.body) {
                    Some((_, b)) => b.clone(),
                    None => {
                        let b: bytes::Bytes = tx.seg.body(user, rec.body, rec.body_crc)?.into();
                        bodies.push((rec.body, b.clone()));
                        b
                    }
                };
                rec.state = QueueState::Leased {
                    worker: worker.to_string(),
                    until_ms: tx.now + u64::from(lease_ms),
                };
                rec.token = rand::rng().random::<u64>() | 1;
                let seg = tx.seg;
                tx.batch.put_cf(seg.cf(CF_QUEUE), &key, keys::encode(&rec));
                *bytes += rec.size;
                let token = rec.token;
                out.push(Lease {
                    entry: rec.into_entry(user, id),
                    segment: tx.seg.id,
                    epoch,
                    token,
                    body,
                });
            }
            Ok(Reply::Done)
        })?;
        Ok(out)
    }

    /// Record a worker's outcome for the entry it leased with `token`.
    pub(in crate::segment) fn report_queue(
        &self,
        user: &str,
        id: QueueId,
        token: u64,
        mta: &str,
        outcome: Outcome,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let key = keys::queued(user, id);
            let Some(mut rec) = tx.seg.get_rec::<QueueRec>(CF_QUEUE, &key)? else {
                if let Some(done) = tx.seg.get_rec::<QueueRec>(CF_SENDLOG, &key)? {
                    if done.token == token {
                        // Applied already; this is its repeat.
                        return Ok(Reply::Done);
                    }
                }
                return Err(bad(format!("no pending queue entry {id}")));
            };
            if rec.token != token || !matches!(rec.state, QueueState::Leased { .. }) {
                return Err(bad(format!(
                    "queue entry {id} is not leased with this token (its lease ran out)"
                )));
            }
            rec.attempts += 1;
            match outcome {
                Outcome::Delivered { reply } => {
                    rec.last_reply = Some(reply);
                    rec.state = QueueState::Delivered { at_ms: tx.now };
                    tx.finish_entry(id, rec)?;
                    crate::metrics::QUEUE
                        .with_label_values(&["delivered"])
                        .inc();
                }
                Outcome::Deferred {
                    reply,
                    retry_at_ms,
                    warn,
                } => {
                    rec.last_reply = Some(reply);
                    rec.next_attempt_ms = retry_at_ms.max(tx.now);
                    rec.state = QueueState::Queued;
                    if warn && !rec.warned {
                        rec.warned = true;
                        tx.notify(id, &rec, Notice::Delayed, mta)?;
                    }
                    let seg = tx.seg;
                    tx.batch.put_cf(seg.cf(CF_QUEUE), &key, keys::encode(&rec));
                    crate::metrics::QUEUE.with_label_values(&["deferred"]).inc();
                }
                Outcome::Failed { reply } => {
                    rec.last_reply = Some(reply);
                    rec.state = QueueState::Failed { at_ms: tx.now };
                    tx.notify(id, &rec, Notice::Failed, mta)?;
                    tx.finish_entry(id, rec)?;
                    crate::metrics::QUEUE.with_label_values(&["failed"]).inc();
                }
            }
            Ok(Reply::Done)
        })
    }

    /// A mailbox's entries, pending and finished, in id order after `after`.
    pub(in crate::segment) fn mailbox_queue(
        &self,
        user: &str,
        after: Option<QueueId>,
        limit: u32,
    ) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let from = match after {
            Some(id) => keys::queued(user, id.saturating_add(1)),
            None => prefix(user),
        };
        let limit = limit.clamp(1, crate::segment::MAX_PAGE) as usize;
        let mut out: Vec<QueueEntry> = Vec::new();
        for cf in [CF_QUEUE, CF_SENDLOG] {
            for kv in self
                .scan(cf, from.clone(), prefix_end(user), false)
                .take(limit)
            {
                let (k, v) = kv?;
                let rec: QueueRec = keys::decode(&v, cf)?;
                if let Some((_, id)) = keys::parse_queued(&k) {
                    out.push(rec.into_entry(user, id));
                }
            }
        }
        out.sort_by_key(|e| e.id);
        out.truncate(limit);
        Ok(Reply::Queue(out))
    }

    /// Pending entries by age bucket ([`crate::metrics::QUEUE_AGES`]) at `now`.
    pub fn queue_ages(&self, now: u64) -> Result<[i64; 4], XfsError> {
        let mut out = [0i64; 4];
        for kv in self.scan(CF_QUEUE, Vec::new(), vec![0xff], false) {
            let (_, v) = kv?;
            let Ok(rec) = keys::decode::<QueueRec>(&v, CF_QUEUE) else {
                continue;
            };
            let age = now.saturating_sub(rec.queued_ms);
            let i = crate::metrics::QUEUE_AGES
                .iter()
                .position(|(_, bound)| age < *bound)
                .unwrap_or(3);
            out[i] += 1;
        }
        Ok(out)
    }

    /// Every pending entry of the segment in (user, id) order after `after`.
    pub fn list_queue(
        &self,
        after: Option<(String, QueueId)>,
        limit: u32,
    ) -> Result<Vec<QueueEntry>, XfsError> {
        let from = match &after {
            Some((user, id)) => keys::queued(user, id.saturating_add(1)),
            None => Vec::new(),
        };
        let limit = limit.clamp(1, crate::segment::MAX_PAGE) as usize;
        let mut out = Vec::new();
        for kv in self.scan(CF_QUEUE, from, vec![0xff], false).take(limit) {
            let (k, v) = kv?;
            let rec: QueueRec = keys::decode(&v, CF_QUEUE)?;
            if let Some((user, id)) = keys::parse_queued(&k) {
                out.push(rec.into_entry(&user, id));
            }
        }
        Ok(out)
    }

    /// Make one pending entry, or all of a mailbox's, due now; how many were made due. An entry
    /// out on a lease is left to its worker.
    pub(in crate::segment) fn retry_queue(
        &self,
        user: &str,
        id: Option<QueueId>,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let keys: Vec<Vec<u8>> = match id {
                Some(id) => vec![keys::queued(user, id)],
                None => tx
                    .seg
                    .scan(CF_QUEUE, prefix(user), prefix_end(user), false)
                    .map(|kv| kv.map(|(k, _)| k.to_vec()))
                    .collect::<Result<_, _>>()?,
            };
            let mut n = 0;
            for key in keys {
                let Some(mut rec) = tx.seg.get_rec::<QueueRec>(CF_QUEUE, &key)? else {
                    if let Some(id) = id {
                        return Err(bad(format!("no pending queue entry {id}")));
                    }
                    continue;
                };
                if rec.state == QueueState::Queued {
                    rec.next_attempt_ms = tx.now;
                    let seg = tx.seg;
                    tx.batch.put_cf(seg.cf(CF_QUEUE), &key, keys::encode(&rec));
                    n += 1;
                }
            }
            Ok(Reply::Count(n))
        })
    }

    /// Give a pending entry up, telling the sender when `bounce`.
    pub(in crate::segment) fn cancel_queued(
        &self,
        user: &str,
        id: QueueId,
        bounce: bool,
        mta: &str,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let key = keys::queued(user, id);
            let Some(mut rec) = tx.seg.get_rec::<QueueRec>(CF_QUEUE, &key)? else {
                return Err(bad(format!("no pending queue entry {id}")));
            };
            rec.last_reply = Some("cancelled by the postmaster".into());
            rec.state = QueueState::Failed { at_ms: tx.now };
            if bounce {
                tx.notify(id, &rec, Notice::Failed, mta)?;
            }
            tx.finish_entry(id, rec)?;
            crate::metrics::QUEUE
                .with_label_values(&["cancelled"])
                .inc();
            Ok(Reply::Done)
        })
    }
}

impl Tx<'_> {
    /// Move a finished entry from `queue` to `sendlog`, and drop its message once no pending
    /// entry of its submission needs it.
    fn finish_entry(&mut self, id: QueueId, rec: QueueRec) -> Result<(), XfsError> {
        let (seg, user) = (self.seg, self.user);
        let key = keys::queued(user, id);
        let mut still_needed = false;
        for kv in seg.scan(CF_QUEUE, prefix(user), prefix_end(user), false) {
            let (k, v) = kv?;
            if *k == *key {
                continue;
            }
            let other: QueueRec = keys::decode(&v, CF_QUEUE)?;
            if other.body == rec.body {
                still_needed = true;
                break;
            }
        }
        if !still_needed {
            self.batch
                .delete_cf(seg.cf(CF_BODY), keys::msg(user, rec.body));
        }
        self.batch.delete_cf(seg.cf(CF_QUEUE), &key);
        self.batch
            .put_cf(seg.cf(CF_SENDLOG), &key, keys::encode(&rec));
        Ok(())
    }

    /// File a delivery status notification about `rec` in the Inbox; none for a null sender.
    /// A full mailbox goes without (the send log still says what happened).
    fn notify(
        &mut self,
        id: QueueId,
        rec: &QueueRec,
        notice: Notice,
        mta: &str,
    ) -> Result<(), XfsError> {
        if rec.from.is_empty() {
            tracing::info!(
                user = self.user,
                id,
                "no delivery status notification to a null sender"
            );
            return Ok(());
        }
        let original = self.seg.body(self.user, rec.body, rec.body_crc)?;
        let d = dsn::compose(&Report {
            user: self.user,
            id,
            notice,
            mta,
            sender: &rec.from,
            rcpt: &rec.rcpt,
            reply: rec.last_reply.as_deref().unwrap_or_default(),
            queued_ms: rec.queued_ms,
            now_ms: self.now,
            original: &original,
        });
        match self.file(d) {
            Ok(_) => Ok(()),
            Err(XfsError::QuotaExceeded { .. }) => {
                tracing::warn!(
                    user = self.user,
                    id,
                    "mailbox full: a delivery status notification was dropped"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
