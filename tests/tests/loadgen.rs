//! The load generator against `mailctl up`: a short run with every kind of operation writes a
//! capacity profile with every required figure, and `hcu-sizing` accepts it.

use std::process::Command;

use megamail_tests::bin;
use megamail_tests::support::{run_ok, succeeded};
use megamail_tests::up::Up;
use serde_json::Value;

const OPS: &[&str] = &[
    "signin",
    "folders",
    "folder_page",
    "message",
    "send",
    "smtp",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_writes_a_capacity_profile_that_hcu_sizing_accepts() {
    let mut up = Up::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capacity.toml");
    let data = up.data.clone();
    let profile = out.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(bin("loadgen"))
            .arg("--data")
            .arg(&data)
            .args([
                "--users",
                "6",
                "--sessions",
                "6",
                "--smtp-rate",
                "5",
                "--duration",
                "8s",
                "--warmup",
                "2s",
                "--think-ms",
                "100",
                "--pages-per-session",
                "10",
                "--send-fraction",
                "0.15",
                "--seed-messages",
                "2",
                "--day-night",
                "6s",
                "--json",
                "--out",
            ])
            .arg(&profile)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    if !run.status.success() {
        eprintln!("--- mailctl up log:\n{}", up.log());
    }
    let report = succeeded(&run, "loadgen");

    // Every operation ran, and (almost) none failed.
    let report: Value = serde_json::from_str(&report).expect("the report is JSON");
    for op in OPS {
        let o = report["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == *op)
            .unwrap_or_else(|| panic!("no {op} in {report}"));
        let (count, errors) = (o["count"].as_u64().unwrap(), o["errors"].as_u64().unwrap());
        println!(
            "{op:<12} count={count:<5} errors={errors} per_s={:.1} p50_ms={:.1} p99_ms={:.1}",
            o["per_s"].as_f64().unwrap(),
            o["p50_ms"].as_f64().unwrap(),
            o["p99_ms"].as_f64().unwrap()
        );
        assert!(count > 0, "{op} never ran: {report}");
        assert!(
            // At most 2% (one error in a small count is noise on a loaded machine).
            errors * 50 <= count.max(50),
            "{op}: {errors} of {count} failed: {}",
            o["first_error"]
        );
    }
    for r in report["roles"].as_array().unwrap() {
        println!(
            "{:<10} cpu_ms_per_request={:.3} one_machine_per_s={:.0}",
            r["role"].as_str().unwrap(),
            r["cpu_ms_per_request"].as_f64().unwrap(),
            r["capacity_per_s"].as_f64().unwrap()
        );
    }

    // The profile has every required figure, positive, and the raw measurements.
    let written = std::fs::read_to_string(&out).unwrap();
    let p: toml::Value = toml::from_str(&written).expect("the profile is TOML");
    for (table, key) in [
        ("ustore", "page_views_per_s"),
        ("ustore", "deliveries_per_s"),
        ("ustore", "disk_bytes"),
        ("ustore", "disk_bytes_per_stored_byte"),
        ("frontdoor", "page_views_per_s"),
        ("login", "logins_per_s"),
        ("mserv", "lookups_per_s"),
        ("smtp-in", "messages_per_s"),
    ] {
        let v = p[table][key]
            .as_float()
            .unwrap_or_else(|| panic!("{table}.{key} is not a number:\n{written}"));
        assert!(v > 0.0 && v.is_finite(), "{table}.{key} = {v}");
    }
    assert_eq!(p["mserv"]["min_machines"].as_integer(), Some(3));
    for key in [
        "store_reads_per_page_view",
        "fsyncs_per_delivery",
        "cpu_ms_per_request_frontdoor",
        "cpu_ms_per_request_ustore",
    ] {
        assert!(
            p["measured"][key].as_float().is_some(),
            "measured.{key} missing:\n{written}"
        );
    }
    let fsyncs = p["measured"]["fsyncs_per_delivery"].as_float().unwrap();
    assert!(fsyncs > 0.0, "deliveries were synced: {fsyncs}");
    assert!(
        p["meta"]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("loadgen ")),
        "{written}"
    );
    up.terminate();

    // hcu-sizing reads it, alone and with a small workload.
    run_ok(
        Command::new(bin("hcu-sizing"))
            .args(["check", "--capacity"])
            .arg(&out),
        "hcu-sizing check",
    );
    let workload = dir.path().join("workload.toml");
    std::fs::write(
        &workload,
        "users = 100000\npeak_sessions = 2000\npage_views_per_session_hour = 60\n\
         session_minutes = 20\nmessages_per_user_day = 10\nmean_message_bytes = 30000\n\
         stored_bytes_per_user = 500000\nretention_days = 120\n",
    )
    .unwrap();
    let plan = run_ok(
        Command::new(bin("hcu-sizing"))
            .arg("plan")
            .arg("--workload")
            .arg(&workload)
            .arg("--capacity")
            .arg(&out),
        "hcu-sizing plan",
    );
    println!("{plan}");
}
