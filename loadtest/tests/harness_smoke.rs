//! The load-test harness end to end against a local cluster (real PostgreSQL, Redis, gateway and
//! fanout-worker): once through the library with in-process clients, once through the `loadtest` binary
//! with two `loadtest agent` client processes. Both must report a clean run with exactly the deliveries
//! the write log implies.

use loadtest::scenario::{Config, Scenario};
use serde_json::Value as Json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_the_library_delivers_every_write_to_every_subscriber() {
    let out = testkit::services::TempDir::new("lt-smoke").unwrap();
    let cfg = Config {
        scenario: Scenario::Fanout,
        local: true,
        gateways: 1,
        workers: 1,
        connections: 50,
        rate: 20.0,
        duration: 3.0,
        idle_secs: 0.5,
        out: out.path().to_owned(),
        ..Config::default()
    };
    cfg.validate().unwrap();
    let report = loadtest::harness::run(cfg).await.unwrap();
    let t = &report.delivery.tally;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(
        (t.missing, t.duplicated, t.out_of_order, t.unexpected),
        (0, 0, 0, 0)
    );
    let writes = report.writes.committed;
    assert!((40..=80).contains(&writes), "about 20/s for 3 s: {writes}");
    assert_eq!(t.subscriptions, 50);
    assert_eq!(
        t.expected,
        writes * 50,
        "every write reaches every subscriber"
    );
    assert_eq!(t.delivered, writes * 50);
    assert_eq!(report.latency_ms.count, writes * 50);
    assert_eq!(report.connections.counters.subs_ok, 50);
    assert_eq!(report.writes.commit_time_source, "pg_xact_commit_timestamp");
    assert!(report.latency_ms.p50 > 0.0);
    let json: Json =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["delivery"]["tally"]["delivered"], writes * 50);
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("PASSED") && html.matches("<svg").count() >= 5);
    // Self-contained: nothing is loaded from anywhere (the SVG namespace URI is only a name).
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
}

#[tokio::test]
async fn filters_through_the_binary_with_two_client_processes() {
    let out = testkit::services::TempDir::new("lt-smoke-bin").unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "--local",
            "--scenario",
            "filters",
            "--connections",
            "40",
            "--subs-per-conn",
            "2",
            "--client-procs",
            "2",
            "--rate",
            "40",
            "--duration",
            "2",
            "--idle-secs",
            "0.5",
            "--out",
        ])
        .arg(out.path())
        .kill_on_drop(true)
        .status()
        .await
        .unwrap();
    let json: Json =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert!(status.success(), "{json:#}");
    assert_eq!(json["passed"], true);
    assert_eq!(json["client_processes"], 2);
    let t = &json["delivery"]["tally"];
    assert_eq!(t["subscriptions"], 80);
    for k in ["missing", "duplicated", "out_of_order", "unexpected"] {
        assert_eq!(t[k], 0, "{k}: {t}");
    }
    // Half the writes (match-fraction 0.5) go to exactly one of the 80 distinct filters.
    let writes = json["writes"]["committed"].as_u64().unwrap();
    let expected = t["expected"].as_u64().unwrap();
    assert!(expected > 0 && expected < writes, "{expected} of {writes}");
    assert_eq!(t["delivered"], expected);
}
