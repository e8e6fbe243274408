//! The `hcu-sizing` binary end to end: `plan`, `plan --json`, `plot`, `check`, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn profile(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hcu-sizing"))
        .args(args)
        .output()
        .expect("run hcu-sizing")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const ROLES: [&str; 5] = ["ustore", "frontdoor", "login", "mserv", "smtp-in"];

#[test]
fn plan_json_has_the_keys() {
    let (w, c) = (profile("1999-workload.toml"), profile("1999-capacity.toml"));
    let out = run(&[
        "plan",
        "--workload",
        path(&w),
        "--capacity",
        path(&c),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("plan --json prints JSON");
    for key in [
        "users_per_hcu",
        "machines",
        "bottleneck",
        "hcus",
        "total_machines",
        "disk_bytes_per_store",
        "cost_per_user_year",
        "utilisation",
        "measured",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for role in ROLES {
        assert!(
            v["machines"][role].as_u64().is_some_and(|n| n >= 1),
            "machines.{role} in {v}"
        );
        assert!(
            v["utilisation"][role].as_f64().is_some(),
            "utilisation.{role}"
        );
    }
    assert_eq!(v["machines"]["frontdoor"], 16);
    assert_eq!(v["bottleneck"], "ustore (page I/O)");
    assert!(v["cost_per_user_year"].as_f64().is_some());
    assert!(v["measured"].is_null());
}

#[test]
fn plan_prints_the_table_and_the_measured_figures() {
    let (w, c) = (profile("1999-workload.toml"), profile("1999-capacity.toml"));
    let out = run(&["plan", "--workload", path(&w), "--capacity", path(&c)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    println!("{table}");
    for role in ROLES {
        assert!(
            table.lines().any(|l| l.starts_with(role)),
            "no row for {role}:\n{table}"
        );
    }
    assert!(
        table.contains("users per HCU       2,014,285 (limited by ustore page I/O)"),
        "{table}"
    );
    assert!(
        table.contains("bottleneck          ustore (page I/O)"),
        "{table}"
    );
    assert!(table.contains("cost per user-year  $1.62"), "{table}");

    // A measured profile without prices: the measurements are shown, the cost is null.
    let dir = tempfile::tempdir().expect("tempdir");
    let measured = dir.path().join("measured.toml");
    let example = std::fs::read_to_string(profile("example-capacity.toml")).expect("read example");
    let unpriced = example
        .split("[prices]")
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::write(
        &measured,
        unpriced + "\n[measured]\nstore_reads_per_page_view = 2.5\nfsyncs_per_delivery = 0.125\n",
    )
    .expect("write profile");
    let out = run(&[
        "plan",
        "--workload",
        path(&w),
        "--capacity",
        path(&measured),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("store_reads_per_page_view  2.50"), "{table}");
    assert!(table.contains("not priced"), "{table}");
    let out = run(&[
        "plan",
        "--workload",
        path(&w),
        "--capacity",
        path(&measured),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["cost_per_user_year"].is_null());
    assert_eq!(v["measured"]["fsyncs_per_delivery"], 0.125);
}

#[test]
fn plot_writes_an_svg_with_one_line_per_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("hcu.svg");
    let (w, c) = (profile("1999-workload.toml"), profile("1999-capacity.toml"));
    let out = run(&[
        "plot",
        "--workload",
        path(&w),
        "--capacity",
        path(&c),
        "--out",
        path(&svg),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(doc.starts_with("<svg"), "{}", &doc[..doc.len().min(200)]);
    assert!(doc.trim_end().ends_with("</svg>"));
    assert_eq!(doc.matches("<polyline").count(), ROLES.len());
    for role in ROLES {
        assert!(
            doc.contains(&format!("data-role=\"{role}\"")),
            "no line for {role}"
        );
    }
    assert!(doc.contains("users (whole service)") && doc.contains("machines (whole service)"));
    // The whole service at 47M users: 24 stores, the ustore legend says so.
    assert!(doc.contains("ustore (24)"), "legend");

    let small = dir.path().join("small.svg");
    let out = run(&[
        "plot",
        "--workload",
        path(&w),
        "--capacity",
        path(&c),
        "--out",
        path(&small),
        "--max-users",
        "5000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = std::fs::read_to_string(&small).expect("written");
    assert_eq!(doc.matches("<polyline").count(), ROLES.len());
}

#[test]
fn bad_files_exit_2_with_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = profile("1999-workload.toml");
    let bad = dir.path().join("x.toml");
    let good = std::fs::read_to_string(profile("example-capacity.toml")).expect("read example");
    std::fs::write(
        &bad,
        good.replace("page_views_per_s = 3000.0", "page_views_per_s = 0"),
    )
    .expect("write");
    let expected = format!(
        "capacity profile {}: [frontdoor] page_views_per_s must be > 0, got 0",
        bad.display()
    );

    let out = run(&["plan", "--workload", path(&w), "--capacity", path(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    let out = run(&["check", "--capacity", path(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    let missing = dir.path().join("none.toml");
    let out = run(&[
        "plan",
        "--workload",
        path(&missing),
        "--capacity",
        path(&bad),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "workload profile {}: cannot read",
            missing.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&expected),
        "both files' problems are reported: {err}"
    );

    let svg = dir.path().join("p.svg");
    let c = profile("1999-capacity.toml");
    let out = run(&[
        "plot",
        "--workload",
        path(&w),
        "--capacity",
        path(&c),
        "--out",
        path(&svg),
        "--max-users",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!svg.exists());
}

#[test]
fn check_says_ok() {
    let (w, c) = (profile("1999-workload.toml"), profile("1999-capacity.toml"));
    let out = run(&["check", "--capacity", path(&c)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("capacity profile {}: OK\n", c.display())
    );
    let out = run(&["check", "--workload", path(&w), "--capacity", path(&c)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("workload profile {}: OK", w.display())),
        "{said}"
    );
    assert!(said.contains("together: 2,014,285 users per HCU"), "{said}");
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
}
