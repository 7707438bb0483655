//! Flags and config files parse into the same plans; filters and queries per scenario.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn args(list: &[&str]) -> RunArgs {
    Cli::parse_from(std::iter::once("run").chain(list.iter().copied())).run
}

#[test]
fn command_line_overrides_file_overrides_defaults() {
    let dir = testkit::services::TempDir::new("lt-cfg").unwrap();
    let path = dir.path().join("bench.toml");
    std::fs::write(
        &path,
        "scenario = \"filters\"\nconnections = 500\nrate = 50.0\nlocal = true\nsource-ips = \"127.0.0.2-127.0.0.4\"\nstop-p99-ms = 20.0\n",
    )
    .unwrap();
    let cfg = Config::resolve(&args(&[
        "--config",
        path.to_str().unwrap(),
        "--rate",
        "75",
        "--rate-step",
        "25",
    ]))
    .unwrap();
    assert_eq!(cfg.scenario, Scenario::Filters);
    assert_eq!(cfg.connections, 500, "from the file");
    assert_eq!(cfg.rate, 75.0, "the flag wins");
    assert_eq!(cfg.rate_step, 25.0);
    assert_eq!(cfg.stop_p99_ms, Some(20.0));
    assert_eq!(cfg.writers, 2, "default");
    assert_eq!(cfg.match_fraction, 0.5, "the filters scenario's default");
    assert_eq!(cfg.source_ip_list().unwrap().len(), 3);

    let json = dir.path().join("bench.json");
    std::fs::write(
        &json,
        r#"{"scenario":"per-user","local":true,"connections":7}"#,
    )
    .unwrap();
    let cfg = Config::resolve(&args(&["--config", json.to_str().unwrap()])).unwrap();
    assert_eq!((cfg.scenario, cfg.connections), (Scenario::PerUser, 7));

    std::fs::write(&json, r#"{"local":true,"conections":7}"#).unwrap();
    let err = Config::resolve(&args(&["--config", json.to_str().unwrap()])).unwrap_err();
    assert!(format!("{err:#}").contains("conections"), "{err:#}");
}

#[test]
fn validation_names_every_problem() {
    let err = Config::resolve(&args(&["--connections", "0", "--rest", "http://x"])).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("--url"), "{text}");
    assert!(text.contains("--token"), "{text}");
    assert!(text.contains("--connections"), "{text}");
    let err = Config::resolve(&args(&[
        "--local",
        "--connections",
        "40000",
        "--client-procs",
        "2",
    ]))
    .unwrap_err();
    assert!(format!("{err:#}").contains("--client-procs"));
    assert_eq!(
        Config::resolve(&args(&["--local", "--connections", "40000"]))
            .unwrap()
            .procs(),
        3
    );
}

#[test]
fn the_shipped_example_config_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/fanout-knee.toml");
    let cfg = Config::resolve(&args(&["--config", path, "--connections", "10"])).unwrap();
    assert_eq!(cfg.stop_p99_ms, Some(50.0));
    assert_eq!(cfg.connections, 10);
}

#[test]
fn reports_hide_secrets() {
    let c = Config {
        token: Some("secret-token".into()),
        db: Some("postgres://u:pw@db:5432/x".into()),
        url: vec!["ws://h:1/websocket?access_token=abc".into()],
        ..Config::default()
    }
    .redacted();
    let text = serde_json::to_string(&c).unwrap();
    for secret in ["secret-token", "pw@", "abc"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("db:5432"));
}

#[test]
fn ip_ranges() {
    assert_eq!(
        parse_ip_range("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap(),
        vec![
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::new(127, 0, 0, 3),
            Ipv4Addr::new(127, 0, 0, 4),
            Ipv4Addr::new(127, 0, 1, 1)
        ]
    );
    assert!(parse_ip_range("127.0.0.4-127.0.0.2").is_err());
    assert!(parse_ip_range("x").is_err());
}

#[test]
fn targets_agree_with_filters() {
    use crate::accounting::SubFilter::*;
    // Filters: a hit lands on exactly one subscription's room.
    let t = write_target(Scenario::Filters, 10, 2, 0.5, 0.1, 13);
    assert_eq!(t.reaches, 1);
    assert_eq!(sub_filter(Scenario::Filters, 6, 1, 2), Room(t.room));
    assert_eq!(
        write_target(Scenario::Filters, 10, 2, 0.5, 0.7, 13).reaches,
        0
    );
    // Per-user: the owner is a connection's user.
    let t = write_target(Scenario::PerUser, 10, 1, 1.0, 0.0, 23);
    assert_eq!(t.owner, Some(3));
    assert_eq!(sub_filter(Scenario::PerUser, 3, 0, 1), Owner(3));
    // Fanout: every subscription.
    assert_eq!(
        write_target(Scenario::Fanout, 10, 3, 1.0, 0.99, 0).reaches,
        30
    );
}

#[test]
fn query_forms() {
    let q = subscribe_query(QueryForm::String, 7, SubFilter::Room(3), false, false);
    assert_eq!(q["fields"], "writer,seq,t0,payload");
    let f: Json = serde_json::from_str(q["filter"].as_str().unwrap()).unwrap();
    assert_eq!(f, serde_json::json!({"run":{"_eq":7},"room":{"_eq":3}}));
    let q = subscribe_query(QueryForm::Native, 7, SubFilter::Owner(3), true, false);
    assert_eq!(q["filter"], serde_json::json!({"run":{"_eq":7}}));
    assert_eq!(q["limit"], 100);
}
