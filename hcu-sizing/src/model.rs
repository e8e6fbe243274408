//! The capacity model: how many users one ustore takes, and how many machines each role needs.
//!
//! All rates are at peak. For an HCU of `n` users, with `w` the workload and `c` the capacities:
//!
//! ```text
//! sessions       = w.peak_sessions × n / w.users
//! page views/s   = sessions × w.page_views_per_session_hour / 3600
//! sign-ins/s     = sessions / (w.session_minutes × 60)
//! deliveries/s   = n × w.messages_per_user_day / 86400 × w.peak_to_mean
//! lookups/s      = page views/s × lookups_per_page_view + deliveries/s × lookups_per_message
//!                  + sign-ins/s          (login routes every sign-in through the index)
//! stored bytes   = n × w.stored_bytes_per_user
//! disk bytes     = stored bytes × c.ustore.disk_bytes_per_stored_byte
//! ```
//!
//! Users per HCU is the largest whole `n` (and never more than the service's users) for which
//! every ustore constraint holds: page views/s <= `page_views_per_s` (page I/O),
//! deliveries/s <= `deliveries_per_s`, disk bytes <= `disk_bytes`, and, when a backup is given,
//! stored bytes <= `backup_bytes_per_s × backup_window_hours × 3600`. Every other role gets
//! `max(1, ceil(load / capacity))` machines for that HCU (mserv at least `min_machines`).

use serde::{Serialize, Serializer};

use crate::profile::{Capacity, Workload};
use crate::Error;

/// The roles of an HCU, in the order they are shown.
pub const ROLES: [&str; 5] = ["ustore", "frontdoor", "login", "mserv", "smtp-in"];

/// One value per role.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PerRole<T> {
    pub ustore: T,
    pub frontdoor: T,
    pub login: T,
    pub mserv: T,
    #[serde(rename = "smtp-in")]
    pub smtp_in: T,
}

impl<T: Copy> PerRole<T> {
    /// `(role name, value)` in the order of [`ROLES`].
    pub fn entries(&self) -> [(&'static str, T); 5] {
        [
            ("ustore", self.ustore),
            ("frontdoor", self.frontdoor),
            ("login", self.login),
            ("mserv", self.mserv),
            ("smtp-in", self.smtp_in),
        ]
    }

    /// The value of the role named `role`, if there is one.
    pub fn get(&self, role: &str) -> Option<T> {
        self.entries()
            .into_iter()
            .find(|(r, _)| *r == role)
            .map(|(_, v)| v)
    }
}

/// A resource that bounds how many users one ustore takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// Page views per second (the survey's USTORE I/O limit).
    PageIo,
    /// Message copies made durable per second.
    Deliveries,
    /// Mail disk.
    Disk,
    /// Everything stored must be backed up within the window.
    Backup,
}

impl Constraint {
    /// How the constraint is named in output.
    pub fn name(self) -> &'static str {
        match self {
            Constraint::PageIo => "page I/O",
            Constraint::Deliveries => "deliveries",
            Constraint::Disk => "disk",
            Constraint::Backup => "backup",
        }
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The load an HCU of `users` users puts on its roles at peak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Load {
    pub users: f64,
    pub sessions: f64,
    pub page_views_per_s: f64,
    pub sign_ins_per_s: f64,
    pub deliveries_per_s: f64,
    pub mserv_lookups_per_s: f64,
    /// Incoming mail at peak, bytes per second (shown; no role is limited by it here).
    pub incoming_bytes_per_s: f64,
    pub stored_bytes: f64,
    pub disk_bytes: f64,
}

/// The load of an HCU of `users` users.
pub fn load(w: &Workload, c: &Capacity, users: f64) -> Load {
    let sessions = w.peak_sessions * users / w.users;
    let page_views_per_s = sessions * w.page_views_per_session_hour / 3600.0;
    let sign_ins_per_s = sessions / (w.session_minutes * 60.0);
    let deliveries_per_s = users * w.messages_per_user_day / 86400.0 * w.peak_to_mean;
    let mserv_lookups_per_s = page_views_per_s * c.mserv.lookups_per_page_view
        + deliveries_per_s * c.mserv.lookups_per_message
        + sign_ins_per_s;
    let stored_bytes = users * w.stored_bytes_per_user;
    Load {
        users,
        sessions,
        page_views_per_s,
        sign_ins_per_s,
        deliveries_per_s,
        mserv_lookups_per_s,
        incoming_bytes_per_s: deliveries_per_s * w.mean_message_bytes,
        stored_bytes,
        disk_bytes: stored_bytes * c.ustore.disk_bytes_per_stored_byte,
    }
}

/// One ustore constraint at the planned HCU size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoreLimit {
    pub constraint: Constraint,
    /// The most users the store takes under this constraint alone (`None`: unbounded, the
    /// workload puts no such load on it).
    pub max_users: Option<f64>,
    /// Load over capacity at the planned HCU size.
    pub utilisation: f64,
}

/// Every ustore constraint for an HCU of `users` users.
pub fn store_limits(w: &Workload, c: &Capacity, users: f64) -> Vec<StoreLimit> {
    let one = load(w, c, 1.0);
    let at = load(w, c, users);
    let u = &c.ustore;
    let bound = |capacity: f64, per_user: f64| (per_user > 0.0).then(|| capacity / per_user);
    let mut limits = vec![
        StoreLimit {
            constraint: Constraint::PageIo,
            max_users: bound(u.page_views_per_s, one.page_views_per_s),
            utilisation: at.page_views_per_s / u.page_views_per_s,
        },
        StoreLimit {
            constraint: Constraint::Deliveries,
            max_users: bound(u.deliveries_per_s, one.deliveries_per_s),
            utilisation: at.deliveries_per_s / u.deliveries_per_s,
        },
        StoreLimit {
            constraint: Constraint::Disk,
            max_users: bound(u.disk_bytes, one.disk_bytes),
            utilisation: at.disk_bytes / u.disk_bytes,
        },
    ];
    if let Some(b) = u.backup {
        let copyable = b.bytes_per_s * b.window_hours * 3600.0;
        limits.push(StoreLimit {
            constraint: Constraint::Backup,
            max_users: bound(copyable, one.stored_bytes),
            utilisation: at.stored_bytes / copyable,
        });
    }
    limits
}

/// Machines for a load: `max(min, ceil(load / capacity))`. A hair below a whole number is that
/// number, so that floating-point noise never adds a machine.
pub fn machines_for(load: f64, capacity: f64, min: f64) -> u64 {
    let exact = load / capacity;
    let near = exact.round();
    let whole = if (exact - near).abs() <= 1e-9 * near.max(1.0) {
        near
    } else {
        exact.ceil()
    };
    whole.max(min).max(1.0) as u64
}

/// One HCU sized for its users.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hcu {
    pub load: Load,
    pub machines: PerRole<u64>,
    /// Load over the role's capacity at peak; the ustore's is its highest constraint.
    pub utilisation: PerRole<f64>,
    /// The ustore constraint with the highest utilisation (`None` if the store has no load).
    pub store_constraint: Option<Constraint>,
    pub store_limits: Vec<StoreLimit>,
}

/// Sizes every role of an HCU holding `users` users.
pub fn size_hcu(w: &Workload, c: &Capacity, users: f64) -> Hcu {
    let l = load(w, c, users);
    let limits = store_limits(w, c, users);
    let binding = limits.iter().filter(|s| s.utilisation > 0.0).fold(
        None::<&StoreLimit>,
        |best, s| match best {
            Some(b) if b.utilisation >= s.utilisation => Some(b),
            _ => Some(s),
        },
    );
    let machines = PerRole {
        ustore: 1,
        frontdoor: machines_for(l.page_views_per_s, c.frontdoor_page_views_per_s, 1.0),
        login: machines_for(l.sign_ins_per_s, c.login_logins_per_s, 1.0),
        mserv: machines_for(
            l.mserv_lookups_per_s,
            c.mserv.lookups_per_s,
            c.mserv.min_machines,
        ),
        smtp_in: machines_for(l.deliveries_per_s, c.smtp_in_messages_per_s, 1.0),
    };
    let utilisation = PerRole {
        ustore: binding.map_or(0.0, |b| b.utilisation),
        frontdoor: l.page_views_per_s / (machines.frontdoor as f64 * c.frontdoor_page_views_per_s),
        login: l.sign_ins_per_s / (machines.login as f64 * c.login_logins_per_s),
        mserv: l.mserv_lookups_per_s / (machines.mserv as f64 * c.mserv.lookups_per_s),
        smtp_in: l.deliveries_per_s / (machines.smtp_in as f64 * c.smtp_in_messages_per_s),
    };
    Hcu {
        load: l,
        machines,
        utilisation,
        store_constraint: binding.map(|b| b.constraint),
        store_limits: limits,
    }
}

/// What fixed the number of users per HCU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A ustore constraint.
    Store(Constraint),
    /// The whole service fits in one HCU.
    ServiceSize,
}

impl Limit {
    /// How the limit is named in output.
    pub fn name(self) -> String {
        match self {
            Limit::Store(c) => format!("ustore {}", c.name()),
            Limit::ServiceSize => "the service's size: all its users fit in one HCU".to_string(),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The sizing of the whole service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Accounts in the whole service.
    pub users: f64,
    pub users_per_hcu: u64,
    pub limited_by: Limit,
    /// HCUs for all the users: `ceil(users / users_per_hcu)`.
    pub hcus: u64,
    /// Users in the last HCU (equal to `users_per_hcu` when it is full).
    pub last_hcu_users: u64,
    /// A full HCU.
    pub hcu: Hcu,
    /// Machines per role for the whole service: the full HCUs, plus the last one sized for its
    /// own users.
    pub service_machines: PerRole<u64>,
    pub machines_per_hcu: u64,
    pub total_machines: u64,
    /// Dollars per user-year of a full HCU, when the capacity profile has prices.
    pub cost_per_user_year: Option<f64>,
    /// The ustore's share (machine and disk) of that cost.
    pub ustore_cost_share: Option<f64>,
    /// The role with the highest utilisation (the ustore when tied), e.g. `ustore (page I/O)`.
    pub bottleneck: String,
}

/// Sizes the service: users per HCU, machines per role, cost and bottleneck.
pub fn plan(w: &Workload, c: &Capacity) -> Result<Plan, Error> {
    let users = w.users.round();
    let limits = store_limits(w, c, 1.0);
    let tightest = limits
        .iter()
        .filter_map(|s| s.max_users.map(|m| (s.constraint, m)))
        .fold(None::<(Constraint, f64)>, |best, (k, m)| match best {
            Some((_, b)) if b <= m => best,
            _ => Some((k, m)),
        });
    let (users_per_hcu, limited_by) = match tightest {
        Some((k, m)) if m <= users => {
            // A hair below a whole number is that number (0.4 / 0.001 may be 399.99999999999994).
            let floor = (m * (1.0 + 1e-12) + 1e-9).floor().min(users);
            if floor < 1.0 {
                return Err(Error::Impossible(format!(
                    "one ustore cannot take a single user: its {} allows {} users",
                    k.name(),
                    crate::report::figure(m)
                )));
            }
            (floor, Limit::Store(k))
        }
        _ => (users, Limit::ServiceSize),
    };
    let hcu = size_hcu(w, c, users_per_hcu);
    let full = (users / users_per_hcu).floor();
    let rest = users - full * users_per_hcu;
    let last = (rest > 0.0).then(|| size_hcu(w, c, rest));
    let whole = |f: fn(&PerRole<u64>) -> u64| {
        (full as u64)
            .saturating_mul(f(&hcu.machines))
            .saturating_add(last.as_ref().map_or(0, |h| f(&h.machines)))
    };
    let service_machines = PerRole {
        ustore: whole(|m| m.ustore),
        frontdoor: whole(|m| m.frontdoor),
        login: whole(|m| m.login),
        mserv: whole(|m| m.mserv),
        smtp_in: whole(|m| m.smtp_in),
    };
    let sum = |m: &PerRole<u64>| {
        m.entries()
            .iter()
            .fold(0u64, |t, (_, n)| t.saturating_add(*n))
    };
    let (cost_per_user_year, ustore_cost_share) = match &c.prices {
        None => (None, None),
        Some(p) => {
            let m = &hcu.machines;
            let ustore =
                m.ustore as f64 * p.ustore + hcu.load.disk_bytes / 1e9 * p.disk_per_gb_year;
            let total = ustore
                + m.frontdoor as f64 * p.frontdoor
                + m.login as f64 * p.login
                + m.mserv as f64 * p.mserv
                + m.smtp_in as f64 * p.smtp_in;
            (
                Some(total / users_per_hcu),
                (total > 0.0).then(|| ustore / total),
            )
        }
    };
    let (role, _) = hcu.utilisation.entries().into_iter().fold(
        ("ustore", f64::NEG_INFINITY),
        |(br, bu), (r, u)| {
            if u > bu + 1e-12 {
                (r, u)
            } else {
                (br, bu)
            }
        },
    );
    let bottleneck = match (role, hcu.store_constraint) {
        ("ustore", Some(k)) => format!("ustore ({})", k.name()),
        _ => role.to_string(),
    };
    Ok(Plan {
        users,
        users_per_hcu: users_per_hcu as u64,
        limited_by,
        hcus: (full as u64).saturating_add(u64::from(last.is_some())),
        last_hcu_users: if rest > 0.0 {
            rest as u64
        } else {
            users_per_hcu as u64
        },
        machines_per_hcu: sum(&hcu.machines),
        total_machines: sum(&service_machines),
        hcu,
        service_machines,
        cost_per_user_year,
        ustore_cost_share,
        bottleneck,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_round_up_but_ignore_float_noise() {
        // 56 / 3.5 = 16 exactly; floating point may land a hair above it.
        assert_eq!(machines_for(56.0, 3.5, 1.0), 16);
        assert_eq!(machines_for(16.000_000_000_01, 1.0, 1.0), 16);
        // 16.01 needs a 17th machine; no load still needs one; min_machines wins when larger.
        assert_eq!(machines_for(16.01, 1.0, 1.0), 17);
        assert_eq!(machines_for(0.0, 1.0, 1.0), 1);
        assert_eq!(machines_for(0.3, 1.0, 3.0), 3);
    }

    #[test]
    fn constraint_and_limit_names() {
        assert_eq!(Constraint::PageIo.name(), "page I/O");
        assert_eq!(Limit::Store(Constraint::Backup).name(), "ustore backup");
        let per = PerRole {
            ustore: 1,
            frontdoor: 2,
            login: 3,
            mserv: 4,
            smtp_in: 5,
        };
        assert_eq!(per.get("smtp-in"), Some(5));
        assert_eq!(per.get("graphics"), None);
        let json = serde_json::to_value(per).expect("serializes");
        assert_eq!(json["smtp-in"], 5);
    }
}
