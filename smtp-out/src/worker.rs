//! The worker loop: for every store in the index, lease due queue entries, deliver them, and
//! report each outcome back to the store that queued it.
//!
//! A worker keeps nothing: what it has leased and not reported is leased again by any worker
//! once the lease runs out, so killing one at any moment loses no mail (a message whose final
//! reply the worker saw but could not report may be sent twice; RFC 5321 §6.1 accepts that over
//! losing it). Entries of one message to one remote domain go in one transaction with several
//! recipients. Recipients in a local domain are delivered with the store's idempotent delivery
//! (the delivery id is derived from the queue entry, so a second attempt stores nothing new).
//!
//! The retry policy is here, not in the store: after a temporary failure the next attempt waits
//! `retry-first-secs` doubled per attempt up to `retry-max-secs`; past `lifetime-secs` an entry
//! fails for good, and after `warn-after-secs` its sender is warned once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mserv_client::{HostedDomains, RouteError, StoreState};
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use xfs::{ops, CallError, Delivery, Flags, Lease, Outcome, QueueEntry, Target, XfsError};

use crate::dkim::Signer;
use crate::metrics;
use crate::remote::{Remote, Verdict};
use crate::wire;
use crate::SmtpOutConfig;

/// Longest a store call (a lease, a report, a local delivery) may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a report that failed is tried again before the lease is left to run out.
const REPORT_TRIES: u32 = 5;

/// What every delivery task shares.
pub struct Worker {
    pub cfg: SmtpOutConfig,
    name: String,
    router: mserv_client::Router,
    /// The hosted domains with their keys.
    domains: HostedDomains,
    /// Each domain's signer, made from its active key (a new active key makes a new one).
    signers: Mutex<HashMap<String, Arc<Signer>>>,
    xfs: xfs::Client,
    remote: Remote,
    faults: Arc<Faults>,
    /// Deliveries in progress, in total and per destination domain.
    total: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Transactions per minute per destination domain.
    rates: crate::rate::Limits,
}

impl Worker {
    pub fn new(
        cfg: SmtpOutConfig,
        name: String,
        router: mserv_client::Router,
        domains: HostedDomains,
        xfs: xfs::Client,
        remote: Remote,
        faults: Arc<Faults>,
    ) -> Worker {
        Worker {
            domains,
            signers: Mutex::new(HashMap::new()),
            total: Arc::new(Semaphore::new(cfg.max_concurrent)),
            per_domain: Mutex::new(HashMap::new()),
            rates: crate::rate::Limits::new(cfg.max_per_domain_per_minute),
            cfg,
            name,
            router,
            xfs,
            remote,
            faults,
        }
    }

    /// Lease and deliver until `shutdown`: one loop per store, started as stores appear.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut running: HashSet<String> = HashSet::new();
        let refresh = Duration::from_millis(self.cfg.poll_ms.max(1000));
        loop {
            match self.router.stores().await {
                Ok(stores) => {
                    for s in stores {
                        if s.state == StoreState::Offline || !running.insert(s.xfs_addr.clone()) {
                            continue;
                        }
                        let (w, sd) = (self.clone(), shutdown.clone());
                        shutdown.spawn(async move { w.store_loop(s.xfs_addr, sd).await });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the store list could not be read"),
            }
            self.remote.close_idle().await;
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(refresh) => {}
            }
        }
    }

    /// Lease from one store whenever there is room for more deliveries.
    async fn store_loop(self: Arc<Self>, addr: String, shutdown: Shutdown) {
        let poll = Duration::from_millis(self.cfg.poll_ms);
        let mut backoff = runtime::backoff::Backoff::new(poll, Duration::from_secs(30));
        loop {
            if shutdown.is_triggered() {
                return;
            }
            // Lease only what can be worked on now: the places are taken before the lease.
            let want = self
                .total
                .available_permits()
                .min(self.cfg.lease_max as usize)
                .max(1);
            let Ok(places) = self.total.clone().acquire_many_owned(want as u32).await else {
                return;
            };
            let call = ops::LeaseQueue {
                worker: self.name.clone(),
                max: want as u32,
                lease_ms: (self.cfg.lease_secs * 1000) as u32,
            };
            let leased = self.xfs.pool(&addr).run_with(call, "", STORE_TIMEOUT).await;
            let leases = match leased {
                Ok(l) => {
                    backoff.reset();
                    l
                }
                Err(e) => {
                    drop(places);
                    tracing::debug!(store = %addr, error = %e, "leasing failed");
                    metrics::LEASES.with_label_values(&["error"]).inc();
                    tokio::select! {
                        () = shutdown.triggered() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            if leases.is_empty() {
                drop(places);
                tokio::select! {
                    () = shutdown.triggered() => return,
                    () = tokio::time::sleep(poll) => {}
                }
                continue;
            }
            metrics::LEASES
                .with_label_values(&["ok"])
                .inc_by(leases.len() as u64);
            let mut places = places;
            for batch in batches(leases) {
                // The lease asked for at most the places taken, so each batch finds its own.
                let n = batch.len().min(places.num_permits());
                let mine = places.split(n).expect("no more than the places held");
                let (w, addr) = (self.clone(), addr.clone());
                shutdown.spawn(async move {
                    let _places = mine;
                    w.deliver(&addr, batch).await;
                });
            }
        }
    }

    /// Deliver one batch (one message, one domain) and report each entry.
    async fn deliver(&self, store: &str, batch: Vec<Lease>) {
        let first = &batch[0].entry;
        let domain = domain_of(&first.rcpt);
        let local = match self.domains.contains(&domain).await {
            Ok(local) => local,
            Err(e) => {
                // Not knowing which domains are ours, nothing is sent: a local recipient
                // must never go out over SMTP.
                let why = format!("4.3.0 the hosted domains are unknown: {e}");
                for lease in &batch {
                    let outcome = self.outcome(&lease.entry, Verdict::Deferred(why.clone()));
                    self.report(store, lease, outcome).await;
                }
                return;
            }
        };
        let verdicts: Vec<Verdict> = if let Err(e) = self.faults.inject("smtp-out.send").await {
            vec![Verdict::Deferred(format!("4.3.0 {e}")); batch.len()]
        } else if local {
            let mut out = Vec::with_capacity(batch.len());
            for l in &batch {
                out.push(self.deliver_local(l).await);
            }
            out
        } else {
            let place = self.domain_place(&domain).acquire_owned().await;
            self.rates.take(&domain).await;
            let rcpts: Vec<String> = batch.iter().map(|l| l.entry.rcpt.clone()).collect();
            let body = self.signed(&first.from, &batch[0].body).await;
            let v = self.remote.send(&domain, &first.from, &rcpts, &body).await;
            drop(place);
            v
        };
        let kind = if local { "local" } else { "remote" };
        for (lease, verdict) in batch.iter().zip(verdicts) {
            let outcome = self.outcome(&lease.entry, verdict);
            let label = match &outcome {
                Outcome::Delivered { .. } => "delivered",
                Outcome::Deferred { .. } => "deferred",
                Outcome::Failed { .. } => "failed",
            };
            metrics::DELIVERIES.with_label_values(&[kind, label]).inc();
            metrics::destination(&domain, label);
            if let Outcome::Deferred { reply, .. } = &outcome {
                metrics::DEFERRALS
                    .with_label_values(&[kind, deferral_reason(reply)])
                    .inc();
            }
            tracing::info!(user = %lease.entry.user, id = lease.entry.id, rcpt = %lease.entry.rcpt,
                outcome = label, reply = ?outcome_reply(&outcome), "delivery attempt");
            self.report(store, lease, outcome).await;
        }
    }

    /// `body` as it leaves: CRLF line endings, and signed with the active key of the sender's
    /// domain when it has one. A message that cannot be signed goes unsigned (and is logged):
    /// a missing signature costs less than mail that never leaves.
    async fn signed(&self, from: &str, body: &[u8]) -> Vec<u8> {
        let lines = wire::crlf_lines(body);
        let Some(signer) = self.signer(&domain_of(from)).await else {
            metrics::DKIM.with_label_values(&["unsigned"]).inc();
            return lines;
        };
        match signer.sign(&lines) {
            Ok(signed) => {
                metrics::DKIM.with_label_values(&["signed"]).inc();
                signed
            }
            Err(e) => {
                metrics::DKIM.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "DKIM signing failed; sending unsigned");
                lines
            }
        }
    }

    /// The signer of `domain`'s active key, if it is hosted and has one.
    async fn signer(&self, domain: &str) -> Option<Arc<Signer>> {
        if domain.is_empty() {
            return None;
        }
        let d = match self.domains.get(domain).await {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, %domain, "no DKIM key: the hosted domains are unknown");
                return None;
            }
        };
        let key = d.active_key()?;
        let mut signers = self.signers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = signers.get(&d.name) {
            if s.selector == key.selector {
                return Some(s.clone());
            }
        }
        match Signer::new(&d.name, key) {
            Ok(s) => {
                let s = Arc::new(s);
                signers.insert(d.name.clone(), s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::error!(error = %e, "the DKIM key cannot sign");
                None
            }
        }
    }

    /// The place of one more delivery to `domain`.
    fn domain_place(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_domain.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, s| s.available_permits() < self.cfg.max_per_domain);
        }
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.max_per_domain)))
            .clone()
    }

    /// Store the message in a local recipient's mailbox.
    async fn deliver_local(&self, lease: &Lease) -> Verdict {
        let rcpt = lease.entry.rcpt.to_lowercase();
        for _ in 0..3 {
            let route = match self.router.route(&rcpt).await {
                Ok(r) => r,
                Err(RouteError::NoSuchUser) => {
                    return Verdict::Failed(format!("550 5.1.1 <{rcpt}>: no such user here"))
                }
                Err(RouteError::BadAddress(why)) => {
                    return Verdict::Failed(format!("553 5.1.3 <{rcpt}>: {why}"))
                }
                Err(RouteError::Unknown(why)) => {
                    return Verdict::Deferred(format!("4.4.3 the directory cannot be read: {why}"))
                }
            };
            let now = runtime::time::now_ms();
            // A trace line, as every server that takes a message adds (RFC 5321 §4.4).
            let mut body = format!(
                "Received: by {} (megamail) for <{rcpt}>;\r\n\t{}\r\n",
                self.cfg.hostname,
                runtime::time::rfc5322_date(now)
            )
            .into_bytes();
            body.extend_from_slice(&lease.body);
            let delivery = Delivery {
                id: local_delivery_id(&lease.entry),
                folder: None,
                internal_date_ms: now,
                flags: Flags::NONE,
                summary: message::summarize(&body),
                body: body.into(),
            };
            let call = ops::Deliver {
                target: route.target(),
                delivery,
            };
            match self
                .xfs
                .pool(&route.xfs_addr)
                .run_with(call, "", STORE_TIMEOUT)
                .await
            {
                Ok(_) => return Verdict::Delivered("250 2.0.0 stored in the mailbox".into()),
                Err(CallError::Remote(XfsError::Moved { .. } | XfsError::NoSuchUser)) => {
                    self.router.invalidate(&rcpt).await;
                    continue;
                }
                Err(CallError::Remote(XfsError::QuotaExceeded { .. })) => {
                    return Verdict::Deferred(format!("452 4.2.2 <{rcpt}>: mailbox full"))
                }
                Err(e) => return Verdict::Deferred(format!("4.3.0 the mailbox store: {e}")),
            }
        }
        Verdict::Deferred(format!("4.4.6 <{rcpt}>: the mailbox keeps moving"))
    }

    /// The outcome to report for a verdict, after the retry policy.
    fn outcome(&self, e: &QueueEntry, verdict: Verdict) -> Outcome {
        policy(&self.cfg, e, verdict, runtime::time::now_ms())
    }

    /// Report to the store, trying again a few times; a report that never arrives leaves the
    /// entry to be leased again when its lease runs out.
    async fn report(&self, store: &str, lease: &Lease, outcome: Outcome) {
        let target = Target::new(&lease.entry.user, lease.segment, lease.epoch);
        let mut backoff =
            runtime::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..REPORT_TRIES {
            let call = ops::ReportQueue {
                target: target.clone(),
                id: lease.entry.id,
                token: lease.token,
                mta: self.cfg.hostname.clone(),
                outcome: outcome.clone(),
            };
            match self.xfs.pool(store).run_with(call, "", STORE_TIMEOUT).await {
                Ok(()) => return,
                Err(CallError::Remote(e)) if !e.is_transient() => {
                    metrics::REPORTS_LOST.inc();
                    tracing::warn!(user = %lease.entry.user, id = lease.entry.id, error = %e,
                        "the store refused the report");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "report failed; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        metrics::REPORTS_LOST.inc();
        tracing::warn!(user = %lease.entry.user, id = lease.entry.id,
            "the report could not be made; the entry is leased again when its lease runs out");
    }
}

/// The outcome to report for `verdict` on `e` at `now`: a deferral past the lifetime fails
/// for good, and one past the warning time warns the sender (once).
pub fn policy(cfg: &SmtpOutConfig, e: &QueueEntry, verdict: Verdict, now: u64) -> Outcome {
    match verdict {
        Verdict::Delivered(reply) => Outcome::Delivered { reply },
        Verdict::Failed(reply) => Outcome::Failed { reply },
        Verdict::Deferred(reply) => {
            let age = now.saturating_sub(e.queued_ms);
            if age >= cfg.lifetime_secs * 1000 {
                return Outcome::Failed {
                    reply: format!(
                        "4.4.7 given up after {} (the last attempt: {reply})",
                        human_age(age)
                    ),
                };
            }
            let warn = cfg.warn_after_secs > 0 && !e.warned && age >= cfg.warn_after_secs * 1000;
            Outcome::Deferred {
                reply,
                retry_at_ms: now + retry_delay(cfg, e.attempts) * 1000,
                warn,
            }
        }
    }
}

/// Why an attempt was deferred, for the metrics: the class of the first enhanced status code
/// in `reply` (RFC 3463 §3: X.1 address, X.2 mailbox, X.3 system, X.4 network and routing, X.5
/// protocol, X.6 content, X.7 security), with X.4.3 (routing: DNS) and X.4.7 (expired) apart.
/// Every deferral this crate makes leads with one, and so does a remote server's usually; one
/// without is `other`.
pub fn deferral_reason(reply: &str) -> &'static str {
    let code = reply.split_whitespace().take(2).find_map(|w| {
        let mut parts = w.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let num = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        (matches!(class, "4" | "5") && num(subject) && num(detail) && parts.next().is_none())
            .then(|| (subject.to_string(), detail.to_string()))
    });
    let Some((subject, detail)) = code else {
        return "other";
    };
    match (subject.as_str(), detail.as_str()) {
        ("4", "3") => "dns",
        ("4", "7") => "expired",
        ("4", _) => "network",
        ("1", _) => "address",
        ("2", _) => "mailbox",
        ("3", _) => "system",
        ("5", _) => "protocol",
        ("6", _) => "content",
        ("7", _) => "security",
        _ => "other",
    }
}

/// The wait before the next attempt of an entry that has had `attempts` before this one.
pub fn retry_delay(cfg: &SmtpOutConfig, attempts: u32) -> u64 {
    let doubled = cfg
        .retry_first_secs
        .saturating_mul(1u64 << attempts.min(32));
    doubled.min(cfg.retry_max_secs)
}

/// Leases grouped into deliveries: the entries of one message (one mailbox, one body) to one
/// remote domain together; each local recipient alone.
fn batches(leases: Vec<Lease>) -> Vec<Vec<Lease>> {
    let mut groups: BTreeMap<(String, u64, String), Vec<Lease>> = BTreeMap::new();
    for l in leases {
        let key = (
            l.entry.user.clone(),
            l.entry.sent_msg,
            domain_of(&l.entry.rcpt),
        );
        groups.entry(key).or_default().push(l);
    }
    groups.into_values().collect()
}

/// The domain of an address, lowercase.
pub fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// The id of a local delivery of a queue entry: the same for every attempt.
fn local_delivery_id(e: &QueueEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        b"outbound".as_slice(),
        e.user.as_bytes(),
        &e.id.to_be_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn outcome_reply(o: &Outcome) -> &str {
    match o {
        Outcome::Delivered { reply }
        | Outcome::Deferred { reply, .. }
        | Outcome::Failed { reply } => reply,
    }
}

fn human_age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s >= 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s if s >= 60 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, id: u64, sent: u64, rcpt: &str) -> Lease {
        Lease {
            entry: QueueEntry {
                user: user.into(),
                id,
                sent_msg: sent,
                from: user.into(),
                rcpt: rcpt.into(),
                size: 1,
                queued_ms: 0,
                attempts: 0,
                next_attempt_ms: 0,
                last_reply: None,
                warned: false,
                state: xfs::QueueState::Queued,
            },
            segment: 0,
            epoch: 1,
            token: 1,
            body: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn deferrals_are_classed_by_their_enhanced_code() {
        for (reply, reason) in [
            ("451 4.7.1 later", "security"),
            ("4.4.3 no DNS answer", "dns"),
            ("4.4.1 no mail exchanger of x could be reached", "network"),
            ("452 4.2.2 <a@b>: mailbox full", "mailbox"),
            ("4.3.0 the mailbox store: down", "system"),
            ("421 too busy", "other"),
            ("", "other"),
            ("451 4.x.1 odd", "other"),
            ("450 4.1.8 sender domain", "address"),
        ] {
            assert_eq!(deferral_reason(reply), reason, "{reply}");
        }
    }

    #[test]
    fn the_retry_wait_doubles_from_the_first_up_to_the_most() {
        let cfg = SmtpOutConfig::default();
        let waits: Vec<u64> = (0..6).map(|a| retry_delay(&cfg, a)).collect();
        assert_eq!(waits, vec![300, 600, 1200, 2400, 4000, 4000]);
        assert_eq!(retry_delay(&cfg, 200), 4000);
    }

    #[test]
    fn one_message_to_one_domain_is_one_batch() {
        let leases = vec![
            entry("a@x.test", 1, 10, "p@one.example"),
            entry("a@x.test", 2, 10, "q@ONE.example"),
            entry("a@x.test", 3, 10, "r@two.example"),
            entry("a@x.test", 4, 11, "s@one.example"),
            entry("b@x.test", 5, 10, "t@one.example"),
        ];
        let ids: Vec<Vec<u64>> = batches(leases)
            .iter()
            .map(|b| b.iter().map(|l| l.entry.id).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
    }

    #[test]
    fn a_deferral_past_the_lifetime_fails_and_one_past_the_warning_warns_once() {
        let e = entry("a@x.test", 1, 10, "p@one.example").entry;
        let cfg = SmtpOutConfig {
            lifetime_secs: 100,
            warn_after_secs: 10,
            ..SmtpOutConfig::default()
        };
        let verdict = || Verdict::Deferred("451 4.7.1 later".into());
        let now = runtime::time::now_ms();
        let young = QueueEntry {
            queued_ms: now,
            ..e.clone()
        };
        let late = QueueEntry {
            queued_ms: now - 20_000,
            ..e.clone()
        };
        let warned = QueueEntry {
            warned: true,
            ..late.clone()
        };
        let old = QueueEntry {
            queued_ms: now - 200_000,
            ..e
        };
        let w = |e: &QueueEntry| match outcome_for(&cfg, e, verdict()) {
            Outcome::Deferred { warn, .. } => Some(warn),
            _ => None,
        };
        assert_eq!(w(&young), Some(false));
        assert_eq!(w(&late), Some(true));
        assert_eq!(w(&warned), Some(false));
        assert!(matches!(
            outcome_for(&cfg, &old, verdict()),
            Outcome::Failed { reply } if reply.starts_with("4.4.7 given up after 3 minutes")
        ));
    }

    fn outcome_for(cfg: &SmtpOutConfig, e: &QueueEntry, v: Verdict) -> Outcome {
        policy(cfg, e, v, runtime::time::now_ms())
    }
}
