//! Agent messages and write-log lines round-trip; rows accept Directus's numbers-as-strings.

use super::*;

#[test]
fn rows_accept_numbers_and_strings() {
    let raw: Box<RawValue> = serde_json::from_str(
        r#"[{"writer":1,"seq":"7","t0":"1700000000000000","payload":"xx"},{"writer":"2","seq":3,"t0":null}]"#,
    )
    .unwrap();
    let r = rows(Some(&raw));
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].writer, r[0].seq, r[0].t0),
        (1, 7, Some(1_700_000_000_000_000))
    );
    assert_eq!((r[1].writer, r[1].seq, r[1].t0), (2, 3, None));
}

#[test]
fn write_log_round_trip() {
    let dir = testkit::services::TempDir::new("lt-log").unwrap();
    let p = dir.path().join("w.jsonl");
    let w = [
        Write {
            writer: 0,
            seq: 1,
            room: 1,
            owner: None,
            commit_us: Some(5),
        },
        Write {
            writer: 1,
            seq: 0,
            room: 0,
            owner: Some(3),
            commit_us: None,
        },
    ];
    std::fs::write(
        &p,
        w.iter().map(write_log_line).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let log = read_write_log(&p).unwrap();
    assert_eq!(log.writes(), &w[..]);
}

#[test]
fn commands_and_events_are_json_lines() {
    let c: Cmd =
        serde_json::from_str(r#"{"cmd":"account","writes":"/tmp/x","phases":[1,2]}"#).unwrap();
    assert!(matches!(c, Cmd::Account { phases, .. } if phases == vec![1, 2]));
    let e = serde_json::to_string(&AgentEvent::Ready).unwrap();
    assert_eq!(e, r#"{"event":"ready"}"#);
}
