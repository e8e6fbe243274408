//! Malformed or impossible profiles are refused with a message that names the file, the key and
//! the value.

use hcu_sizing::{plan, Capacity, Error, Workload};

const WORKLOAD: &str = "users = 1000\npeak_sessions = 100\npage_views_per_session_hour = 60\n\
session_minutes = 20\nmessages_per_user_day = 10\nmean_message_bytes = 30000\n\
stored_bytes_per_user = 500000\nretention_days = 120\n";

const CAPACITY: &str = r#"
[ustore]
page_views_per_s = 400.0
deliveries_per_s = 1500.0
disk_bytes = 2.0e12
disk_bytes_per_stored_byte = 0.6

[frontdoor]
page_views_per_s = 3000.0

[login]
logins_per_s = 200.0

[mserv]
lookups_per_s = 100000.0

["smtp-in"]
messages_per_s = 1500.0
"#;

fn workload_error(text: &str) -> String {
    match Workload::parse("w.toml", text) {
        Ok(w) => panic!("accepted {w:?}"),
        Err(e) => {
            assert!(matches!(e, Error::Profile { .. }));
            e.to_string()
        }
    }
}

fn capacity_error(text: &str) -> String {
    match Capacity::parse("x.toml", text) {
        Ok(c) => panic!("accepted {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_profiles_are_valid() {
    let w = Workload::parse("w.toml", WORKLOAD).expect("valid");
    let c = Capacity::parse("x.toml", CAPACITY).expect("valid");
    assert!(plan(&w, &c).is_ok());
}

#[test]
fn negative_or_zero_users_are_refused() {
    let e = workload_error(&WORKLOAD.replace("users = 1000", "users = -5"));
    assert!(
        e.contains("workload profile w.toml: users must be > 0, got -5"),
        "{e}"
    );
    let e = workload_error(&WORKLOAD.replace("users = 1000", "users = 0"));
    assert!(
        e.contains("workload profile w.toml: users must be > 0, got 0"),
        "{e}"
    );
    let e = workload_error(&WORKLOAD.replace("users = 1000", "users = 1000.5"));
    assert!(
        e.contains("users must be a whole number, got 1000.5"),
        "{e}"
    );
}

#[test]
fn zero_capacity_is_refused() {
    let e = capacity_error(&CAPACITY.replace("page_views_per_s = 3000.0", "page_views_per_s = 0"));
    assert_eq!(
        e,
        "capacity profile x.toml: [frontdoor] page_views_per_s must be > 0, got 0"
    );
    let e = capacity_error(&CAPACITY.replace("logins_per_s = 200.0", "logins_per_s = -1.5"));
    assert_eq!(
        e,
        "capacity profile x.toml: [login] logins_per_s must be > 0, got -1.5"
    );
}

#[test]
fn unknown_keys_are_refused_except_in_measured() {
    let e = workload_error(&format!("{WORKLOAD}userz = 3\n"));
    assert!(
        e.starts_with("workload profile w.toml: unknown key `userz` (expected one of: users,"),
        "{e}"
    );
    let e = capacity_error(&CAPACITY.replace("[login]\n", "[login]\ncpu_ms = 3\n"));
    assert!(
        e.starts_with("capacity profile x.toml: unknown key `cpu_ms` in [login]"),
        "{e}"
    );
    let e = capacity_error(&format!("{CAPACITY}\n[graphics]\nrequests_per_s = 5\n"));
    assert!(e.contains("unknown section `graphics`"), "{e}");
    let measured =
        format!("{CAPACITY}\n[measured]\nstore_reads_per_page_view = 2.5\nanything_at_all = 7\n");
    let c = Capacity::parse("x.toml", &measured).expect("measured is free-form");
    assert_eq!(c.measured.len(), 2);
}

#[test]
fn more_sessions_than_users_is_refused() {
    let e = workload_error(&WORKLOAD.replace("peak_sessions = 100", "peak_sessions = 1001"));
    assert_eq!(
        e,
        "workload profile w.toml: peak_sessions must be <= users (a session is one signed-in account), got 1001 > 1000"
    );
}

#[test]
fn nan_infinity_and_wrong_types_are_refused() {
    let e = workload_error(&WORKLOAD.replace("session_minutes = 20", "session_minutes = nan"));
    assert!(
        e.contains("session_minutes must be a finite number, got NaN"),
        "{e}"
    );
    let e = capacity_error(&CAPACITY.replace("disk_bytes = 2.0e12", "disk_bytes = inf"));
    assert!(
        e.contains("[ustore] disk_bytes must be a finite number, got inf"),
        "{e}"
    );
    let e =
        workload_error(&WORKLOAD.replace("retention_days = 120", "retention_days = \"120 days\""));
    assert!(
        e.contains("retention_days must be a number, got a string: \"120 days\""),
        "{e}"
    );
    let e = capacity_error(&format!(
        "login = 3\n{}",
        CAPACITY.replace("[login]\nlogins_per_s = 200.0", "")
    ));
    assert!(e.contains("[login] must be a table, got an integer"), "{e}");
    let e = capacity_error(&CAPACITY.replace(
        "lookups_per_s = 100000.0",
        "lookups_per_s = 1e5\nmin_machines = 2.5",
    ));
    assert!(
        e.contains("[mserv] min_machines must be a whole number >= 1, got 2.5"),
        "{e}"
    );
}

#[test]
fn missing_keys_and_sections_are_named() {
    let e = workload_error(&WORKLOAD.replace("session_minutes = 20\n", ""));
    assert_eq!(e, "workload profile w.toml: session_minutes is missing");
    let e = capacity_error(&CAPACITY.replace("[login]\nlogins_per_s = 200.0\n", ""));
    assert_eq!(e, "capacity profile x.toml: [login] is missing");
    let e = capacity_error(&CAPACITY.replace(
        "disk_bytes_per_stored_byte = 0.6\n",
        "backup_window_hours = 6\n",
    ));
    assert!(
        e.contains("[ustore] disk_bytes_per_stored_byte is missing"),
        "{e}"
    );
    assert!(
        e.contains("backup_bytes_per_s and backup_window_hours go together"),
        "{e}"
    );
}

#[test]
fn prices_need_every_role() {
    let e = capacity_error(&format!(
        "{CAPACITY}\n[prices]\nustore = 100\nfrontdoor = 10\n"
    ));
    assert!(e.contains("[prices] login is missing"), "{e}");
    assert!(e.contains("[prices] smtp-in is missing"), "{e}");
    let e = capacity_error(&format!(
        "{CAPACITY}\n[prices]\nustore = -1\nfrontdoor = 1\nlogin = 1\nmserv = 1\n\"smtp-in\" = 1\n"
    ));
    assert!(e.contains("[prices] ustore must be >= 0, got -1"), "{e}");
}

#[test]
fn text_that_is_not_toml_is_refused() {
    let e = workload_error("users = = 3");
    assert!(
        e.starts_with("workload profile w.toml: not valid TOML"),
        "{e}"
    );
}
