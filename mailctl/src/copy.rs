//! Copying one mailbox between stores over XFS: the building blocks of a move.
//!
//! - Bodies are immutable per message id and message ids only grow, so the bulk copy streams the
//!   bodies in key order and a later pass continues from the same cursor to pick up new mail.
//! - Every other record (account, folders, index, locations, delivery ids, change log) is small:
//!   the final delta replaces them all at the target.
//! - Bodies expunged at the source meanwhile are found by comparing keys and deleted at the
//!   target. The two copies must then have the same [`MailboxDigest`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use xfs::{
    ops, Call, CallError, ExportChunk, ExportCursor, ExportPart, MailboxDigest, StorePool, Target,
};

/// Largest chunk asked for.
pub const CHUNK_BYTES: u32 = 4 << 20;
/// How long one XFS call may take (a chunk of several MB included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One side of a move: the store's pool and the mailbox's target there.
#[derive(Clone)]
pub struct Side {
    pub store: String,
    pub pool: Arc<StorePool>,
    pub target: Target,
}

impl Side {
    /// Any operation, its reply untyped (for tools that relay operations they do not inspect).
    pub async fn call_op(&self, op: xfs::Op) -> Result<xfs::Reply, CallError> {
        self.pool.call_with(op, "migrate", CALL_TIMEOUT).await
    }

    /// One typed call to this side's store for the mailbox being moved.
    pub async fn call<C: Call>(&self, call: C) -> Result<C::Output, CallError> {
        self.pool.run_with(call, "migrate", CALL_TIMEOUT).await
    }

    async fn export(
        &self,
        part: ExportPart,
        after: Option<ExportCursor>,
        keys_only: bool,
    ) -> anyhow::Result<ExportChunk> {
        let op = ops::Export {
            target: self.target.clone(),
            part,
            after,
            max_bytes: CHUNK_BYTES,
            keys_only,
        };
        self.call(op)
            .await
            .with_context(|| format!("exporting from {}", self.store))
    }

    async fn import(
        &self,
        records: Vec<xfs::RawRecord>,
        delete: Vec<(String, Vec<u8>)>,
        reset_records: bool,
    ) -> anyhow::Result<()> {
        let op = ops::Import {
            target: self.target.clone(),
            records,
            delete,
            reset_records,
        };
        self.call(op)
            .await
            .with_context(|| format!("importing into {}", self.store))?;
        Ok(())
    }

    pub async fn digest(&self) -> anyhow::Result<MailboxDigest> {
        let op = ops::Digest {
            target: self.target.clone(),
        };
        self.call(op)
            .await
            .with_context(|| format!("digest at {}", self.store))
    }

    /// Every key of one part (values left out).
    async fn keys(&self, part: ExportPart) -> anyhow::Result<BTreeSet<(String, Vec<u8>)>> {
        let mut out = BTreeSet::new();
        let mut after = None;
        loop {
            let c = self.export(part, after, true).await?;
            out.extend(c.records.into_iter().map(|r| (r.cf, r.key)));
            match c.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// A bandwidth limit shared by every copy of a run (bytes per second; 0: none).
pub struct Rate {
    bytes_per_s: u64,
    started: Instant,
    sent: std::sync::Mutex<u64>,
}

impl Rate {
    pub fn new(bytes_per_s: u64) -> Rate {
        Rate {
            bytes_per_s,
            started: Instant::now(),
            sent: std::sync::Mutex::new(0),
        }
    }

    /// Count `n` bytes and wait as long as the run is ahead of its limit.
    pub async fn take(&self, n: u64) {
        if self.bytes_per_s == 0 {
            return;
        }
        let total = {
            let mut s = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            *s += n;
            *s
        };
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_s as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

fn chunk_bytes(c: &ExportChunk) -> u64 {
    c.records
        .iter()
        .map(|r| (r.key.len() + r.value.len()) as u64)
        .sum()
}

/// A body's key.
pub type BodyKey = Vec<u8>;

/// What a pass of [`copy_bodies`] did.
pub struct Copied {
    /// Where the next pass continues.
    pub cursor: Option<ExportCursor>,
    pub bytes: u64,
    /// The keys of the bodies copied.
    pub keys: BTreeSet<BodyKey>,
}

/// Copy bodies from `after` to the end. `progress` is told every chunk's size.
pub async fn copy_bodies(
    src: &Side,
    dst: &Side,
    mut after: Option<ExportCursor>,
    rate: &Rate,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<Copied> {
    let mut copied = 0;
    let mut keys = BTreeSet::new();
    loop {
        let chunk = src.export(ExportPart::Bodies, after.clone(), false).await?;
        let n = chunk_bytes(&chunk);
        let last = chunk.records.last().map(|r| (r.cf.clone(), r.key.clone()));
        if !chunk.records.is_empty() {
            rate.take(n).await;
            keys.extend(chunk.records.iter().map(|r| r.key.clone()));
            dst.import(chunk.records, Vec::new(), false).await?;
            copied += n;
            progress(n);
        }
        if last.is_some() {
            after = last;
        }
        if chunk.next.is_none() {
            return Ok(Copied {
                cursor: after,
                bytes: copied,
                keys,
            });
        }
    }
}

/// Replace every non-body record at the target by the source's; the bytes copied, and the keys of
/// the bodies the mailbox holds (a body's key is its location record's key).
pub async fn copy_records(src: &Side, dst: &Side) -> anyhow::Result<(u64, BTreeSet<BodyKey>)> {
    let mut after = None;
    let mut first = true;
    let mut copied = 0;
    let mut live = BTreeSet::new();
    loop {
        let chunk = src.export(ExportPart::Records, after, false).await?;
        copied += chunk_bytes(&chunk);
        live.extend(
            chunk
                .records
                .iter()
                .filter(|r| r.cf == "msgloc")
                .map(|r| r.key.clone()),
        );
        let next = chunk.next.clone();
        dst.import(chunk.records, Vec::new(), first).await?;
        first = false;
        match next {
            Some(n) => after = Some(n),
            None => return Ok((copied, live)),
        }
    }
}

/// Every body key the target holds (reads the target's bodies: run it before a freeze).
pub async fn body_keys(side: &Side) -> anyhow::Result<BTreeSet<BodyKey>> {
    Ok(side
        .keys(ExportPart::Bodies)
        .await?
        .into_iter()
        .map(|(_, k)| k)
        .collect())
}

/// Delete these bodies at the target.
pub async fn delete_bodies(dst: &Side, keys: Vec<BodyKey>) -> anyhow::Result<()> {
    for part in keys.chunks(10_000) {
        let delete = part
            .iter()
            .map(|k| ("body".to_string(), k.clone()))
            .collect();
        dst.import(Vec::new(), delete, false).await?;
    }
    Ok(())
}

/// Delete at the target the bodies the source no longer has; how many.
pub async fn drop_expunged_bodies(src: &Side, dst: &Side) -> anyhow::Result<usize> {
    let (have, want) =
        tokio::try_join!(dst.keys(ExportPart::Bodies), src.keys(ExportPart::Bodies))?;
    let extra: Vec<(String, Vec<u8>)> = have.difference(&want).cloned().collect();
    let n = extra.len();
    for part in extra.chunks(10_000) {
        dst.import(Vec::new(), part.to_vec(), false).await?;
    }
    Ok(n)
}

/// Both digests, or an error naming the difference.
pub async fn verify(src: &Side, dst: &Side) -> anyhow::Result<MailboxDigest> {
    let (a, b) = tokio::try_join!(src.digest(), dst.digest())?;
    if a != b {
        bail!(
            "the copies differ: source {} messages, {} records, {} body bytes; target {} / {} / {}",
            a.messages,
            a.records,
            a.body_bytes,
            b.messages,
            b.records,
            b.body_bytes
        );
    }
    Ok(a)
}
