//! Slot confirmation waits for the slowest consumer; the replica-identity event trigger quotes what it names.

use super::*;

#[test]
fn confirmation_waits_for_the_slowest_consumer() {
    let id = |lsn, seq| StreamId { lsn, seq };
    assert_eq!(
        confirmable(500, Some(id(400, 0)), &[]),
        500,
        "no consumers: what is appended"
    );
    assert_eq!(
        confirmable(500, Some(id(400, 0)), &[id(400, 0), id(400, 0)]),
        500,
        "caught up"
    );
    assert_eq!(
        confirmable(500, Some(id(400, 0)), &[id(400, 0), id(300, 0)]),
        300,
        "one behind"
    );
    assert_eq!(confirmable(900, None, &[id(300, 2)]), 300);
}

#[test]
fn identity_trigger_quotes_schema_and_excluded_tables() {
    let sql = identity_trigger_sql("my\"schema", &["o'hare".into(), "directus_sessions".into()]);
    assert!(
        sql.contains("\"my\"\"schema\".realtime_replica_identity_full()"),
        "{sql}"
    );
    assert!(sql.contains("d.schema_name = 'my\"schema'"), "{sql}");
    assert!(
        sql.contains("ARRAY['o''hare', 'directus_sessions']::text[]"),
        "{sql}"
    );
    assert!(identity_trigger_sql("public", &[]).contains("ARRAY[]::text[]"));
}
