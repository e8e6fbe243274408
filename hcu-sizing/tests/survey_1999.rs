//! The 1999 profiles reproduce the survey's HCU (seeds/002, section 4.1.1) within stated bounds.

use std::path::PathBuf;

use hcu_sizing::model::{Constraint, Limit};
use hcu_sizing::{plan, Capacity, Workload};

fn profile(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name)
}

#[test]
fn the_1999_profiles_reproduce_the_survey_hcu() {
    let w = Workload::load(&profile("1999-workload.toml")).expect("1999 workload is valid");
    let c = Capacity::load(&profile("1999-capacity.toml")).expect("1999 capacity is valid");
    assert_eq!(w.users, 47e6);
    assert_eq!(w.peak_sessions, 77e3);
    let p = plan(&w, &c).expect("plan");
    let m = p.hcu.machines;
    println!(
        "1999 HCU: {} users, ustore {}, frontdoor {}, login {}, mserv {}, smtp-in {}, {} HCUs, ${:.2}/user-year ({:.0}% ustore), bottleneck {}",
        p.users_per_hcu,
        m.ustore,
        m.frontdoor,
        m.login,
        m.mserv,
        m.smtp_in,
        p.hcus,
        p.cost_per_user_year.unwrap_or(f64::NAN),
        p.ustore_cost_share.unwrap_or(f64::NAN) * 100.0,
        p.bottleneck
    );
    // Survey: "a HCU covers approximately 2M users"; ±15%.
    let users = p.users_per_hcu as f64;
    assert!((1.7e6..=2.3e6).contains(&users), "users per HCU {users}");
    // Survey: 1 USTORE, 16 front doors, 15 login servers, 1 MSERV, 4 incoming mail servers.
    assert_eq!(m.ustore, 1);
    assert!(
        (14..=18).contains(&m.frontdoor),
        "frontdoor {}",
        m.frontdoor
    );
    assert!((13..=17).contains(&m.login), "login {}", m.login);
    assert_eq!(m.mserv, 1);
    assert!((3..=5).contains(&m.smtp_in), "smtp-in {}", m.smtp_in);
    // Survey: the USTORE is bound by I/O (disk 100% busy), with backup the other constraint.
    assert_eq!(p.limited_by, Limit::Store(Constraint::PageIo));
    assert_eq!(p.bottleneck, "ustore (page I/O)");
    // "It takes 18 hours to backup a USTORE": 18 h of a 24 h window is 75%; ±10 points.
    let backup = p
        .hcu
        .store_limits
        .iter()
        .find(|s| s.constraint == Constraint::Backup)
        .map(|s| s.utilisation);
    let backup = backup.expect("the 1999 store has a backup window");
    assert!(
        (0.65..=0.85).contains(&backup),
        "backup utilisation {backup}"
    );
    // Survey: $1.62 per user-year (±25%), about 70% of the hardware cost in the USTOREs (±10 points).
    let cost = p.cost_per_user_year.expect("the 1999 profile has prices");
    assert!(
        (1.62 * 0.75..=1.62 * 1.25).contains(&cost),
        "cost per user-year {cost}"
    );
    let share = p.ustore_cost_share.expect("priced");
    assert!((0.6..=0.8).contains(&share), "ustore share {share}");
    // 47M users in HCUs of ~2M: 21 to 28 of them.
    assert!((21..=28).contains(&p.hcus), "HCUs {}", p.hcus);
}

#[test]
fn the_example_capacity_is_valid_and_sizes_the_1999_workload() {
    let w = Workload::load(&profile("1999-workload.toml")).expect("valid");
    let c = Capacity::load(&profile("example-capacity.toml")).expect("example capacity is valid");
    assert_eq!(c.cores_per_machine, Some(2.0));
    assert_eq!(c.mserv.min_machines, 3.0);
    let p = plan(&w, &c).expect("plan");
    println!(
        "example capacity, 1999 workload: {} users per HCU, bottleneck {}",
        p.users_per_hcu, p.bottleneck
    );
    // A modern store takes more users than a 1999 one, and the index keeps its three replicas.
    assert!(p.users_per_hcu > 2_100_000, "{}", p.users_per_hcu);
    assert_eq!(p.hcu.machines.mserv, 3);
}
