//! The model's arithmetic on small cases worked by hand.

use hcu_sizing::model::{size_hcu, Constraint, Limit};
use hcu_sizing::{plan, Capacity, Workload};

/// Per user at peak: 100 / 1000 = 0.1 sessions; 0.1 × 36 / 3600 = 0.001 page views/s;
/// 0.1 / (10 × 60) sign-ins/s; 8.64 / 86400 × 1.5 = 0.00015 deliveries/s; 1e6 bytes stored,
/// 2e6 on disk.
const WORKLOAD: &str = r#"
users = 1000
peak_sessions = 100
page_views_per_session_hour = 36
session_minutes = 10
messages_per_user_day = 8.64
mean_message_bytes = 1000
stored_bytes_per_user = 1e6
retention_days = 30
peak_to_mean = 1.5
"#;

/// The store's limits alone: page I/O 0.4 / 0.001 = 400 users; deliveries 0.09 / 0.00015 = 600;
/// disk 1.2e9 / 2e6 = 600; backup 1e4 × 20 h × 3600 = 7.2e8 bytes / 1e6 = 720.
const CAPACITY: &str = r#"
[ustore]
page_views_per_s = 0.4
deliveries_per_s = 0.09
disk_bytes = 1.2e9
disk_bytes_per_stored_byte = 2
backup_bytes_per_s = 1e4
backup_window_hours = 20

[frontdoor]
page_views_per_s = 0.15

[login]
logins_per_s = 0.02

[mserv]
lookups_per_s = 1
lookups_per_page_view = 0.5
min_machines = 3

["smtp-in"]
messages_per_s = 0.025

[prices]
ustore = 100
frontdoor = 10
login = 10
mserv = 5
"smtp-in" = 10
disk_per_gb_year = 1
"#;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn profiles(workload: &str) -> (Workload, Capacity) {
    let w = Workload::parse("w.toml", workload).expect("valid workload");
    let c = Capacity::parse("c.toml", CAPACITY).expect("valid capacity");
    (w, c)
}

#[test]
fn page_io_binds_and_every_role_is_sized_by_hand() {
    let (w, c) = profiles(WORKLOAD);
    let p = plan(&w, &c).expect("plan");
    // min(400, 600, 600, 720) = 400 users, bound by page I/O.
    assert_eq!(p.users_per_hcu, 400);
    assert_eq!(p.limited_by, Limit::Store(Constraint::PageIo));
    let l = &p.hcu.load;
    // 400 users: 40 sessions, 0.4 page views/s, 40 / 600 sign-ins/s, 0.06 deliveries/s.
    assert!(close(l.sessions, 40.0));
    assert!(close(l.page_views_per_s, 0.4));
    assert!(close(l.sign_ins_per_s, 40.0 / 600.0));
    assert!(close(l.deliveries_per_s, 0.06));
    // lookups: 0.4 × 0.5 + 0.06 × 1 (default) + 0.0667 (one per sign-in) = 0.32667/s.
    assert!(close(l.mserv_lookups_per_s, 0.2 + 0.06 + 40.0 / 600.0));
    let m = p.hcu.machines;
    assert_eq!(m.ustore, 1);
    assert_eq!(m.frontdoor, 3); // 0.4 / 0.15 = 2.67 → 3
    assert_eq!(m.login, 4); // 0.0667 / 0.02 = 3.33 → 4
    assert_eq!(m.mserv, 3); // 0.327 / 1 → 1, but min_machines = 3
    assert_eq!(m.smtp_in, 3); // 0.06 / 0.025 = 2.4 → 3
    assert_eq!(p.machines_per_hcu, 14);
    let u = p.hcu.utilisation;
    assert!(close(u.ustore, 1.0));
    assert!(close(u.frontdoor, 0.4 / 0.45));
    assert!(close(u.login, (40.0 / 600.0) / 0.08));
    assert!(close(u.smtp_in, 0.06 / 0.075));
    // Store constraints at 400 users: deliveries 0.06 / 0.09, disk 8e8 / 1.2e9, backup 4e8 / 7.2e8.
    let util = |k: Constraint| {
        p.hcu
            .store_limits
            .iter()
            .find(|s| s.constraint == k)
            .map(|s| s.utilisation)
    };
    assert!(close(
        util(Constraint::Deliveries).unwrap_or(0.0),
        0.06 / 0.09
    ));
    assert!(close(util(Constraint::Disk).unwrap_or(0.0), 8e8 / 1.2e9));
    assert!(close(util(Constraint::Backup).unwrap_or(0.0), 4e8 / 7.2e8));
    assert_eq!(p.bottleneck, "ustore (page I/O)");
    // 1000 users: 2 full HCUs and one of 200 users; that one needs 0.2 / 0.15 → 2 front doors,
    // 0.0333 / 0.02 → 2 logins, 3 mserv, 0.03 / 0.025 → 2 smtp-in.
    assert_eq!(p.hcus, 3);
    assert_eq!(p.last_hcu_users, 200);
    let s = p.service_machines;
    assert_eq!(
        (s.ustore, s.frontdoor, s.login, s.mserv, s.smtp_in),
        (3, 8, 10, 9, 8)
    );
    assert_eq!(p.total_machines, 38);
    // Cost: 100 + 3×10 + 4×10 + 3×5 + 3×10 = 215 per year, plus 0.8 GB of disk × $1 = 215.8,
    // over 400 users.
    assert!(close(p.cost_per_user_year.unwrap_or(0.0), 215.8 / 400.0));
    assert!(close(p.ustore_cost_share.unwrap_or(0.0), 100.8 / 215.8));
}

#[test]
fn a_service_smaller_than_one_store_is_one_hcu_and_another_role_can_be_the_bottleneck() {
    // 100 users, 10 sessions: the store could take 400, so the HCU holds all 100.
    let (w, c) = profiles(
        &WORKLOAD
            .replace("users = 1000", "users = 100")
            .replace("peak_sessions = 100", "peak_sessions = 10"),
    );
    let p = plan(&w, &c).expect("plan");
    assert_eq!(p.users_per_hcu, 100);
    assert_eq!(p.limited_by, Limit::ServiceSize);
    assert_eq!(p.hcus, 1);
    // ustore: 0.1 / 0.4 = 25%; front door 0.1 / 0.15 = 67%; login (10 / 600) / 0.02 = 83%;
    // smtp-in 0.015 / 0.025 = 60%: login is the bottleneck.
    assert!(close(p.hcu.utilisation.ustore, 0.25));
    assert!(close(p.hcu.utilisation.login, (10.0 / 600.0) / 0.02));
    assert_eq!(p.bottleneck, "login");
}

#[test]
fn the_tightest_store_constraint_wins() {
    // 1.5 MB per user and 18 page views per session-hour: disk 1.2e9 / 3e6 = 400 users, backup
    // 7.2e8 / 1.5e6 = 480, page I/O 0.4 / 0.0005 = 800, deliveries 600: disk binds at 400.
    let text = WORKLOAD
        .replace(
            "stored_bytes_per_user = 1e6",
            "stored_bytes_per_user = 1.5e6",
        )
        .replace(
            "page_views_per_session_hour = 36",
            "page_views_per_session_hour = 18",
        );
    let (w, c) = profiles(&text);
    let p = plan(&w, &c).expect("plan");
    assert_eq!(p.users_per_hcu, 400);
    assert_eq!(p.limited_by, Limit::Store(Constraint::Disk));
    assert_eq!(p.bottleneck, "ustore (disk)");
    // 2.5 MB per user: disk 1.2e9 / 5e6 = 240, backup 7.2e8 / 2.5e6 = 288, page I/O 400.
    let text = WORKLOAD.replace(
        "stored_bytes_per_user = 1e6",
        "stored_bytes_per_user = 2.5e6",
    );
    let (w, c) = profiles(&text);
    assert_eq!(plan(&w, &c).expect("plan").users_per_hcu, 240);
    // Without the disk limit (a huge disk), backup binds at 288.
    let c = Capacity::parse(
        "c.toml",
        &CAPACITY.replace("disk_bytes = 1.2e9", "disk_bytes = 1e12"),
    )
    .expect("valid");
    let p = plan(&w, &c).expect("plan");
    assert_eq!(p.users_per_hcu, 288);
    assert_eq!(p.bottleneck, "ustore (backup)");
}

#[test]
fn a_store_that_cannot_hold_one_user_is_refused() {
    // 1e9 bytes per user on disk is 2e9, more than the 1.2e9 disk: 0.6 users.
    let (w, c) =
        profiles(&WORKLOAD.replace("stored_bytes_per_user = 1e6", "stored_bytes_per_user = 1e9"));
    let e = plan(&w, &c).expect_err("impossible");
    assert_eq!(
        e.to_string(),
        "one ustore cannot take a single user: its disk allows 0.600 users"
    );
}

#[test]
fn without_prices_there_is_no_cost() {
    let (w, _) = profiles(WORKLOAD);
    let cap = CAPACITY.split("[prices]").next().unwrap_or_default();
    let c = Capacity::parse("c.toml", cap).expect("valid");
    let p = plan(&w, &c).expect("plan");
    assert_eq!(p.cost_per_user_year, None);
    // A workload with no load at all still gets one machine per role.
    let idle = WORKLOAD
        .replace(
            "page_views_per_session_hour = 36",
            "page_views_per_session_hour = 0",
        )
        .replace("messages_per_user_day = 8.64", "messages_per_user_day = 0")
        .replace("stored_bytes_per_user = 1e6", "stored_bytes_per_user = 0");
    let (w, _) = profiles(&idle);
    let h = size_hcu(&w, &c, 1000.0);
    assert_eq!(h.machines.frontdoor, 1);
    assert_eq!(h.machines.smtp_in, 1);
    // Sign-ins still happen: 100 / 600 / 0.02 = 8.33 → 9 login servers.
    assert_eq!(h.machines.login, 9);
}

#[test]
fn huge_figures_do_not_overflow() {
    // 1e18 users on stores of one user each: counts saturate instead of overflowing.
    let text = WORKLOAD
        .replace("users = 1000", "users = 1e18")
        .replace("peak_sessions = 100", "peak_sessions = 1e17")
        .replace("stored_bytes_per_user = 1e6", "stored_bytes_per_user = 5e8");
    let (w, c) = profiles(&text);
    let p = plan(&w, &c).expect("plan");
    assert_eq!(p.users_per_hcu, 1);
    assert!(p.total_machines >= p.hcus);
}

#[test]
fn a_service_exactly_one_store_full_is_one_store_limited_hcu() {
    // 400 users, 40 sessions: page I/O allows exactly 400 (0.4 / 0.001), the whole service.
    let text = WORKLOAD
        .replace("users = 1000", "users = 400")
        .replace("peak_sessions = 100", "peak_sessions = 40");
    let (w, c) = profiles(&text);
    let p = plan(&w, &c).expect("plan");
    assert_eq!((p.users_per_hcu, p.hcus, p.last_hcu_users), (400, 1, 400));
    assert_eq!(p.limited_by, Limit::Store(Constraint::PageIo));
    assert_eq!(p.service_machines, p.hcu.machines);
}
