//! Process health as `/healthz` reports it: starting, ok, overloaded (shedding load, not failed) or draining.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use serde_json::{json, Value};

use crate::admission::Admission;

/// What the process is doing. `Ok` and `Overloaded` serve; `Starting` and `Draining` do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Ok,
    Overloaded,
    Draining,
}

impl State {
    /// Whether a load balancer should send work here.
    pub fn is_serving(self) -> bool {
        matches!(self, State::Ok | State::Overloaded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ok => "ok",
            State::Overloaded => "overloaded",
            State::Draining => "draining",
        }
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// The health of one process, shared by the role and the admin server.
#[derive(Debug)]
pub struct Health {
    role: String,
    phase: AtomicU8,
    admission: OnceLock<Arc<Admission>>,
    info: Mutex<BTreeMap<String, Value>>,
}

impl Health {
    pub fn new(role: &str) -> Arc<Self> {
        Arc::new(Health {
            role: role.to_owned(),
            phase: AtomicU8::new(STARTING),
            admission: OnceLock::new(),
            info: Mutex::new(BTreeMap::new()),
        })
    }

    /// The admission control whose load `/healthz` shows. Only the first call has an effect.
    pub fn set_admission(&self, a: Arc<Admission>) {
        if self.admission.set(a).is_err() {
            tracing::warn!(role = %self.role, "health already has an admission control; ignoring another");
        }
    }

    /// Starting → ok. Does nothing once draining.
    pub fn set_ready(&self) {
        let _ = self
            .phase
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Stop reporting healthy; there is no way back.
    pub fn set_draining(&self) {
        self.phase.store(DRAINING, Ordering::Release);
    }

    /// The current state; `Ok` reads as `Overloaded` while the admission control says so.
    pub fn state(&self) -> State {
        match self.phase.load(Ordering::Acquire) {
            STARTING => State::Starting,
            READY if self.admission.get().is_some_and(|a| a.overloaded()) => State::Overloaded,
            READY => State::Ok,
            _ => State::Draining,
        }
    }

    /// Add or replace an extra field of the report (store name, raft role, ...).
    /// The standard fields keep their meaning: an extra field with one of their names is not shown.
    pub fn set_info(&self, key: &str, value: Value) {
        self.info_map().insert(key.to_owned(), value);
    }

    /// The `/healthz` body: `role`, `version`, `pid`, `status`, `in_flight`, `max_in_flight`, `shed_total`,
    /// then the extra fields. Without an admission control the three load fields are 0.
    pub fn report(&self) -> Value {
        let (in_flight, max_in_flight, shed_total) = match self.admission.get() {
            Some(a) => (a.in_flight(), a.max_in_flight(), a.shed_total()),
            None => (0, 0, 0),
        };
        let mut report = serde_json::Map::new();
        for (key, value) in self.info_map().iter() {
            report.insert(key.clone(), value.clone());
        }
        let standard = json!({
            "role": self.role,
            "version": crate::VERSION,
            "pid": std::process::id(),
            "status": self.state(),
            "in_flight": in_flight,
            "max_in_flight": max_in_flight,
            "shed_total": shed_total,
        });
        if let Value::Object(standard) = standard {
            report.extend(standard);
        }
        Value::Object(report)
    }

    fn info_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        // Every update is a single insert, so the map is consistent even after a panic elsewhere.
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let h = Health::new("ustore");
        assert_eq!(h.state(), State::Starting);
        h.set_ready();
        assert_eq!(h.state(), State::Ok);
        h.set_draining();
        assert_eq!(h.state(), State::Draining);
        h.set_ready();
        assert_eq!(h.state(), State::Draining, "draining is final");
        assert!(!State::Draining.is_serving() && State::Overloaded.is_serving());
    }

    #[test]
    fn overloaded_follows_admission() {
        let h = Health::new("ustore");
        let adm = Admission::new(1);
        h.set_admission(Arc::clone(&adm));
        assert_eq!(h.state(), State::Starting, "not ready yet");
        h.set_ready();
        assert_eq!(h.state(), State::Ok);
        let permit = adm.try_acquire();
        assert!(permit.is_some());
        assert_eq!(h.state(), State::Overloaded);
        h.set_draining();
        assert_eq!(h.state(), State::Draining);
    }

    #[test]
    fn report_fields() {
        let h = Health::new("mserv");
        let adm = Admission::new(8);
        h.set_admission(Arc::clone(&adm));
        let _p = adm.try_acquire();
        h.set_info("raft_role", json!("leader"));
        h.set_info("status", json!("hijacked"));
        h.set_ready();
        let r = h.report();
        assert_eq!(r["role"], "mserv");
        assert_eq!(r["version"], crate::VERSION);
        assert_eq!(r["pid"], std::process::id());
        assert_eq!(r["status"], "ok");
        assert_eq!(r["in_flight"], 1);
        assert_eq!(r["max_in_flight"], 8);
        assert_eq!(r["shed_total"], 0);
        assert_eq!(r["raft_role"], "leader");
        assert_eq!(State::Overloaded.as_str(), "overloaded");
        assert_eq!(serde_json::to_value(State::Draining).unwrap(), "draining");
    }
}
