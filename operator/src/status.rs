//! `mailctl status`: every process of the HCU, from its own health report.
//!
//! A process that answers is never shown as failed: one shedding load says `overloaded` (its
//! `/healthz` still answers 200), one that does not answer at all is `down`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::endpoints::Endpoints;

/// One row per process (the supervisor first): name, role, state, raft role, load, operations
/// shed so far, version.
pub async fn collect(e: &Endpoints) -> Vec<Value> {
    let mut targets = vec![(
        "mailctl-up".to_string(),
        "mailctl".to_string(),
        e.supervisor_admin,
    )];
    targets.extend(
        e.processes
            .iter()
            .map(|p| (p.name.clone(), p.role.clone(), p.admin)),
    );
    let checks = targets.into_iter().map(|(name, role, admin)| async move {
        let answer = runtime::http_client::get(admin, "/healthz", Duration::from_secs(2)).await;
        let report = answer.as_ref().ok().and_then(|a| a.json().ok());
        let state = match (&answer, &report) {
            (Err(_), _) => "down".to_string(),
            (Ok(_), Some(r)) => r["status"].as_str().unwrap_or("unknown").to_string(),
            (Ok(a), None) => format!("answered {}", a.status),
        };
        let r = report.unwrap_or(Value::Null);
        json!({
            "name": name,
            "role": role,
            "admin": admin.to_string(),
            "up": answer.is_ok(),
            "state": state,
            "raft_role": r.get("raft_role").cloned().unwrap_or(Value::Null),
            "in_flight": r.get("in_flight").cloned().unwrap_or(Value::Null),
            "max_in_flight": r.get("max_in_flight").cloned().unwrap_or(Value::Null),
            "shed_total": r.get("shed_total").cloned().unwrap_or(Value::Null),
            "version": r.get("version").cloned().unwrap_or(Value::Null),
            "pid": r.get("pid").cloned().unwrap_or(Value::Null),
        })
    });
    let mut rows = Vec::new();
    for c in checks {
        rows.push(c.await);
    }
    rows
}

/// The rows as a table.
pub fn table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:<11} {:<10} {:>9} {:>8} {:<8} {:>8}\n",
        "PROCESS", "ROLE", "STATE", "RAFT", "LOAD", "SHED", "VERSION", "PID"
    );
    for r in rows {
        let load = match (r["in_flight"].as_u64(), r["max_in_flight"].as_u64()) {
            (Some(i), Some(m)) if m > 0 => format!("{i}/{m}"),
            (Some(i), _) => i.to_string(),
            _ => "-".into(),
        };
        let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
        let shed = r["shed_total"]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or("-".into());
        let pid = r["pid"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or("-".into());
        out.push_str(&format!(
            "{:<14} {:<10} {:<11} {:<10} {:>9} {:>8} {:<8} {:>8}\n",
            s(&r["name"]),
            s(&r["role"]),
            s(&r["state"]),
            s(&r["raft_role"]),
            load,
            shed,
            s(&r["version"]),
            pid
        ));
    }
    out
}
