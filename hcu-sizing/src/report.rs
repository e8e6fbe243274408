//! The plan as a table for people and as JSON for programs.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::model::{Constraint, Plan, ROLES};
use crate::profile::{Capacity, Workload};

/// A whole number with thousands separators: `47,000,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A figure with a precision that suits its size: `3.50`, `56.0`, `173`, `0.190`, `12,500`.
pub fn figure(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        x.to_string()
    } else if x == x.round() && a < 1e15 {
        let s = thousands(a as u64);
        if x < 0.0 {
            format!("-{s}")
        } else {
            s
        }
    } else if a >= 1000.0 {
        let s = thousands(a.round() as u64);
        if x < 0.0 {
            format!("-{s}")
        } else {
            s
        }
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.001 {
        format!("{x:.3}")
    } else {
        format!("{x:.3e}")
    }
}

/// Bytes in decimal units: `1.13 TB`.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn percent(u: f64) -> String {
    if u > 0.0 && u < 0.001 {
        format!("{:.3}%", u * 100.0)
    } else {
        format!("{:.1}%", u * 100.0)
    }
}

/// Dollars: cents when a dollar or more, else three significant digits (`$0.00104`).
pub fn dollars(x: f64) -> String {
    if x >= 1.0 || x == 0.0 {
        format!("${x:.2}")
    } else {
        let digits = (2 - x.log10().floor() as i32).max(2) as usize;
        format!("${x:.digits$}")
    }
}

/// The plan for people: one row per role, then the HCU, disk, cost, bottleneck and measurements.
pub fn table(plan: &Plan, w: &Workload, c: &Capacity) -> String {
    let h = &plan.hcu;
    let l = &h.load;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "workload: {} users, {} sessions at peak, {} page views per session-hour, {} messages per user-day, peak/mean {}",
        thousands(plan.users as u64),
        figure(w.peak_sessions),
        figure(w.page_views_per_session_hour),
        figure(w.messages_per_user_day),
        figure(w.peak_to_mean)
    );
    if let Some(source) = &c.source {
        let _ = writeln!(o, "capacity: {source}");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<10} {:>8} {:>9}  {:<28} {:>11}  {:>11}",
        "role", "per HCU", "service", "peak load per HCU", "per machine", "utilisation"
    );
    let binding = h
        .store_limits
        .iter()
        .find(|s| Some(s.constraint) == h.store_constraint);
    for role in ROLES {
        let machines = h.machines.get(role).unwrap_or(0);
        let service = plan.service_machines.get(role).unwrap_or(0);
        let util = h.utilisation.get(role).unwrap_or(0.0);
        let (load, capacity, note) = match role {
            "ustore" => match binding.map(|b| b.constraint) {
                Some(Constraint::PageIo) | None => (
                    format!("{} page views/s", figure(l.page_views_per_s)),
                    c.ustore.page_views_per_s,
                    h.store_constraint.map_or("", |k| k.name()),
                ),
                Some(Constraint::Deliveries) => (
                    format!("{} deliveries/s", figure(l.deliveries_per_s)),
                    c.ustore.deliveries_per_s,
                    "deliveries",
                ),
                Some(Constraint::Disk) => (
                    format!("{} on disk", bytes(l.disk_bytes)),
                    c.ustore.disk_bytes,
                    "disk",
                ),
                Some(Constraint::Backup) => {
                    let b = c
                        .ustore
                        .backup
                        .map_or(0.0, |b| b.bytes_per_s * b.window_hours * 3600.0);
                    (format!("{} to back up", bytes(l.stored_bytes)), b, "backup")
                }
            },
            "frontdoor" => (
                format!("{} page views/s", figure(l.page_views_per_s)),
                c.frontdoor_page_views_per_s,
                "",
            ),
            "login" => (
                format!("{} sign-ins/s", figure(l.sign_ins_per_s)),
                c.login_logins_per_s,
                "",
            ),
            "mserv" => (
                format!("{} lookups/s", figure(l.mserv_lookups_per_s)),
                c.mserv.lookups_per_s,
                "",
            ),
            _ => (
                format!("{} messages/s", figure(l.deliveries_per_s)),
                c.smtp_in_messages_per_s,
                "",
            ),
        };
        let capacity = if role == "ustore" && matches!(note, "disk" | "backup") {
            bytes(capacity)
        } else {
            figure(capacity)
        };
        let row = format!(
            "{:<10} {:>8} {:>9}  {:<28} {:>11}  {:>11}  {note}",
            role,
            machines,
            thousands(service),
            load,
            capacity,
            percent(util)
        );
        let _ = writeln!(o, "{}", row.trim_end());
    }
    let _ = writeln!(
        o,
        "{:<10} {:>8} {:>9}",
        "total",
        plan.machines_per_hcu,
        thousands(plan.total_machines)
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "users per HCU       {} (limited by {})",
        thousands(plan.users_per_hcu),
        plan.limited_by.name()
    );
    let hcus = if plan.last_hcu_users == plan.users_per_hcu {
        format!(
            "{} for {} users",
            thousands(plan.hcus),
            thousands(plan.users as u64)
        )
    } else {
        format!(
            "{} for {} users ({} full, the last with {} users)",
            thousands(plan.hcus),
            thousands(plan.users as u64),
            thousands(plan.hcus - 1),
            thousands(plan.last_hcu_users)
        )
    };
    let _ = writeln!(o, "HCUs                {hcus}");
    let _ = writeln!(
        o,
        "disk per store      {} of {} usable ({}), {} of mail",
        bytes(l.disk_bytes),
        bytes(c.ustore.disk_bytes),
        percent(l.disk_bytes / c.ustore.disk_bytes),
        bytes(l.stored_bytes)
    );
    let limits: Vec<String> = h
        .store_limits
        .iter()
        .map(|s| {
            let max = s
                .max_users
                .map_or("unbounded".to_string(), |m| thousands(m.floor() as u64));
            format!("{} {max} ({})", s.constraint.name(), percent(s.utilisation))
        })
        .collect();
    let _ = writeln!(
        o,
        "ustore limits       users one store takes: {}",
        limits.join(", ")
    );
    match (plan.cost_per_user_year, plan.ustore_cost_share) {
        (Some(cost), share) => {
            let share = share.map_or(String::new(), |s| {
                format!(" ({} of it in the ustore and its disk)", percent(s))
            });
            let _ = writeln!(o, "cost per user-year  {}{share}", dollars(cost));
        }
        (None, _) => {
            let _ = writeln!(
                o,
                "cost per user-year  not priced (the capacity profile has no [prices])"
            );
        }
    }
    let _ = writeln!(o, "bottleneck          {}", plan.bottleneck);
    if !c.measured.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "measured (shown only; the model does not use these):");
        let width = c.measured.keys().map(|k| k.len()).max().unwrap_or(0);
        for (name, value) in &c.measured {
            let _ = writeln!(o, "  {name:<width$}  {value}");
        }
    }
    o
}

/// The plan for programs: `users_per_hcu`, `machines` (per HCU), `bottleneck`, `hcus`,
/// `total_machines` (whole service), `disk_bytes_per_store`, `cost_per_user_year` (null without
/// prices), `utilisation`, `measured` and the rest of the model's figures.
pub fn json(plan: &Plan, w: &Workload, c: &Capacity) -> Value {
    let h = &plan.hcu;
    json!({
        "users": plan.users,
        "users_per_hcu": plan.users_per_hcu,
        "users_per_hcu_limited_by": plan.limited_by,
        "hcus": plan.hcus,
        "last_hcu_users": plan.last_hcu_users,
        "machines": h.machines,
        "machines_per_hcu": plan.machines_per_hcu,
        "service_machines": plan.service_machines,
        "total_machines": plan.total_machines,
        "utilisation": h.utilisation,
        "bottleneck": plan.bottleneck,
        "ustore_limits": h.store_limits,
        "peak_load_per_hcu": h.load,
        "disk_bytes_per_store": h.load.disk_bytes,
        "disk_capacity_bytes_per_store": c.ustore.disk_bytes,
        "stored_bytes_per_store": h.load.stored_bytes,
        "cost_per_user_year": plan.cost_per_user_year,
        "ustore_cost_share": plan.ustore_cost_share,
        "workload": w,
        "capacity_source": c.source,
        "measured": if c.measured.is_empty() { Value::Null } else { json!(c.measured) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(47_000_000), "47,000,000");
        assert_eq!(figure(3.5), "3.50");
        assert_eq!(figure(55.0), "55");
        assert_eq!(figure(169.65), "170");
        assert_eq!(figure(0.19), "0.190");
        assert_eq!(figure(12_500.4), "12,500");
        assert_eq!(bytes(1.10785e12), "1.11 TB");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(dollars(1.6175), "$1.62");
        assert_eq!(dollars(0.001083), "$0.00108");
    }
}
