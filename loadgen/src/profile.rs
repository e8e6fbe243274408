//! From what a run measured to the capacity of one machine of each role: per-operation
//! figures, per-role CPU per request, store I/O per page view and per delivery, and the capacity
//! profile (TOML) that `hcu-sizing` reads.
//!
//! How each figure is found (a "machine" is this machine: `cores` = its available parallelism):
//! - CPU ms per request of a role = the CPU time (`/proc/<pid>/stat`) of all its processes over
//!   the window / its units of work: page views (front door), sign-ins (login), messages
//!   received (smtp-in, `smtp_messages_total`; sends relayed by front doors included), store
//!   requests (ustore, `ustore_requests_total`), index requests (mserv). One machine then serves
//!   `cores × 1000 / CPU ms` units per second.
//! - A store's page views/s = that rate divided by store requests per page view (every store
//!   request but deliveries and smtp-in's account checks); its deliveries/s = the same for store
//!   requests per delivery, capped by this disk's synced writes/s over WAL syncs per delivery
//!   (one synced batch per delivery, sharing syncs by group commit as measured).
//! - Store reads per page view = RocksDB block cache misses / page views.
//! - Bytes on disk per stored byte = growth of the segments' files (after a flush, over setup and
//!   run) / growth of the mail the simulated users hold (the stores' folder byte counts).
//! - Index lookups per page view / per message = the callers' cache misses
//!   (`mserv_client_cache_total{result="miss"}` of front doors and login / of smtp-in).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;

use crate::load::{Sample, PAGE_OPS};
use crate::measure::Delta;

/// One operation over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct OpFigures {
    pub op: String,
    pub count: u64,
    pub errors: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub first_error: Option<String>,
}

/// One role over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct RoleFigures {
    pub role: String,
    /// CPU seconds all its processes used.
    pub cpu_secs: f64,
    /// What its requests are counted in, and how many there were.
    pub unit: String,
    pub requests: f64,
    pub cpu_ms_per_request: f64,
    /// The rate one machine of this role sustains by CPU (`cores × 1000 / CPU ms`).
    pub capacity_per_s: f64,
}

/// Everything a run found, and the capacity profile it implies.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub cores: usize,
    pub window_secs: f64,
    pub ops: Vec<OpFigures>,
    pub roles: Vec<RoleFigures>,
    pub measured: BTreeMap<String, f64>,
    pub capacity: Capacity,
    pub restarted: Vec<String>,
}

/// The capacity profile's required figures.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub ustore_page_views_per_s: f64,
    pub ustore_deliveries_per_s: f64,
    pub ustore_disk_bytes: f64,
    pub ustore_disk_bytes_per_stored_byte: f64,
    pub frontdoor_page_views_per_s: f64,
    pub login_logins_per_s: f64,
    pub mserv_lookups_per_s: f64,
    pub mserv_lookups_per_page_view: f64,
    pub mserv_lookups_per_message: f64,
    pub mserv_min_machines: u64,
    pub smtp_in_messages_per_s: f64,
}

/// The figures measured apart from the window's counters.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub cores: usize,
    pub source: String,
    /// Synced 4 KiB writes per second in the stores' file system.
    pub fsync_per_s: f64,
    pub filesystem_bytes: f64,
    /// Growth of the segments on disk and of the mail they hold, over setup and run.
    pub disk_growth_bytes: f64,
    pub stored_growth_bytes: f64,
    pub mserv_replicas: u64,
    /// The smallest CPU time `/proc` can show (one clock tick), in seconds.
    pub cpu_tick_secs: f64,
}

/// The `p` quantile of sorted latencies in microseconds, in milliseconds (0 when there are none).
fn percentile(sorted: &[u32], p: f64) -> f64 {
    runtime::metrics::percentile(sorted, p).map_or(0.0, |us| us as f64 / 1000.0)
}

/// Per-operation figures for samples that started within `[from, to)`.
pub fn op_figures(
    op: &str,
    samples: &[Sample],
    first_error: Option<&String>,
    from: f64,
    to: f64,
) -> OpFigures {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start >= from && s.start < to)
        .collect();
    let mut lat: Vec<u32> = window.iter().filter(|s| s.ok).map(|s| s.micros).collect();
    lat.sort_unstable();
    let errors = window.iter().filter(|s| !s.ok).count() as u64;
    OpFigures {
        op: op.to_string(),
        count: window.len() as u64,
        errors,
        per_s: lat.len() as f64 / (to - from).max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        first_error: if errors > 0 {
            first_error.cloned()
        } else {
            None
        },
    }
}

fn per(x: f64, n: f64) -> f64 {
    if n > 0.0 {
        x / n
    } else {
        0.0
    }
}

/// Derive the per-role figures and the capacity of one machine of each role.
pub fn derive(ops: Vec<OpFigures>, d: &Delta, x: &Extra) -> anyhow::Result<Report> {
    let count = |name: &str| {
        ops.iter()
            .find(|o| o.op == name)
            .map(|o| (o.count - o.errors) as f64)
            .unwrap_or(0.0)
    };
    let page_views: f64 = PAGE_OPS.iter().map(|o| count(o)).sum();
    let signins = count("signin");
    let cores = x.cores.max(1) as f64;

    let mut store_ops_by = d.by_label("ustore", "ustore_requests_total", "op");
    // What the measurement itself asks of the stores is no part of the load.
    for own in ["store_stats", "checkpoint", "ping"] {
        store_ops_by.remove(own);
    }
    let store_ops: f64 = store_ops_by.values().sum();
    let op_n = |n: &str| store_ops_by.get(n).copied().unwrap_or(0.0);
    let deliveries = op_n("deliver");
    // The store calls a delivery makes (smtp-in checks the account at RCPT), and the rest.
    let delivery_ops = deliveries + op_n("get_account");
    let page_ops = store_ops - delivery_ops;
    let smtp_msgs = d.metric("smtp-in", "smtp_messages_total", &[]);
    let front_requests = d.metric("frontdoor", "frontdoor_requests_total", &[]);
    let mserv_requests = d.metric("mserv", "mserv_requests_total", &[]);
    let mserv_lookups = d.metric("mserv", "mserv_requests_total", &[("op", "lookup")]);
    let miss = [("result", "miss")];
    let web_lookups = d.metric("frontdoor", "mserv_client_cache_total", &miss)
        + d.metric("login", "mserv_client_cache_total", &miss);
    let smtp_lookups = d.metric("smtp-in", "mserv_client_cache_total", &miss);

    for (what, n) in [
        ("page views", page_views),
        ("sign-ins", signins),
        ("store requests", store_ops),
        ("deliveries", deliveries),
        ("messages at smtp-in", smtp_msgs),
        ("index requests", mserv_requests),
    ] {
        if n <= 0.0 {
            bail!("no {what} in the measured window: run longer or with more load");
        }
    }
    if !d.restarted.is_empty() {
        bail!(
            "{} restarted during the measured window: its CPU time is lost",
            d.restarted.join(", ")
        );
    }

    // CPU ms per unit; a role that used less than a clock tick is charged one tick.
    let cpu_ms = |role: &str, n: f64| d.cpu(role).max(x.cpu_tick_secs) * 1000.0 / n;
    let role = |name: &str, unit: &str, n: f64| {
        let ms = cpu_ms(name, n);
        RoleFigures {
            role: name.to_string(),
            cpu_secs: d.cpu(name),
            unit: unit.to_string(),
            requests: n,
            cpu_ms_per_request: ms,
            capacity_per_s: cores * 1000.0 / ms,
        }
    };
    let front = role("frontdoor", "page views", page_views);
    let login = role("login", "sign-ins", signins);
    let smtp = role("smtp-in", "messages", smtp_msgs);
    let store = role("ustore", "store requests", store_ops);
    let index = role("mserv", "index requests", mserv_requests);

    let store_ops_per_page_view = page_ops.max(0.0) / page_views;
    let store_ops_per_delivery = delivery_ops / deliveries;
    // Every mutating store call is one synced batch, and concurrent batches share WAL syncs
    // (group commit): a delivery costs one batch's share of the syncs.
    let fsyncs_per_batch = per(d.wal_syncs, d.sync_writes);
    let fsyncs_per_delivery = fsyncs_per_batch;
    let other_batches = (d.sync_writes - deliveries).max(0.0);
    let store_page_views =
        cores * 1000.0 / (store.cpu_ms_per_request * store_ops_per_page_view.max(1e-9));
    let store_deliveries_cpu = cores * 1000.0 / (store.cpu_ms_per_request * store_ops_per_delivery);
    let store_deliveries_fsync = if fsyncs_per_delivery > 0.0 && x.fsync_per_s > 0.0 {
        x.fsync_per_s / fsyncs_per_delivery
    } else {
        f64::INFINITY
    };
    let disk_ratio = if x.disk_growth_bytes > 0.0 && x.stored_growth_bytes > 0.0 {
        x.disk_growth_bytes / x.stored_growth_bytes
    } else {
        bail!(
            "the stores grew by {} bytes on disk for {} bytes of mail: no ratio to measure",
            x.disk_growth_bytes,
            x.stored_growth_bytes
        );
    };

    let capacity = Capacity {
        ustore_page_views_per_s: store_page_views,
        ustore_deliveries_per_s: store_deliveries_cpu.min(store_deliveries_fsync),
        ustore_disk_bytes: x.filesystem_bytes,
        ustore_disk_bytes_per_stored_byte: disk_ratio,
        frontdoor_page_views_per_s: front.capacity_per_s,
        login_logins_per_s: login.capacity_per_s,
        mserv_lookups_per_s: index.capacity_per_s,
        mserv_lookups_per_page_view: web_lookups / page_views,
        mserv_lookups_per_message: smtp_lookups / smtp_msgs,
        mserv_min_machines: x.mserv_replicas.max(1),
        smtp_in_messages_per_s: smtp.capacity_per_s,
    };

    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), v);
    };
    put("window_secs", d.secs);
    put("cores", cores);
    put("page_views", page_views);
    put("page_views_per_s", page_views / d.secs.max(1e-9));
    put("signins", signins);
    put("deliveries", deliveries);
    put("smtp_in_messages", smtp_msgs);
    put("frontdoor_requests", front_requests);
    put("store_requests", store_ops);
    for (op, n) in &store_ops_by {
        put(&format!("store_requests_{op}"), *n);
    }
    put("store_requests_per_page_view", store_ops_per_page_view);
    put("store_requests_per_delivery", store_ops_per_delivery);
    put(
        "store_reads_per_page_view",
        per(d.block_cache_misses, page_views),
    );
    put(
        "store_block_cache_hits_per_page_view",
        per(d.block_cache_hits, page_views),
    );
    put("store_sync_writes", d.sync_writes);
    put("store_wal_syncs", d.wal_syncs);
    put("fsyncs_per_delivery", fsyncs_per_delivery);
    put(
        "fsyncs_per_page_view",
        per(other_batches * fsyncs_per_batch, page_views),
    );
    put("sync_writes_per_page_view", per(other_batches, page_views));
    put(
        "store_bytes_written_per_delivery",
        per(d.bytes_written, deliveries),
    );
    put("fsync_per_s_single_thread", x.fsync_per_s);
    put("store_deliveries_per_s_cpu", store_deliveries_cpu);
    if store_deliveries_fsync.is_finite() {
        put("store_deliveries_per_s_fsync", store_deliveries_fsync);
    }
    put("disk_growth_bytes", x.disk_growth_bytes);
    put("stored_growth_bytes", x.stored_growth_bytes);
    put("mserv_lookups", mserv_lookups);
    put("mserv_lookups_from_web", web_lookups);
    put("mserv_lookups_from_smtp", smtp_lookups);
    for r in [&front, &login, &smtp, &store, &index] {
        let key = r.role.replace('-', "_");
        put(&format!("cpu_ms_per_request_{key}"), r.cpu_ms_per_request);
        put(&format!("cpu_secs_{key}"), r.cpu_secs);
    }
    put(
        "cpu_ms_per_request_frontdoor_http",
        per(d.cpu("frontdoor") * 1000.0, front_requests),
    );
    put("cpu_secs_loadgen", d.self_cpu_secs);
    for o in &ops {
        put(&format!("{}_per_s", o.op), o.per_s);
        put(&format!("{}_p50_ms", o.op), o.p50_ms);
        put(&format!("{}_p99_ms", o.op), o.p99_ms);
        put(&format!("{}_errors", o.op), o.errors as f64);
    }
    Ok(Report {
        source: x.source.clone(),
        cores: x.cores,
        window_secs: d.secs,
        ops,
        roles: vec![front, login, smtp, store, index],
        measured: m,
        capacity,
        restarted: d.restarted.clone(),
    })
}

/// A TOML number with four significant digits (always a float).
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "0.0".into();
    }
    if x == 0.0 {
        return "0.0".into();
    }
    let digits = (3 - x.abs().log10().floor() as i32).max(1) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The capacity profile, in the format `hcu-sizing` reads.
pub fn to_toml(r: &Report) -> String {
    let c = &r.capacity;
    let mut t = String::new();
    t.push_str(
        "# The capacity of ONE machine of each role, measured by `loadgen` on this machine\n",
    );
    t.push_str("# (CPU per request × cores; store I/O per page view and per delivery).\n\n");
    t.push_str(&format!(
        "[meta]\nsource = {}\ncores_per_machine = {}\n\n",
        quoted(&r.source),
        r.cores
    ));
    t.push_str(&format!(
        "[ustore]\npage_views_per_s = {}\ndeliveries_per_s = {}\ndisk_bytes = {}\ndisk_bytes_per_stored_byte = {}\n\n",
        num(c.ustore_page_views_per_s),
        num(c.ustore_deliveries_per_s),
        num(c.ustore_disk_bytes),
        num(c.ustore_disk_bytes_per_stored_byte)
    ));
    t.push_str(&format!(
        "[frontdoor]\npage_views_per_s = {}\n\n",
        num(c.frontdoor_page_views_per_s)
    ));
    t.push_str(&format!(
        "[login]\nlogins_per_s = {}\n\n",
        num(c.login_logins_per_s)
    ));
    t.push_str(&format!(
        "[mserv]\nlookups_per_s = {}\nlookups_per_page_view = {}\nlookups_per_message = {}\nmin_machines = {}\n\n",
        num(c.mserv_lookups_per_s),
        num(c.mserv_lookups_per_page_view),
        num(c.mserv_lookups_per_message),
        c.mserv_min_machines
    ));
    t.push_str(&format!(
        "[\"smtp-in\"]\nmessages_per_s = {}\n\n",
        num(c.smtp_in_messages_per_s)
    ));
    t.push_str("[measured]\n");
    for (k, v) in &r.measured {
        if v.is_finite() {
            t.push_str(&format!("{k} = {}\n", num(*v)));
        }
    }
    t
}

/// The human report: one table per operation, one per role, then the capacities.
pub fn table(r: &Report) -> String {
    let mut t = format!(
        "measured window {:.1} s on {} cores\n\n{:<12} {:>8} {:>7} {:>9} {:>9} {:>9}\n",
        r.window_secs, r.cores, "OPERATION", "COUNT", "ERRORS", "PER_S", "P50_MS", "P99_MS"
    );
    for o in &r.ops {
        t.push_str(&format!(
            "{:<12} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1}\n",
            o.op, o.count, o.errors, o.per_s, o.p50_ms, o.p99_ms
        ));
    }
    for o in &r.ops {
        if let Some(e) = &o.first_error {
            t.push_str(&format!("first {} error: {e}\n", o.op));
        }
    }
    t.push_str(&format!(
        "\n{:<10} {:>8} {:>10} {:<15} {:>11} {:>12}\n",
        "ROLE", "CPU_S", "REQUESTS", "(UNIT)", "CPU_MS/REQ", "ONE_MACHINE/S"
    ));
    for ro in &r.roles {
        t.push_str(&format!(
            "{:<10} {:>8.2} {:>10.0} {:<15} {:>11.3} {:>12.0}\n",
            ro.role, ro.cpu_secs, ro.requests, ro.unit, ro.cpu_ms_per_request, ro.capacity_per_s
        ));
    }
    let m = |k: &str| r.measured.get(k).copied().unwrap_or(0.0);
    let c = &r.capacity;
    t.push_str(&format!(
        "\nstore: {:.2} requests and {:.3} block reads per page view; {:.2} fsyncs per delivery; \
         {:.2} bytes on disk per stored byte\n",
        m("store_requests_per_page_view"),
        m("store_reads_per_page_view"),
        m("fsyncs_per_delivery"),
        c.ustore_disk_bytes_per_stored_byte
    ));
    t.push_str(&format!(
        "one store: {:.0} page views/s, {:.0} deliveries/s (CPU {:.0}, fsync {:.0}); \
         index: {:.3} lookups per page view, {:.3} per message\n",
        c.ustore_page_views_per_s,
        c.ustore_deliveries_per_s,
        m("store_deliveries_per_s_cpu"),
        m("store_deliveries_per_s_fsync"),
        c.mserv_lookups_per_page_view,
        c.mserv_lookups_per_message
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_toml_floats() {
        assert_eq!(num(400.0), "400.0");
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(1234.5678), "1234.6");
        assert_eq!(num(2.0e12), "2000000000000.0");
        assert_eq!(num(f64::NAN), "0.0");
        for x in [400.0, 0.123456, 1234.5678, 2.0e12, 0.0001234] {
            let v: toml::Value = toml::from_str(&format!("x = {}", num(x))).unwrap();
            assert!(v["x"].is_float(), "{x}");
        }
    }

    #[test]
    fn percentiles_and_windows() {
        let s = |start: f64, ms: u32, ok: bool| Sample {
            start,
            micros: ms * 1000,
            ok,
            bytes: 0,
        };
        let samples = vec![
            s(0.5, 100, true),
            s(1.0, 1, true),
            s(1.5, 2, true),
            s(2.0, 3, false),
            s(2.5, 4, true),
            s(3.5, 100, true),
        ];
        let f = op_figures("x", &samples, Some(&"boom".to_string()), 1.0, 3.0);
        assert_eq!((f.count, f.errors), (4, 1));
        assert_eq!(f.p50_ms, 2.0);
        assert_eq!(f.p99_ms, 4.0);
        assert!((f.per_s - 1.5).abs() < 1e-9);
        assert_eq!(f.first_error.as_deref(), Some("boom"));
    }
}
