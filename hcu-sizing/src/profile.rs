//! The workload and capacity profiles: TOML parsing and validation with messages a person can act on.
//!
//! Profiles are read into a `toml::Table` and taken apart by hand rather than through serde derive,
//! so that every problem (a missing key, an unknown key, a string where a number belongs, zero, a
//! negative, NaN) is reported as `<kind> profile <file>: [section] key must be ..., got ...`, and
//! every problem in a file is reported at once. Integers and floats are both accepted where a number
//! is expected. Unknown keys and sections are refused everywhere except inside `[measured]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use toml::{Table, Value};

use crate::Error;

/// The whole service's workload (see `profiles/README.md` for the meaning of each key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    /// Accounts in the whole service, including inactive ones not yet deleted.
    pub users: f64,
    /// Concurrent signed-in sessions at peak, whole service.
    pub peak_sessions: f64,
    /// Pages a signed-in user views per hour of session.
    pub page_views_per_session_hour: f64,
    /// Mean session length in minutes.
    pub session_minutes: f64,
    /// Mail accepted by smtp-in per account per day (one copy per recipient account).
    pub messages_per_user_day: f64,
    /// Mean size of one message copy in bytes.
    pub mean_message_bytes: f64,
    /// Mail kept per account in bytes (mean over all accounts).
    pub stored_bytes_per_user: f64,
    /// Days without a sign-in after which an account is deleted.
    pub retention_days: f64,
    /// Peak rate over the daily mean rate (default 1.2).
    pub peak_to_mean: f64,
}

/// The capacity of one machine of each role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// Free text about where the figures came from.
    pub source: Option<String>,
    /// Cores of the machine the figures describe.
    pub cores_per_machine: Option<f64>,
    /// One user store.
    pub ustore: UstoreCapacity,
    /// Page views one front door renders per second.
    pub frontdoor_page_views_per_s: f64,
    /// Sign-ins one login server completes per second.
    pub login_logins_per_s: f64,
    /// One member index replica.
    pub mserv: MservCapacity,
    /// Messages one SMTP ingress machine accepts and delivers per second.
    pub smtp_in_messages_per_s: f64,
    /// Dollars per machine-year, if priced.
    pub prices: Option<Prices>,
    /// Figures a load run recorded; shown, never used by the model.
    pub measured: BTreeMap<String, Measured>,
}

/// One user store's limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UstoreCapacity {
    /// Page views the store serves per second (its I/O or CPU limit).
    pub page_views_per_s: f64,
    /// Message copies the store makes durable per second.
    pub deliveries_per_s: f64,
    /// Usable mail disk in bytes.
    pub disk_bytes: f64,
    /// On-disk bytes per byte of mail.
    pub disk_bytes_per_stored_byte: f64,
    /// Backup rate and window, when the backup bounds the store.
    pub backup: Option<Backup>,
}

/// A store's backup: everything it stores must be copied within the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backup {
    /// Bytes of mail copied per second.
    pub bytes_per_s: f64,
    /// Hours the backup may take.
    pub window_hours: f64,
}

/// One member index replica's limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MservCapacity {
    /// Lookups one replica answers per second.
    pub lookups_per_s: f64,
    /// Index lookups a page view costs (after callers' caches).
    pub lookups_per_page_view: f64,
    /// Index lookups a delivered message costs.
    pub lookups_per_message: f64,
    /// Replicas per HCU whatever the load.
    pub min_machines: f64,
}

/// Dollars per machine-year per role, and per GB-year of disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prices {
    pub ustore: f64,
    pub frontdoor: f64,
    pub login: f64,
    pub mserv: f64,
    #[serde(rename = "smtp-in")]
    pub smtp_in: f64,
    pub disk_per_gb_year: f64,
}

/// A value recorded under `[measured]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Measured {
    Number(f64),
    Text(String),
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Measured::Number(n) => write!(f, "{}", crate::report::figure(*n)),
            Measured::Text(s) => f.write_str(s),
        }
    }
}

/// Which rule a number must follow.
#[derive(Clone, Copy)]
enum Rule {
    Positive,
    NonNegative,
    AtLeast(f64),
    WholeAtLeast(f64),
}

/// Collects the problems found in one file.
struct Checker {
    problems: Vec<String>,
}

/// One table of a profile being taken apart; remembers which keys were read.
struct Section<'t> {
    name: &'static str,
    table: &'t Table,
    read: Vec<&'static str>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl<'t> Section<'t> {
    fn new(name: &'static str, table: &'t Table) -> Self {
        Section {
            name,
            table,
            read: Vec::new(),
        }
    }

    fn at(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("[{}] {key}", self.name)
        }
    }

    /// A number under `key`; `None` (with a problem noted if `required`) when absent or invalid.
    fn number(
        &mut self,
        c: &mut Checker,
        key: &'static str,
        required: bool,
        rule: Rule,
    ) -> Option<f64> {
        self.read.push(key);
        let at = self.at(key);
        let v = match self.table.get(key) {
            None => {
                if required {
                    c.problems.push(format!("{at} is missing"));
                }
                return None;
            }
            Some(Value::Integer(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            Some(other) => {
                c.problems.push(format!(
                    "{at} must be a number, got {}: {other}",
                    type_name(other)
                ));
                return None;
            }
        };
        if !v.is_finite() {
            c.problems
                .push(format!("{at} must be a finite number, got {v}"));
            return None;
        }
        // `v` is finite here, so plain comparisons decide every rule.
        let broken = match rule {
            Rule::Positive => (v <= 0.0).then(|| "must be > 0".to_string()),
            Rule::NonNegative => (v < 0.0).then(|| "must be >= 0".to_string()),
            Rule::AtLeast(min) => (v < min).then(|| format!("must be >= {min}")),
            Rule::WholeAtLeast(min) => (!(v >= min && v.fract() == 0.0))
                .then(|| format!("must be a whole number >= {min}")),
        };
        match broken {
            Some(why) => {
                c.problems.push(format!("{at} {why}, got {v}"));
                None
            }
            None => Some(v),
        }
    }

    fn text(&mut self, c: &mut Checker, key: &'static str) -> Option<String> {
        self.read.push(key);
        match self.table.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                let at = self.at(key);
                c.problems
                    .push(format!("{at} must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// Notes every key that was never read as unknown.
    fn finish(self, c: &mut Checker) {
        for key in self.table.keys() {
            if !self.read.contains(&key.as_str()) {
                let place = if self.name.is_empty() {
                    String::new()
                } else {
                    format!(" in [{}]", self.name)
                };
                c.problems.push(format!(
                    "unknown key `{key}`{place} (expected one of: {})",
                    self.read.join(", ")
                ));
            }
        }
    }
}

/// The sub-table `name` of `top`: `None` when absent (a problem if `required`) or not a table.
fn sub_table<'t>(c: &mut Checker, top: &'t Table, name: &str, required: bool) -> Option<&'t Table> {
    match top.get(name) {
        None => {
            if required {
                c.problems.push(format!("[{name}] is missing"));
            }
            None
        }
        Some(Value::Table(t)) => Some(t),
        Some(other) => {
            c.problems.push(format!(
                "[{name}] must be a table, got {}",
                type_name(other)
            ));
            None
        }
    }
}

fn read_table(kind: &'static str, file: &str, text: &str) -> Result<Table, Error> {
    text.parse::<Table>().map_err(|e| Error::Profile {
        kind,
        file: file.to_string(),
        problems: vec![format!("not valid TOML: {}", e.message().trim())],
    })
}

fn read_file(kind: &'static str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Profile {
        kind,
        file: path.display().to_string(),
        problems: vec![format!("cannot read: {e}")],
    })
}

fn conclude<T>(kind: &'static str, file: &str, c: Checker, value: Option<T>) -> Result<T, Error> {
    match value {
        Some(v) if c.problems.is_empty() => Ok(v),
        _ => Err(Error::Profile {
            kind,
            file: file.to_string(),
            problems: if c.problems.is_empty() {
                vec!["invalid".to_string()]
            } else {
                c.problems
            },
        }),
    }
}

impl Workload {
    /// Reads and validates a workload profile file.
    pub fn load(path: &Path) -> Result<Workload, Error> {
        let text = read_file("workload", path)?;
        Workload::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates a workload profile; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Workload, Error> {
        const KIND: &str = "workload";
        let top = read_table(KIND, file, text)?;
        let mut c = Checker {
            problems: Vec::new(),
        };
        let mut s = Section::new("", &top);
        let users = s.number(&mut c, "users", true, Rule::Positive);
        let peak_sessions = s.number(&mut c, "peak_sessions", true, Rule::Positive);
        let pvsh = s.number(
            &mut c,
            "page_views_per_session_hour",
            true,
            Rule::NonNegative,
        );
        let session_minutes = s.number(&mut c, "session_minutes", true, Rule::Positive);
        let mpud = s.number(&mut c, "messages_per_user_day", true, Rule::NonNegative);
        let mean_message_bytes = s.number(&mut c, "mean_message_bytes", true, Rule::Positive);
        let stored = s.number(&mut c, "stored_bytes_per_user", true, Rule::NonNegative);
        let retention_days = s.number(&mut c, "retention_days", true, Rule::Positive);
        let peak_to_mean = match top.get("peak_to_mean") {
            None => {
                s.read.push("peak_to_mean");
                Some(1.2)
            }
            Some(_) => s.number(&mut c, "peak_to_mean", false, Rule::AtLeast(1.0)),
        };
        s.finish(&mut c);
        if let Some(u) = users {
            if u.fract() != 0.0 {
                c.problems
                    .push(format!("users must be a whole number, got {u}"));
            }
        }
        if let (Some(u), Some(p)) = (users, peak_sessions) {
            if p > u {
                c.problems.push(format!(
                    "peak_sessions must be <= users (a session is one signed-in account), got {p} > {u}"
                ));
            }
        }
        let w = (|| {
            Some(Workload {
                users: users?,
                peak_sessions: peak_sessions?,
                page_views_per_session_hour: pvsh?,
                session_minutes: session_minutes?,
                messages_per_user_day: mpud?,
                mean_message_bytes: mean_message_bytes?,
                stored_bytes_per_user: stored?,
                retention_days: retention_days?,
                peak_to_mean: peak_to_mean?,
            })
        })();
        conclude(KIND, file, c, w)
    }

    /// The same workload for `users` accounts: every per-user rate, and the share of accounts
    /// signed in at peak, stay as they are.
    pub fn scaled_to(&self, users: f64) -> Workload {
        Workload {
            users,
            peak_sessions: self.peak_sessions * users / self.users,
            ..self.clone()
        }
    }
}

impl Capacity {
    /// Reads and validates a capacity profile file.
    pub fn load(path: &Path) -> Result<Capacity, Error> {
        let text = read_file("capacity", path)?;
        Capacity::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates a capacity profile; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Capacity, Error> {
        const KIND: &str = "capacity";
        let top = read_table(KIND, file, text)?;
        let mut c = Checker {
            problems: Vec::new(),
        };
        const SECTIONS: [&str; 8] = [
            "meta",
            "ustore",
            "frontdoor",
            "login",
            "mserv",
            "smtp-in",
            "prices",
            "measured",
        ];
        for (key, value) in &top {
            if !SECTIONS.contains(&key.as_str()) {
                let what = if value.is_table() { "section" } else { "key" };
                c.problems.push(format!(
                    "unknown {what} `{key}` (expected the sections: {})",
                    SECTIONS.join(", ")
                ));
            }
        }

        let (mut source, mut cores) = (None, None);
        if let Some(t) = sub_table(&mut c, &top, "meta", false) {
            let mut s = Section::new("meta", t);
            source = s.text(&mut c, "source");
            cores = s.number(&mut c, "cores_per_machine", false, Rule::WholeAtLeast(1.0));
            s.finish(&mut c);
        }

        let ustore = sub_table(&mut c, &top, "ustore", true).map(|t| {
            let mut s = Section::new("ustore", t);
            let pv = s.number(&mut c, "page_views_per_s", true, Rule::Positive);
            let del = s.number(&mut c, "deliveries_per_s", true, Rule::Positive);
            let disk = s.number(&mut c, "disk_bytes", true, Rule::Positive);
            let ratio = s.number(&mut c, "disk_bytes_per_stored_byte", true, Rule::Positive);
            let has_rate = t.contains_key("backup_bytes_per_s");
            let has_window = t.contains_key("backup_window_hours");
            let rate = s.number(&mut c, "backup_bytes_per_s", false, Rule::Positive);
            let window = s.number(&mut c, "backup_window_hours", false, Rule::Positive);
            if has_rate != has_window {
                c.problems.push(
                    "[ustore] backup_bytes_per_s and backup_window_hours go together: give both or neither"
                        .to_string(),
                );
            }
            if let Some(w) = window {
                if w > 24.0 * 366.0 {
                    c.problems.push(format!("[ustore] backup_window_hours must be <= a year, got {w}"));
                }
            }
            s.finish(&mut c);
            let backup = match (rate, window) {
                (Some(bytes_per_s), Some(window_hours)) => Some(Backup {
                    bytes_per_s,
                    window_hours,
                }),
                _ => None,
            };
            Some(UstoreCapacity {
                page_views_per_s: pv?,
                deliveries_per_s: del?,
                disk_bytes: disk?,
                disk_bytes_per_stored_byte: ratio?,
                backup,
            })
        });

        let frontdoor = sub_table(&mut c, &top, "frontdoor", true).map(|t| {
            let mut s = Section::new("frontdoor", t);
            let v = s.number(&mut c, "page_views_per_s", true, Rule::Positive);
            s.finish(&mut c);
            v
        });
        let login = sub_table(&mut c, &top, "login", true).map(|t| {
            let mut s = Section::new("login", t);
            let v = s.number(&mut c, "logins_per_s", true, Rule::Positive);
            s.finish(&mut c);
            v
        });
        let mserv = sub_table(&mut c, &top, "mserv", true).map(|t| {
            let mut s = Section::new("mserv", t);
            let lookups = s.number(&mut c, "lookups_per_s", true, Rule::Positive);
            let per_pv = default(
                &mut s,
                &mut c,
                "lookups_per_page_view",
                1.0,
                Rule::NonNegative,
            );
            let per_msg = default(
                &mut s,
                &mut c,
                "lookups_per_message",
                1.0,
                Rule::NonNegative,
            );
            let min = default(&mut s, &mut c, "min_machines", 1.0, Rule::WholeAtLeast(1.0));
            s.finish(&mut c);
            Some(MservCapacity {
                lookups_per_s: lookups?,
                lookups_per_page_view: per_pv?,
                lookups_per_message: per_msg?,
                min_machines: min?,
            })
        });
        let smtp_in = sub_table(&mut c, &top, "smtp-in", true).map(|t| {
            let mut s = Section::new("smtp-in", t);
            let v = s.number(&mut c, "messages_per_s", true, Rule::Positive);
            s.finish(&mut c);
            v
        });

        let prices = sub_table(&mut c, &top, "prices", false).map(|t| {
            let mut s = Section::new("prices", t);
            let nn = Rule::NonNegative;
            let ustore = s.number(&mut c, "ustore", true, nn);
            let frontdoor = s.number(&mut c, "frontdoor", true, nn);
            let login = s.number(&mut c, "login", true, nn);
            let mserv = s.number(&mut c, "mserv", true, nn);
            let smtp_in = s.number(&mut c, "smtp-in", true, nn);
            let disk = default(&mut s, &mut c, "disk_per_gb_year", 0.0, nn);
            s.finish(&mut c);
            Some(Prices {
                ustore: ustore?,
                frontdoor: frontdoor?,
                login: login?,
                mserv: mserv?,
                smtp_in: smtp_in?,
                disk_per_gb_year: disk?,
            })
        });

        let mut measured = BTreeMap::new();
        if let Some(t) = sub_table(&mut c, &top, "measured", false) {
            flatten_measured("", t, &mut measured);
        }

        let capacity = (|| {
            Some(Capacity {
                source,
                cores_per_machine: cores,
                ustore: ustore??,
                frontdoor_page_views_per_s: frontdoor??,
                login_logins_per_s: login??,
                mserv: mserv??,
                smtp_in_messages_per_s: smtp_in??,
                prices: match prices {
                    None => None,
                    Some(p) => Some(p?),
                },
                measured,
            })
        })();
        conclude(KIND, file, c, capacity)
    }
}

/// An optional number with a default.
fn default(
    s: &mut Section<'_>,
    c: &mut Checker,
    key: &'static str,
    value: f64,
    rule: Rule,
) -> Option<f64> {
    if s.table.contains_key(key) {
        s.number(c, key, false, rule)
    } else {
        s.read.push(key);
        Some(value)
    }
}

/// `[measured]` is free-form: numbers stay numbers, nested tables become dotted names, anything
/// else is kept as its TOML text.
fn flatten_measured(prefix: &str, t: &Table, out: &mut BTreeMap<String, Measured>) {
    for (key, value) in t {
        let name = format!("{prefix}{key}");
        match value {
            Value::Integer(i) => {
                out.insert(name, Measured::Number(*i as f64));
            }
            Value::Float(f) => {
                out.insert(name, Measured::Number(*f));
            }
            Value::String(s) => {
                out.insert(name, Measured::Text(s.clone()));
            }
            Value::Table(inner) => flatten_measured(&format!("{name}."), inner, out),
            other => {
                out.insert(name, Measured::Text(other.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "users = 10\npeak_sessions = 2\npage_views_per_session_hour = 60\n\
        session_minutes = 20\nmessages_per_user_day = 1\nmean_message_bytes = 1000\n\
        stored_bytes_per_user = 100\nretention_days = 120\n";

    #[test]
    fn integers_and_floats_are_numbers_and_peak_to_mean_defaults() {
        let w = Workload::parse("w.toml", W).expect("valid");
        assert_eq!(w.users, 10.0);
        assert_eq!(w.peak_to_mean, 1.2);
        let w = Workload::parse("w.toml", &format!("{W}peak_to_mean = 2\n")).expect("valid");
        assert_eq!(w.peak_to_mean, 2.0);
        let e = Workload::parse("w.toml", &format!("{W}peak_to_mean = 0.5\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "workload profile w.toml: peak_to_mean must be >= 1, got 0.5"
        );
    }

    #[test]
    fn every_problem_is_reported_one_per_line() {
        let e = Workload::parse("w.toml", "users = 0\npeak_sessions = -1\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("workload profile w.toml: users must be > 0, got 0"),
            "{text}"
        );
        assert!(
            text.contains("workload profile w.toml: peak_sessions must be > 0, got -1"),
            "{text}"
        );
        assert!(
            text.contains("workload profile w.toml: retention_days is missing"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 8, "{text}");
    }

    #[test]
    fn measured_is_free_form() {
        let mut out = BTreeMap::new();
        let t: Table = "a = 1\nb = 2.5\nc = \"x\"\n[d]\ne = 3\n"
            .parse()
            .expect("toml");
        flatten_measured("", &t, &mut out);
        assert_eq!(out["a"], Measured::Number(1.0));
        assert_eq!(out["b"], Measured::Number(2.5));
        assert_eq!(out["c"], Measured::Text("x".into()));
        assert_eq!(out["d.e"], Measured::Number(3.0));
    }

    #[test]
    fn scaling_keeps_the_share_signed_in() {
        let w = Workload::parse("w.toml", W).expect("valid");
        let s = w.scaled_to(1000.0);
        assert_eq!(s.users, 1000.0);
        assert_eq!(s.peak_sessions, 200.0);
        assert_eq!(s.stored_bytes_per_user, w.stored_bytes_per_user);
    }
}
