//! `mailctl gc-inactive`: find accounts with no sign-in for N days and, with `--apply`, delete
//! them restorably — but never more than a set fraction of any store in one run.
//!
//! The guard exists because a login that once forgot to record sign-ins made every account look
//! inactive, and an inactivity GC then wiped a large part of a store. Every store is checked
//! before anything is deleted; one store over the limit refuses the whole run.
//!
//! A deletion is two steps, in this order: (1) the store marks the account `Deleted` (every
//! caller is told `NoSuchUser`; the data stays for the store's retention period), (2) the index
//! drops the placement. A crash between them leaves a placement to a deleted account: mail to it
//! is refused as for an unknown user, and a later run (or `mailctl restore --user U`) finishes
//! or undoes it. The other order could leave a live mailbox that no route reaches and that a
//! re-created user of the same name would shadow.

use runtime::time::now_ms;
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use mserv_client::MservError;
use serde_json::{json, Value};
use xfs::{ops, AccountBrief, AccountState, CallError, Target, XfsError};

use crate::admin::Hcu;

/// Accounts asked for per page.
const PAGE: u32 = 1000;

pub struct Options {
    pub days: f64,
    pub apply: bool,
    pub max_fraction: f64,
}

/// One store's accounts: how many are live, and which are inactive.
#[derive(Default)]
struct StoreScan {
    live: u64,
    /// (segment, account)
    inactive: Vec<(u32, AccountBrief)>,
    /// Deleted accounts whose placement may still be in the index (a crash between the steps).
    deleted: Vec<(u32, String)>,
}

/// The last sign-in, or the creation when the user never signed in.
fn last_seen(a: &AccountBrief) -> u64 {
    if a.last_login_ms > 0 {
        a.last_login_ms
    } else {
        a.created_ms
    }
}

async fn scan_store(
    hcu: &Hcu,
    addr: &str,
    segments: &[u32],
    cutoff: u64,
) -> anyhow::Result<StoreScan> {
    let pool = hcu.xfs.pool(addr);
    let mut scan = StoreScan::default();
    for &segment in segments {
        let mut after: Option<String> = None;
        loop {
            let op = ops::ListAccounts {
                segment,
                after: after.clone(),
                limit: PAGE,
            };
            let page = pool.run(op).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.user.clone());
            for a in page {
                match a.state {
                    AccountState::Active => {
                        scan.live += 1;
                        if last_seen(&a) < cutoff {
                            scan.inactive.push((segment, a));
                        }
                    }
                    AccountState::Frozen => scan.live += 1,
                    AccountState::Deleted { .. } => scan.deleted.push((segment, a.user)),
                    AccountState::MovedOut { .. } | AccountState::Importing { .. } => {}
                }
            }
        }
    }
    Ok(scan)
}

fn age(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    if s >= 86_400 {
        format!("{:.1}d", s as f64 / 86_400.0)
    } else if s >= 3600 {
        format!("{:.1}h", s as f64 / 3600.0)
    } else {
        format!("{s}s")
    }
}

/// Run the GC; `Err` (non-zero exit) when the guard refuses or a deletion fails.
pub async fn run(hcu: &Hcu, opts: &Options, json_out: bool) -> anyhow::Result<()> {
    if !opts.days.is_finite() || opts.days <= 0.0 {
        bail!("--days must be a positive number of days");
    }
    if !opts.max_fraction.is_finite() || opts.max_fraction <= 0.0 || opts.max_fraction > 1.0 {
        bail!("--max-fraction must be within (0, 1]");
    }
    let now = now_ms();
    let cutoff = now.saturating_sub((opts.days * 86_400_000.0) as u64);
    let stores = hcu.mserv.list_stores().await?;
    let mut scans: BTreeMap<String, StoreScan> = BTreeMap::new();
    for s in &stores {
        let scan = scan_store(hcu, &s.info.xfs_addr, &s.info.segments, cutoff)
            .await
            .with_context(|| format!("listing the accounts of {}", s.info.name))?;
        scans.insert(s.info.name.clone(), scan);
    }

    let mut rows = Vec::new();
    for (store, scan) in &scans {
        for (seg, a) in &scan.inactive {
            let last = if a.last_login_ms > 0 {
                crate::backup::backup_id(a.last_login_ms)
            } else {
                "never".to_string()
            };
            rows.push(json!({"user": a.user, "store": store, "segment": seg,
                "last_sign_in": last, "last_sign_in_ms": a.last_login_ms,
                "created_ms": a.created_ms, "age": age(last_seen(a), now)}));
        }
    }
    let mut over = Vec::new();
    for (store, scan) in &scans {
        let n = scan.inactive.len() as u64;
        if n > 0 && n as f64 > opts.max_fraction * scan.live as f64 {
            over.push(format!(
                "store {store}: {n} of {} accounts ({:.1}%) are inactive, over the limit of {:.1}% per run",
                scan.live,
                100.0 * n as f64 / scan.live.max(1) as f64,
                100.0 * opts.max_fraction
            ));
        }
    }
    let refusal = (!over.is_empty()).then(|| {
        format!(
            "refusing to delete: {}. Nothing was deleted. So many inactive accounts at once often means sign-ins are not being recorded (check `last_login_ms` of a user you know signed in: `mailctl user show U`); raise --max-fraction only if you are sure.",
            over.join("; ")
        )
    });

    if !opts.apply {
        if json_out {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"dry_run": true, "candidates": rows,
                    "deleted": 0, "would_refuse": refusal}))?
            );
        } else {
            print_rows(&rows);
            if let Some(r) = &refusal {
                println!("--apply would be refused: {r}");
            }
            println!(
                "dry run: nothing deleted ({} inactive accounts)",
                rows.len()
            );
        }
        return Ok(());
    }
    if let Some(r) = refusal {
        if json_out {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"dry_run": false, "candidates": rows,
                    "deleted": 0, "refused": r}))?
            );
        }
        bail!(r);
    }

    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    let mut finished = Vec::new();
    for (store, scan) in &scans {
        // Finish deletions a crash left half-done: a deleted account still placed here.
        for (seg, user) in &scan.deleted {
            if let Ok(p) = hcu.mserv.lookup_uncached(user).await {
                if &p.store == store && p.segment == *seg {
                    match hcu.mserv.delete_user(user).await {
                        Ok(()) => finished.push(user.clone()),
                        Err(e) => failed.push(format!("{user}: dropping its placement: {e}")),
                    }
                }
            }
        }
        for (seg, a) in &scan.inactive {
            match delete_one(hcu, store, *seg, &a.user).await {
                Ok(()) => deleted.push(a.user.clone()),
                Err(e) => failed.push(format!("{}: {e:#}", a.user)),
            }
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"dry_run": false, "candidates": rows,
                "deleted": deleted.len(), "deleted_users": deleted,
                "finished": finished, "failed": failed}))?
        );
    } else {
        print_rows(&rows);
        for u in &deleted {
            println!("deleted {u} (restorable: mailctl restore --user {u})");
        }
        for u in &finished {
            println!("finished the deletion of {u} (its placement was left by an interrupted run)");
        }
        for f in &failed {
            println!("ERR {f}");
        }
        println!("OK {} deleted, {} failed", deleted.len(), failed.len());
    }
    if !failed.is_empty() {
        bail!("{} of {} deletions failed", failed.len(), rows.len());
    }
    Ok(())
}

fn print_rows(rows: &[Value]) {
    println!(
        "{:<40} {:<10} {:>3} {:<18} {:>8}",
        "USER", "STORE", "SEG", "LAST SIGN-IN", "AGE"
    );
    for r in rows {
        println!(
            "{:<40} {:<10} {:>3} {:<18} {:>8}",
            r["user"].as_str().unwrap_or(""),
            r["store"].as_str().unwrap_or(""),
            r["segment"].as_u64().unwrap_or(0),
            r["last_sign_in"].as_str().unwrap_or(""),
            r["age"].as_str().unwrap_or("")
        );
    }
}

/// Soft-delete at the store, then drop the placement (see the module doc for the order).
async fn delete_one(hcu: &Hcu, store: &str, seg: u32, user: &str) -> anyhow::Result<()> {
    let p = match hcu.mserv.lookup_uncached(user).await {
        Ok(p) => p,
        Err(MservError::NoSuchUser) => bail!("not in the index: left alone"),
        Err(e) => return Err(e.into()),
    };
    if p.store != store || p.segment != seg {
        bail!(
            "the index places it on {} segment {}, not here: left alone",
            p.store,
            p.segment
        );
    }
    let addr = hcu.store_addr(store).await?;
    let op = ops::SoftDelete {
        target: Target::new(user, seg, p.epoch),
    };
    match hcu.xfs.pool(&addr).run(op).await {
        Ok(_) => {}
        Err(CallError::Remote(XfsError::NoSuchUser)) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("marking it deleted")),
    }
    match hcu.mserv.delete_user(user).await {
        Ok(()) | Err(MservError::NoSuchUser) => Ok(()),
        Err(e) => {
            Err(anyhow::Error::new(e).context("dropping its placement (a rerun finishes it)"))
        }
    }
}
