//! Named fault-injection points: a delay and a failure rate per point, set by config, environment or
//! the admin endpoint, and always compiled in.
//!
//! Code under test calls `faults.inject("ustore.deliver").await?` where a fault makes sense. With no
//! point configured that costs one atomic load. A point's delay comes first, then its failure.
//!
//! Set a point in a role's config (`[faults]` then `"xfs.call" = { delay-ms = 50, fail-rate = 0.1 }`),
//! in `MEGAMAIL_FAULTS=xfs.call=50:0.1,http.request=0:0.01` (read at start, overrides the config), or
//! at run time with `POST /faults?point=xfs.call&delay_ms=50&fail_rate=0.1` on the admin port
//! (`clear=1` removes it). Every injected failure counts in `faults_injected_total{point}`.
//!
//! | point | where | what a failure looks like |
//! |---|---|---|
//! | `xfs.call`, `xfs.call.<op>` | the XFS client (`xfs::client`), in every process that calls a store: front doors, smtp-in, login, mailctl; before the request is sent (`<op>` is the operation's name, e.g. `xfs.call.deliver`; both points apply) | the call fails with `CallError::Unavailable`, as if no connection could be had; nothing reached the store |
//! | `xfs.reply`, `xfs.reply.<op>` | the XFS client, after the store's reply arrived | the reply is dropped and the call fails with `CallError::ConnectionLost`: the store did the work but the caller cannot know (retries must be idempotent) |
//! | `http.request` | the HTTP middleware of front doors and login servers, before the handler | `503 Service Unavailable` with the body `injected fault at http.request` (and `Retry-After: 1`) |
//! | `ustore.op.<op>` | the store's XFS server, after admission, before the operation runs | `XfsError::Unavailable` |
//! | `ustore.disk.write` | the store, right before a segment commits an operation's write batch | `XfsError::Unavailable`; the batch is not written, so the operation left nothing behind |
//! | `frontdoor.store` | the front door's mailbox calls to the user's store | the page or API call answers 503 (store unavailable) |
//! | `frontdoor.send` | the front door's submission of a composed message to the sender's store | the send fails and is reported; nothing is filed or queued |
//! | `smtp-out.send` | an outbound worker's delivery attempt | the attempt is deferred (retried on the schedule) |
//! | `smtp.deliver` | smtp-in, each copy's delivery to a store | that copy is retried with backoff until `deliver-timeout-secs`, then `451` |
//! | `login.store` | login's calls to the user's store | the call is unavailable: the sign-in answers 503, never 401 |
//! | `mserv.op.<op>` | the member index server, before an operation | the operation fails with an unavailable error |
//! | `mserv.raft.send` | the member index's Raft messages to a peer, before sending | the peer counts as unreachable for that message; Raft sends again later |
//!
//! Each role knows its own points ([`Rules::for_role`], from the table above): a name it does not
//! know, or a delay over `[admin] max-fault-delay-ms` (10 s by default), is refused at start
//! (config or environment) and by the admin port (400 with the known names).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::config::{FaultsConfig, Validate};

/// Environment variable read by [`Faults::from_config`]: `point=delay_ms:fail_rate,point2=0:0.5`.
pub const ENV_VAR: &str = "MEGAMAIL_FAULTS";

static INJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "faults_injected_total",
        "Failures injected at a fault point.",
        &["point"],
    )
});

/// What happens at one point: a delay first, then a failure with probability `fail_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FaultSpec {
    pub delay_ms: u64,
    /// Probability in `[0, 1]`.
    pub fail_rate: f64,
}

impl Validate for FaultSpec {
    fn validate(&self) -> Result<(), String> {
        if (0.0..=1.0).contains(&self.fail_rate) {
            Ok(())
        } else {
            Err(format!(
                "fail-rate must be between 0 and 1, got {}",
                self.fail_rate
            ))
        }
    }
}

/// The error an injected failure returns; callers map it to their own failure path.
#[derive(Debug, thiserror::Error)]
#[error("injected fault at {point}")]
pub struct InjectedFault {
    pub point: String,
}

/// A fault point name a role answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Exactly this name.
    Exact(&'static str),
    /// `prefix` followed by one of `names` (`ustore.op.` and the store's operations).
    OneOf(&'static str, &'static [&'static str]),
    /// `prefix` followed by one word of lowercase letters and `_` (operations this crate does
    /// not know the names of, such as the member index's).
    AnyWord(&'static str),
}

impl Point {
    fn matches(&self, name: &str) -> bool {
        match *self {
            Point::Exact(p) => name == p,
            Point::OneOf(prefix, names) => name
                .strip_prefix(prefix)
                .is_some_and(|rest| names.contains(&rest)),
            Point::AnyWord(prefix) => name.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            }),
        }
    }

    fn describe(&self) -> String {
        match *self {
            Point::Exact(p) => p.to_owned(),
            Point::OneOf(prefix, _) | Point::AnyWord(prefix) => format!("{prefix}<op>"),
        }
    }
}

/// The XFS client's points, in every role that calls a store.
const XFS_CLIENT: [Point; 4] = [
    Point::Exact("xfs.call"),
    Point::OneOf("xfs.call.", xfs::Op::NAMES),
    Point::Exact("xfs.reply"),
    Point::OneOf("xfs.reply.", xfs::Op::NAMES),
];

/// What may be set on a process's fault points: which names, and how long a delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `None`: any name (a library's own tests).
    points: Option<Vec<Point>>,
    max_delay_ms: u64,
}

impl Rules {
    /// Any name and any delay: for code that makes its own `Faults` in tests.
    pub fn any() -> Rules {
        Rules {
            points: None,
            max_delay_ms: u64::MAX,
        }
    }

    /// The points `role` has (the table of this module), delays up to `max_delay_ms`. A role
    /// this crate does not know has none.
    pub fn for_role(role: &str, max_delay_ms: u64) -> Rules {
        let mut points = Vec::new();
        let web = [Point::Exact(crate::http::layers::FAULT_HTTP)];
        match role {
            "ustore" => points.extend([
                Point::OneOf("ustore.op.", xfs::Op::NAMES),
                Point::Exact("ustore.disk.write"),
            ]),
            "mserv" => {
                points.extend([Point::AnyWord("mserv.op."), Point::Exact("mserv.raft.send")])
            }
            "smtp-in" => {
                points.extend(XFS_CLIENT);
                points.push(Point::Exact("smtp.deliver"));
            }
            "smtp-out" => {
                points.extend(XFS_CLIENT);
                points.push(Point::Exact("smtp-out.send"));
            }
            "login" => {
                points.extend(XFS_CLIENT);
                points.extend(web);
                points.push(Point::Exact("login.store"));
            }
            "frontdoor" => {
                points.extend(XFS_CLIENT);
                points.extend(web);
                points.extend([
                    Point::Exact("frontdoor.store"),
                    Point::Exact("frontdoor.send"),
                ]);
            }
            _ => {}
        }
        Rules {
            points: Some(points),
            max_delay_ms,
        }
    }

    /// Whether `spec` may be set at `point`; `Err` says why, with the names that are known.
    pub fn check(&self, point: &str, spec: FaultSpec) -> Result<(), String> {
        if let Some(points) = &self.points {
            if !points.iter().any(|p| p.matches(point)) {
                let known: Vec<String> = points.iter().map(Point::describe).collect();
                return Err(if known.is_empty() {
                    format!("unknown fault point `{point}`: this process has none")
                } else {
                    format!("unknown fault point `{point}`; known: {}", known.join(", "))
                });
            }
        }
        if spec.delay_ms > self.max_delay_ms {
            return Err(format!(
                "`{point}`: delay {} ms is over the most allowed, {} ms",
                spec.delay_ms, self.max_delay_ms
            ));
        }
        spec.validate().map_err(|r| format!("`{point}`: {r}"))
    }
}

/// The fault points of a process, shared as `Arc<Faults>`.
#[derive(Debug)]
pub struct Faults {
    /// True while `points` is not empty: the fast path reads only this.
    any: AtomicBool,
    points: RwLock<HashMap<String, FaultSpec>>,
    rules: Rules,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::with_rules(Rules::any())
    }
}

impl Faults {
    /// No fault anywhere; any point may be set (for tests and tools that make their own).
    pub fn new() -> Self {
        Faults::default()
    }

    /// No fault anywhere; what may be set follows `rules`.
    pub fn with_rules(rules: Rules) -> Self {
        Faults {
            any: AtomicBool::new(false),
            points: RwLock::new(HashMap::new()),
            rules,
        }
    }

    /// A role's points at start: the `[faults]` section, overridden point by point by
    /// `env_value` (`MEGAMAIL_FAULTS`), every one checked against `rules`. A malformed
    /// environment value, an unknown point or a delay over the bound is an error, so the
    /// process does not start with a fault it did not ask for.
    pub fn for_role(
        rules: Rules,
        cfg: &FaultsConfig,
        env_value: Option<&str>,
    ) -> Result<Self, String> {
        let env = match env_value {
            Some(value) => parse_env(value).map_err(|r| format!("{ENV_VAR}: {r}"))?,
            None => Vec::new(),
        };
        let mut reasons = Vec::new();
        for (point, spec) in cfg {
            if let Err(r) = rules.check(point, *spec) {
                reasons.push(format!("[faults] {r}"));
            }
        }
        for (point, spec) in &env {
            if let Err(r) = rules.check(point, *spec) {
                reasons.push(format!("{ENV_VAR}: {r}"));
            }
        }
        if !reasons.is_empty() {
            return Err(reasons.join("; "));
        }
        let faults = Faults::with_rules(rules);
        for (point, spec) in cfg.iter().map(|(p, s)| (p.clone(), *s)).chain(env) {
            faults.set(&point, spec);
        }
        Ok(faults)
    }

    /// Set `point` after checking it against this process's [`Rules`] (what the admin port
    /// does); `Err` is the reason.
    pub fn set_checked(&self, point: &str, spec: FaultSpec) -> Result<(), String> {
        self.rules.check(point, spec)?;
        self.set(point, spec);
        Ok(())
    }

    /// The XFS client's fault points (`xfs.call`, `xfs.reply`), decided by these.
    pub fn call_faults(self: &Arc<Self>) -> xfs::client::CallFaults {
        let faults = Arc::clone(self);
        xfs::client::CallFaults::new(move |point| faults.decide(point))
    }

    /// The points of the `[faults]` config section, overridden point by point by `MEGAMAIL_FAULTS`.
    /// A malformed environment value is logged and ignored as a whole.
    pub fn from_config(cfg: &FaultsConfig) -> Self {
        Faults::from_sources(cfg, std::env::var(ENV_VAR).ok().as_deref())
    }

    /// [`Faults::from_config`] with the environment value given rather than read.
    pub fn from_sources(cfg: &FaultsConfig, env_value: Option<&str>) -> Self {
        let faults = Faults::new();
        for (point, spec) in cfg {
            faults.set(point, *spec);
        }
        if let Some(value) = env_value {
            match parse_env(value) {
                Ok(points) => {
                    for (point, spec) in points {
                        faults.set(&point, spec);
                    }
                }
                Err(reason) => {
                    tracing::warn!(var = ENV_VAR, value, %reason, "ignoring malformed fault settings");
                }
            }
        }
        faults
    }

    /// Set (or replace) the spec of a point. A `fail_rate` outside `[0, 1]` is clamped (NaN becomes 0).
    pub fn set(&self, point: &str, spec: FaultSpec) {
        let fail_rate = if spec.fail_rate.is_nan() {
            0.0
        } else {
            spec.fail_rate.clamp(0.0, 1.0)
        };
        let spec = FaultSpec { fail_rate, ..spec };
        let mut points = self.write();
        points.insert(point.to_owned(), spec);
        self.any.store(true, Ordering::Release);
        tracing::info!(
            point,
            delay_ms = spec.delay_ms,
            fail_rate,
            "fault point set"
        );
    }

    /// Remove a point; unknown points are ignored.
    pub fn clear(&self, point: &str) {
        let mut points = self.write();
        if points.remove(point).is_some() {
            tracing::info!(point, "fault point cleared");
        }
        self.any.store(!points.is_empty(), Ordering::Release);
    }

    /// Every configured point, sorted by name.
    pub fn list(&self) -> Vec<(String, FaultSpec)> {
        let points = self.points.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = points.iter().map(|(k, v)| (k.clone(), *v)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Apply the point's fault: sleep its delay (tokio), then fail with its probability.
    pub async fn inject(&self, point: &str) -> Result<(), InjectedFault> {
        let Some(spec) = self.spec(point) else {
            return Ok(());
        };
        if spec.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.delay_ms)).await;
        }
        roll(point, spec.fail_rate)
    }

    /// [`Faults::inject`] for code on blocking threads: the delay is a `std::thread::sleep`.
    pub fn inject_blocking(&self, point: &str) -> Result<(), InjectedFault> {
        let Some(spec) = self.spec(point) else {
            return Ok(());
        };
        if spec.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(spec.delay_ms));
        }
        roll(point, spec.fail_rate)
    }

    /// The point's fault decided now, for code that applies it itself (such as the XFS client,
    /// which cannot depend on this crate): `None` when the point is not set, else its delay and
    /// whether this call fails (an injected failure, counted like any other).
    pub fn decide(&self, point: &str) -> Option<(Duration, bool)> {
        let spec = self.spec(point)?;
        Some((
            Duration::from_millis(spec.delay_ms),
            roll(point, spec.fail_rate).is_err(),
        ))
    }

    fn spec(&self, point: &str) -> Option<FaultSpec> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let points = self.points.read().unwrap_or_else(|e| e.into_inner());
        points.get(point).copied()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, FaultSpec>> {
        // The map is always consistent, so a panic elsewhere while holding the lock does not matter.
        self.points.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn roll(point: &str, fail_rate: f64) -> Result<(), InjectedFault> {
    // random() is in [0, 1): a rate of 1 always fails, 0 never does.
    if fail_rate > 0.0 && rand::rng().random::<f64>() < fail_rate {
        INJECTED.with_label_values(&[point]).inc();
        tracing::debug!(point, "injecting failure");
        return Err(InjectedFault {
            point: point.to_owned(),
        });
    }
    Ok(())
}

/// Parse `point=delay_ms:fail_rate,point2=0:0.5` (blanks around items and empty items are allowed).
pub fn parse_env(value: &str) -> Result<Vec<(String, FaultSpec)>, String> {
    let mut points = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (point, spec) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected point=delay_ms:fail_rate"))?;
        let point = point.trim();
        if point.is_empty() {
            return Err(format!("`{item}`: empty point name"));
        }
        let (delay, rate) = spec
            .split_once(':')
            .ok_or_else(|| format!("`{item}`: expected point=delay_ms:fail_rate"))?;
        let delay_ms = delay
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("`{item}`: delay_ms: {e}"))?;
        let fail_rate = rate
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("`{item}`: fail_rate: {e}"))?;
        let spec = FaultSpec {
            delay_ms,
            fail_rate,
        };
        spec.validate().map_err(|r| format!("`{item}`: {r}"))?;
        points.push((point.to_owned(), spec));
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay_ms: u64, fail_rate: f64) -> FaultSpec {
        FaultSpec {
            delay_ms,
            fail_rate,
        }
    }

    #[tokio::test]
    async fn rate_one_always_fails_and_zero_never() {
        let faults = Faults::new();
        faults.set("t.always", spec(0, 1.0));
        faults.set("t.never", spec(0, 0.0));
        for _ in 0..1000 {
            let err = faults.inject("t.always").await.unwrap_err();
            assert_eq!(err.point, "t.always");
            assert!(faults.inject("t.never").await.is_ok());
            assert!(faults.inject("t.unset").await.is_ok());
            assert!(faults.inject_blocking("t.always").is_err());
            assert!(faults.inject_blocking("t.never").is_ok());
        }
        assert_eq!(INJECTED.with_label_values(&["t.always"]).get(), 2000);
        assert_eq!(INJECTED.with_label_values(&["t.never"]).get(), 0);
        assert_eq!(
            faults.inject("t.always").await.unwrap_err().to_string(),
            "injected fault at t.always"
        );
    }

    #[tokio::test]
    async fn half_rate_fails_about_half_the_time() {
        let faults = Faults::new();
        faults.set("t.half", spec(0, 0.5));
        let mut failed = 0;
        for _ in 0..4000 {
            if faults.inject("t.half").await.is_err() {
                failed += 1;
            }
        }
        // Mean 2000, standard deviation ~32: this range is over 15 deviations wide.
        assert!((1500..2500).contains(&failed), "{failed}");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_is_applied_before_the_outcome() {
        let faults = Faults::new();
        faults.set("t.slow", spec(250, 0.0));
        let start = tokio::time::Instant::now();
        faults.inject("t.slow").await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        let start = tokio::time::Instant::now();
        faults.inject("t.other").await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn set_clear_list() {
        let faults = Faults::new();
        assert!(!faults.any.load(Ordering::Relaxed));
        faults.set("b", spec(1, 0.25));
        faults.set("a", spec(0, 7.0));
        faults.set("c", spec(0, f64::NAN));
        assert!(faults.any.load(Ordering::Relaxed));
        assert_eq!(
            faults.list(),
            vec![
                ("a".to_owned(), spec(0, 1.0)),
                ("b".to_owned(), spec(1, 0.25)),
                ("c".to_owned(), spec(0, 0.0)),
            ]
        );
        faults.clear("a");
        faults.clear("b");
        faults.clear("nope");
        assert!(faults.any.load(Ordering::Relaxed));
        faults.clear("c");
        assert!(faults.list().is_empty());
        assert!(!faults.any.load(Ordering::Relaxed));
    }

    #[test]
    fn env_parsing() {
        assert_eq!(
            parse_env("ustore.deliver=50:0.1, mserv.lookup = 0 : 1 ,").unwrap(),
            vec![
                ("ustore.deliver".to_owned(), spec(50, 0.1)),
                ("mserv.lookup".to_owned(), spec(0, 1.0)),
            ]
        );
        assert_eq!(parse_env("").unwrap(), vec![]);
        for bad in [
            "x",
            "x=1",
            "=1:0",
            "x=a:0",
            "x=1:b",
            "x=-1:0",
            "x=1:1.5",
            "x=0:NaN",
            "ok=1:0,bad",
        ] {
            assert!(parse_env(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_overrides_config_and_malformed_env_is_ignored() {
        let mut cfg = FaultsConfig::new();
        cfg.insert("a.b".to_owned(), spec(10, 0.0));
        cfg.insert("c.d".to_owned(), spec(0, 0.5));

        let faults = Faults::from_sources(&cfg, Some("a.b=0:1,e.f=5:0"));
        assert_eq!(
            faults.list(),
            vec![
                ("a.b".to_owned(), spec(0, 1.0)),
                ("c.d".to_owned(), spec(0, 0.5)),
                ("e.f".to_owned(), spec(5, 0.0)),
            ]
        );

        let faults = Faults::from_sources(&cfg, Some("a.b=0:1,e.f=oops"));
        assert_eq!(
            faults.list(),
            vec![
                ("a.b".to_owned(), spec(10, 0.0)),
                ("c.d".to_owned(), spec(0, 0.5)),
            ]
        );
    }

    #[test]
    fn a_role_knows_its_points_and_bounds_their_delays() {
        let ustore = Rules::for_role("ustore", 10_000);
        for ok in [
            "ustore.op.deliver",
            "ustore.op.expunge",
            "ustore.disk.write",
        ] {
            assert_eq!(ustore.check(ok, spec(10_000, 1.0)), Ok(()), "{ok}");
        }
        for unknown in [
            "ustore.op.nope",
            "ustore.op.",
            "ustore.deliver",
            "xfs.call",
            "smtp.deliver",
        ] {
            let err = ustore.check(unknown, spec(0, 1.0)).unwrap_err();
            assert!(err.contains("unknown fault point"), "{unknown}: {err}");
            assert!(
                err.contains("known: ustore.op.<op>, ustore.disk.write"),
                "{err}"
            );
        }
        let err = ustore
            .check("ustore.disk.write", spec(10_001, 0.0))
            .unwrap_err();
        assert!(err.contains("over the most allowed, 10000 ms"), "{err}");
        assert!(ustore.check("ustore.disk.write", spec(0, 2.0)).is_err());

        let mserv = Rules::for_role("mserv", 10);
        assert!(mserv.check("mserv.op.lookup", spec(10, 0.0)).is_ok());
        assert!(mserv.check("mserv.op.Lookup!", spec(0, 0.0)).is_err());
        let fd = Rules::for_role("frontdoor", 10);
        for ok in [
            "xfs.call",
            "xfs.call.fetch",
            "xfs.reply.move",
            "http.request",
            "frontdoor.send",
        ] {
            assert!(fd.check(ok, spec(0, 0.5)).is_ok(), "{ok}");
        }
        assert!(fd.check("xfs.call.nope", spec(0, 0.5)).is_err());
        let none = Rules::for_role("mailctl", 10);
        assert!(none
            .check("x", spec(0, 0.0))
            .unwrap_err()
            .contains("has none"));
        assert!(Rules::any().check("any.thing", spec(u64::MAX, 0.5)).is_ok());
    }

    #[test]
    fn start_up_faults_are_checked_like_the_admin_ports() {
        let rules = || Rules::for_role("smtp-in", 1_000);
        let mut cfg = FaultsConfig::new();
        cfg.insert("smtp.deliver".to_owned(), spec(1_000, 0.5));
        let faults = Faults::for_role(rules(), &cfg, Some("xfs.call=5:0")).unwrap();
        assert_eq!(faults.list().len(), 2);
        assert!(faults.set_checked("xfs.reply", spec(0, 0.1)).is_ok());
        assert!(faults.set_checked("mserv.raft.send", spec(0, 0.1)).is_err());
        assert!(faults.set_checked("xfs.call", spec(1_001, 0.0)).is_err());
        assert_eq!(faults.list().len(), 3, "a refused change changes nothing");

        for (env, why) in [
            (Some("xfs.call=1001:0"), "over the most allowed"),
            (Some("ustore.op.deliver=0:1"), "unknown fault point"),
            (Some("xfs.call=oops"), "MEGAMAIL_FAULTS"),
        ] {
            let err = Faults::for_role(rules(), &cfg, env).unwrap_err();
            assert!(err.contains(why), "{env:?}: {err}");
        }
        cfg.insert("smtp.deliverr".to_owned(), spec(0, 0.5));
        let err = Faults::for_role(rules(), &cfg, None).unwrap_err();
        assert!(
            err.contains("[faults] unknown fault point `smtp.deliverr`"),
            "{err}"
        );
    }

    #[test]
    fn spec_validation() {
        assert!(spec(0, 0.0).validate().is_ok());
        assert!(spec(0, 1.0).validate().is_ok());
        assert!(spec(0, -0.1).validate().is_err());
        assert!(spec(0, 1.01).validate().is_err());
        assert!(spec(0, f64::NAN).validate().is_err());
    }
}
