//! The coordinator's rules, one test each, with plain values (no Redis).

use super::*;
use common::change::{Cell, Change, RelColumn, Relation};
use common::delivery::{EntryKind, decode_batch};
use common::event::EventKind;
use common::filter::{Limits, VarContext};
use common::normalize::{Access, NormalizeLimits, normalize};
use common::query::{QueryConfig, parse_query};
use common::schema::{Collection, Column};
use common::value::Kind;
use serde_json::json;

const SHARDS: u32 = 4;

fn coll() -> Collection {
    let c = Column::new;
    Collection::new(
        "items",
        "public",
        "id",
        vec![c("id", Kind::Int4), c("grp", Kind::Int4)],
    )
}

/// A query on `items` selecting `grp = g`.
fn query(g: i64) -> NormalizedQuery {
    let q = json!({"fields":["id","grp"],"filter":{"grp":{"_eq":g}}});
    let params = parse_query(q.as_object(), &QueryConfig::default()).unwrap();
    normalize(
        &coll(),
        None,
        None,
        &params,
        &Access::Admin,
        &VarContext::default(),
        NormalizeLimits {
            filter: Limits::default(),
        },
    )
    .unwrap()
    .query
}

fn id(lsn: u64) -> StreamId {
    StreamId { lsn, seq: 0 }
}

/// A one-row insert into `items` committed at `lsn`.
fn insert(lsn: u64, row: i64, grp: i64) -> TxChunk {
    TxChunk {
        lsn,
        end_lsn: lsn + 1,
        xid: lsn as u32,
        commit_time: 0,
        seq: 0,
        last: true,
        relations: vec![Relation {
            id: 1,
            schema: "public".into(),
            table: "items".into(),
            identity: 'f',
            columns: vec![
                RelColumn {
                    name: "id".into(),
                    kind: Kind::Int4,
                    key: true,
                },
                RelColumn {
                    name: "grp".into(),
                    kind: Kind::Int4,
                    key: false,
                },
            ],
        }],
        changes: vec![Change::Insert {
            rel: 1,
            new: vec![Cell::Text(row.to_string()), Cell::Text(grp.to_string())],
        }],
    }
}

fn register(q: &NormalizedQuery, gw: &str, replay: ctl::Replay) -> CtlEntry {
    CtlEntry::Register {
        query: q.id(),
        gateway: gw.into(),
        replay,
        definition: q.canonical_json(),
    }
}

fn from(lsn: u64, token: u64) -> ctl::Replay {
    ctl::Replay::From(ReplayRequest { from: lsn, token })
}

/// What each gateway was sent: (kind, commit LSN, body or replay-done request) per entry, in order.
fn sent(c: &mut Coordinator) -> BTreeMap<String, Vec<(EntryKind, u64, String)>> {
    let mut out = BTreeMap::new();
    for (gw, msg) in c.take_messages().msgs {
        let entries = decode_batch(&msg).unwrap();
        let list: Vec<(EntryKind, u64, String)> = entries
            .into_iter()
            .map(|e| {
                let body = String::from_utf8_lossy(&msg[e.body]).into_owned();
                (e.kind, e.pos.lsn, body)
            })
            .collect();
        out.insert(gw.to_string(), list);
    }
    out
}

fn lsns(list: &[(EntryKind, u64, String)]) -> Vec<(EntryKind, u64)> {
    list.iter().map(|(k, l, _)| (*k, *l)).collect()
}

/// A coordinator at cursor `cursor` that owns every shard, loaded at ctl position 10.
fn owning_all(cursor: u64) -> Coordinator {
    let mut c = Coordinator::new("public", SHARDS, id(cursor), id(10));
    for n in 0..SHARDS {
        c.load_shard(n, id(10), &[], &[], None);
    }
    c
}

#[test]
fn ctl_entries_count_only_for_loaded_shards_and_only_after_the_load() {
    let q = query(1);
    let n = shard_of(q.id(), SHARDS);
    let mut c = Coordinator::new("public", SHARDS, id(100), id(0));
    let reg = || Ok(register(&q, "gw", ctl::Replay::Live));
    assert_eq!(
        c.apply_ctl(id(5), reg()),
        CtlOutcome::NotOurs,
        "shard not loaded"
    );
    c.load_shard(n, id(10), &[], &[], None);
    assert_eq!(
        c.apply_ctl(id(9), reg()),
        CtlOutcome::NotOurs,
        "already in the load"
    );
    assert_eq!(
        c.apply_ctl(id(10), reg()),
        CtlOutcome::NotOurs,
        "at the load position"
    );
    assert_eq!(c.query_count(), 0);
    assert_eq!(c.apply_ctl(id(11), reg()), CtlOutcome::Applied);
    assert_eq!(c.query_count(), 1);
    assert_eq!(
        c.apply_ctl(id(12), Err(CtlError::Missing("op"))),
        CtlOutcome::Invalid
    );
    assert_eq!(
        c.ctl_position(),
        id(12),
        "an unreadable entry still counts as read"
    );
    let mut bad = register(&q, "gw", ctl::Replay::Live);
    if let CtlEntry::Register { definition, .. } = &mut bad {
        *definition = query(2).canonical_json(); // does not hash to the announced id
    }
    assert_eq!(c.apply_ctl(id(13), Ok(bad)), CtlOutcome::Invalid);
    assert_eq!(c.query_count(), 1);
    let unreg = CtlEntry::Unregister {
        query: q.id(),
        gateway: "gw".into(),
    };
    assert_eq!(c.apply_ctl(id(14), Ok(unreg)), CtlOutcome::Applied);
    assert_eq!(c.query_count(), 0);
}

#[test]
fn live_changes_reach_the_registered_gateways_of_matching_queries() {
    let (q1, q2) = (query(1), query(2));
    let mut c = owning_all(100);
    c.apply_ctl(id(11), Ok(register(&q1, "a", ctl::Replay::Live)));
    c.apply_ctl(id(12), Ok(register(&q1, "b", ctl::Replay::Live)));
    c.apply_ctl(id(13), Ok(register(&q2, "c", ctl::Replay::Live)));
    assert!(
        c.start_replays().is_none(),
        "live registrations replay nothing"
    );
    assert_eq!(c.match_live(id(200), Some(&insert(200, 7, 1))), 1);
    assert_eq!(c.cursor(), id(200));
    let out = sent(&mut c);
    assert_eq!(out.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        lsns(&out["a"]),
        [(EntryKind::Event(EventKind::Create), 200)]
    );
    // The neutral data: the list of created rows, without any protocol envelope.
    assert!(
        out["a"][0].2.starts_with("[{") && out["a"][0].2.ends_with("}]"),
        "{:?}",
        out["a"]
    );
    // An unreadable entry moves the cursor and sends nothing.
    assert_eq!(c.match_live(id(201), None), 0);
    assert_eq!(c.cursor(), id(201));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_registration_replays_from_its_lsn_to_the_cursor_then_says_done() {
    let q = query(1);
    let mut c = owning_all(300);
    c.apply_ctl(id(11), Ok(register(&q, "gw", from(150, 7))));
    let pass = c.start_replays().expect("a replay is queued");
    assert_eq!(pass.range(), Some((id(150), id(300))));
    assert!(!pass.wants(id(100)), "before the request");
    assert!(pass.wants(id(200)));
    assert!(!pass.wants(id(301)), "after the cursor: reaches it live");
    c.replay_chunk(&pass, id(200), &insert(200, 1, 1));
    c.replay_chunk(&pass, id(250), &insert(250, 2, 9)); // not selected by the query
    let served = c.finish_replays(pass);
    assert_eq!(
        served,
        [Served {
            shard: shard_of(q.id(), SHARDS),
            field: RegField::new(q.id(), "gw"),
            request: ReplayRequest {
                from: 150,
                token: 7
            },
        }]
    );
    let out = sent(&mut c);
    assert_eq!(
        lsns(&out["gw"]),
        [
            (EntryKind::Event(EventKind::Create), 200),
            (EntryKind::ReplayDone, 300)
        ],
        "the replayed event, then the end of the replay at the cursor"
    );
    assert_eq!(
        out["gw"][1].2, "150@7",
        "the end names the request it answers"
    );
}

#[test]
fn a_replay_asked_beyond_the_cursor_reads_nothing_but_still_ends() {
    let q = query(1);
    let mut c = owning_all(100);
    c.apply_ctl(id(11), Ok(register(&q, "gw", from(500, 1))));
    let pass = c.start_replays().unwrap();
    assert_eq!(pass.range(), None);
    assert_eq!(c.finish_replays(pass).len(), 1);
    assert_eq!(lsns(&sent(&mut c)["gw"]), [(EntryKind::ReplayDone, 100)]);
}

#[test]
fn replays_queued_together_share_one_pass_and_each_gets_only_its_range() {
    let q = query(1);
    let mut c = owning_all(400);
    c.apply_ctl(id(11), Ok(register(&q, "early", from(100, 1))));
    c.apply_ctl(id(12), Ok(register(&q, "late", from(300, 2))));
    assert_eq!(c.replays_queued(), 2);
    let pass = c.start_replays().unwrap();
    assert_eq!(pass.len(), 2);
    assert_eq!(pass.range(), Some((id(100), id(400))), "the union of both");
    for lsn in [150, 350] {
        c.replay_chunk(&pass, id(lsn), &insert(lsn, lsn as i64, 1));
    }
    c.finish_replays(pass);
    let out = sent(&mut c);
    assert_eq!(
        lsns(&out["early"]),
        [
            (EntryKind::Event(EventKind::Create), 150),
            (EntryKind::Event(EventKind::Create), 350),
            (EntryKind::ReplayDone, 400)
        ]
    );
    assert_eq!(
        lsns(&out["late"]),
        [
            (EntryKind::Event(EventKind::Create), 350),
            (EntryKind::ReplayDone, 400)
        ]
    );
    assert!(c.start_replays().is_none(), "the queue was drained");
}

#[test]
fn a_loaded_shard_gets_its_registrations_and_catches_up_from_its_checkpoint() {
    let q = query(1);
    let n = shard_of(q.id(), SHARDS);
    let defs = vec![(q.id().to_string(), q.canonical_json())];
    let regs = vec![
        (RegField::new(q.id(), "a").encode(), "-".to_owned()),
        (RegField::new(q.id(), "b").encode(), "250@3".to_owned()),
        // A registration whose definition is gone (being removed) is skipped.
        (RegField::new(query(5).id(), "c").encode(), "-".to_owned()),
    ];
    let mut c = Coordinator::new("public", SHARDS, id(300), id(0));
    assert_eq!(c.load_shard(n, id(20), &defs, &regs, Some(id(200))), 0);
    assert_eq!(c.query_count(), 1);
    let pass = c.start_replays().unwrap();
    assert_eq!(
        pass.len(),
        2,
        "the shard's catch-up and b's pending request"
    );
    assert_eq!(pass.range(), Some((id(200), id(300))));
    c.replay_chunk(&pass, id(220), &insert(220, 1, 1));
    c.replay_chunk(&pass, id(260), &insert(260, 2, 1));
    c.finish_replays(pass);
    let out = sent(&mut c);
    assert_eq!(
        lsns(&out["a"]),
        [
            (EntryKind::Event(EventKind::Create), 220),
            (EntryKind::Event(EventKind::Create), 260)
        ],
        "the catch-up goes to every gateway of the shard's queries"
    );
    // b's request lies inside the catch-up, which already sends it everything once; then its end.
    assert_eq!(
        lsns(&out["b"]),
        [
            (EntryKind::Event(EventKind::Create), 220),
            (EntryKind::Event(EventKind::Create), 260),
            (EntryKind::ReplayDone, 300)
        ]
    );
    // A ctl entry from before the load repeats what was loaded and is ignored.
    assert_eq!(
        c.apply_ctl(id(15), Ok(register(&q, "a", ctl::Replay::Live))),
        CtlOutcome::NotOurs
    );
}

#[test]
fn a_checkpoint_at_or_past_the_cursor_needs_no_catch_up() {
    let mut c = Coordinator::new("public", SHARDS, id(300), id(0));
    c.load_shard(0, id(1), &[], &[], Some(id(300)));
    c.load_shard(1, id(1), &[], &[], Some(id(400)));
    c.load_shard(2, id(1), &[], &[], None);
    assert!(c.start_replays().is_none());
}

#[test]
fn unreadable_definitions_and_registrations_are_counted_and_skipped() {
    let q = query(1);
    let n = shard_of(q.id(), SHARDS);
    let defs = vec![
        (q.id().to_string(), q.canonical_json()),
        ("00".into(), q.canonical_json()), // id does not match the definition
        (query(2).id().to_string(), "{not json".into()),
    ];
    let regs = vec![
        ("no-bar".to_owned(), "-".to_owned()),
        (RegField::new(q.id(), "a").encode(), "1@x".to_owned()),
        (RegField::new(q.id(), "b").encode(), "-".to_owned()),
    ];
    let mut c = Coordinator::new("public", SHARDS, id(300), id(0));
    assert_eq!(c.load_shard(n, id(1), &defs, &regs, None), 4);
    assert_eq!(
        c.gateways()
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[test]
fn dropping_a_shard_forgets_its_queries_and_its_queued_replays() {
    let q1 = query(1);
    let q2 = (2..)
        .map(query)
        .find(|q| shard_of(q.id(), SHARDS) != shard_of(q1.id(), SHARDS))
        .unwrap();
    let mut c = owning_all(300);
    c.apply_ctl(id(11), Ok(register(&q1, "gw", from(100, 1))));
    c.apply_ctl(id(12), Ok(register(&q2, "gw", from(100, 2))));
    c.drop_shard(shard_of(q1.id(), SHARDS));
    assert_eq!(c.query_count(), 1);
    let pass = c.start_replays().unwrap();
    assert_eq!(pass.len(), 1, "only q2's replay is left");
    c.finish_replays(pass);
    sent(&mut c);
    c.match_live(id(301), Some(&insert(301, 1, 1)));
    assert!(sent(&mut c).is_empty(), "q1 is gone");
    assert_eq!(
        c.apply_ctl(id(13), Ok(register(&q1, "gw", ctl::Replay::Live))),
        CtlOutcome::NotOurs,
        "the shard is no longer ours"
    );
}

#[test]
fn a_dead_gateway_loses_its_registrations_and_others_keep_theirs() {
    let q = query(1);
    let mut c = owning_all(100);
    c.apply_ctl(id(11), Ok(register(&q, "dead", ctl::Replay::Live)));
    c.apply_ctl(id(12), Ok(register(&q, "alive", ctl::Replay::Live)));
    assert_eq!(c.drop_gateway("dead"), [(q.id(), shard_of(q.id(), SHARDS))]);
    c.match_live(id(200), Some(&insert(200, 1, 1)));
    assert_eq!(sent(&mut c).keys().collect::<Vec<_>>(), ["alive"]);
    assert_eq!(c.drop_gateway("nobody"), []);
}

#[test]
fn a_message_over_the_budget_asks_to_be_published() {
    let q = query(1);
    let mut c = owning_all(100);
    c.apply_ctl(id(11), Ok(register(&q, "gw", ctl::Replay::Live)));
    let mut lsn = 200;
    while !c.over_budget() {
        c.match_live(id(lsn), Some(&insert(lsn, lsn as i64, 1)));
        lsn += 1;
        assert!(lsn < 200_000, "never over budget");
    }
    let m = c.take_messages();
    assert_eq!(m.frames, lsn - 200);
    assert!(!c.over_budget());
}

/// A transaction that edits a read permission of policy `policy`, committed at `lsn`.
fn permission_edit(lsn: u64, policy: &str) -> TxChunk {
    let col = |name: &str, key: bool| RelColumn {
        name: name.into(),
        kind: Kind::Text,
        key,
    };
    TxChunk {
        lsn,
        end_lsn: lsn + 1,
        xid: lsn as u32,
        commit_time: 0,
        seq: 0,
        last: true,
        relations: vec![Relation {
            id: 7,
            schema: "public".into(),
            table: "directus_permissions".into(),
            identity: 'f',
            columns: vec![col("id", true), col("policy", false), col("action", false)],
        }],
        changes: vec![Change::Insert {
            rel: 7,
            new: vec![
                Cell::Text("1".into()),
                Cell::Text(policy.into()),
                Cell::Text("read".into()),
            ],
        }],
    }
}

#[test]
fn a_rights_change_reaches_every_gateway_ahead_of_later_events_and_in_replays() {
    let (q1, q2) = (query(1), query(2));
    let mut c = owning_all(100);
    c.apply_ctl(id(11), Ok(register(&q1, "gw-a", ctl::Replay::Live)));
    c.apply_ctl(id(12), Ok(register(&q2, "gw-b", ctl::Replay::Live)));
    c.match_live(id(101), Some(&permission_edit(101, "P1")));
    c.match_live(id(102), Some(&insert(102, 1, 1)));
    let out = sent(&mut c);
    assert_eq!(
        out["gw-a"],
        [
            (EntryKind::Rights, 101, "s:0,1,2,3\np:P1".to_owned()),
            (
                EntryKind::Event(EventKind::Create),
                102,
                "[{\"id\":1,\"grp\":1}]".to_owned()
            ),
        ],
        "the rights entry comes first, with the deps the change touched"
    );
    assert_eq!(
        lsns(&out["gw-b"]),
        [(EntryKind::Rights, 101)],
        "a gateway with nothing matched still hears of it"
    );
    // A replay over the same commit announces it again to the gateway it replays for (gateways
    // drop what they already applied), ahead of the replayed events.
    c.apply_ctl(id(13), Ok(register(&q1, "gw-c", from(100, 5))));
    let pass = c.start_replays().expect("queued");
    c.replay_chunk(&pass, id(101), &permission_edit(101, "P1"));
    c.replay_chunk(&pass, id(102), &insert(102, 1, 1));
    c.finish_replays(pass);
    let out = sent(&mut c);
    assert_eq!(
        lsns(&out["gw-c"]),
        [
            (EntryKind::Rights, 101),
            (EntryKind::Event(EventKind::Create), 102),
            (EntryKind::ReplayDone, 102),
        ]
    );
    assert!(!out.contains_key("gw-b"), "not replayed for gw-b");
    assert_eq!(
        out["gw-c"][0].2,
        format!("s:{}\np:P1", shard_of(q1.id(), SHARDS)),
        "a replay speaks for the shard of the query it replays"
    );
    // An ordinary transaction announces nothing.
    c.match_live(id(103), Some(&insert(103, 5, 9)));
    assert!(sent(&mut c).is_empty());
}

/// `posts.author` → `authors`, subscribed with `author.email`.
fn relational_query() -> NormalizedQuery {
    let c = Column::new;
    let mut posts = Collection::new(
        "posts",
        "public",
        "id",
        vec![c("id", Kind::Int4), c("author", Kind::Int4)],
    );
    posts.m2o.insert("author".into(), "authors".into());
    let authors = Collection::new(
        "authors",
        "public",
        "id",
        vec![
            c("id", Kind::Int4),
            c("email", Kind::Text),
            c("seen", Kind::Text),
        ],
    );
    let related: HashMap<String, (Collection, Access)> =
        [("authors".to_owned(), (authors, Access::Admin))]
            .into_iter()
            .collect();
    let q = json!({"fields":["id","author.email"]});
    let params = parse_query(q.as_object(), &QueryConfig::default()).unwrap();
    common::normalize::normalize_with(
        &posts,
        None,
        None,
        &params,
        &Access::Admin,
        &VarContext::default(),
        NormalizeLimits::default(),
        &related,
    )
    .unwrap()
    .query
}

/// A coordinator owning every shard with [`relational_query`] registered for gateway `gw`.
fn with_relational_query() -> Coordinator {
    let mut c = owning_all(100);
    let q = relational_query();
    assert_eq!(
        c.apply_ctl(id(11), Ok(register(&q, "gw", ctl::Replay::Live))),
        CtlOutcome::Applied
    );
    c
}

fn author_update(lsn: u64, old_email: &str, email: &str, old_seen: &str, seen: &str) -> TxChunk {
    let col = |name: &str, key: bool| RelColumn {
        name: name.into(),
        kind: if name == "id" { Kind::Int4 } else { Kind::Text },
        key,
    };
    let t = |s: &str| Cell::Text(s.into());
    TxChunk {
        lsn,
        end_lsn: lsn + 1,
        xid: lsn as u32,
        commit_time: 0,
        seq: 0,
        last: true,
        relations: vec![Relation {
            id: 7,
            schema: "public".into(),
            table: "authors".into(),
            identity: 'f',
            columns: vec![col("id", true), col("email", false), col("seen", false)],
        }],
        changes: vec![Change::Update {
            rel: 7,
            old: Some(common::change::OldRow {
                key_only: false,
                cells: vec![t("3"), t(old_email), t(old_seen)],
            }),
            new: vec![t("3"), t(email), t(seen)],
        }],
    }
}

#[test]
fn a_change_to_a_shown_related_row_reads_its_items_again_and_sends_them_as_an_update() {
    let mut c = with_relational_query();

    // A column the query does not show: nothing to read, nothing held.
    c.match_live(
        id(101),
        Some(&author_update(101, "a@x", "a@x", "mon", "tue")),
    );
    assert!(!c.holding());
    assert!(sent(&mut c).is_empty());

    // The email: the posts of author 3 are read again, then the author, then one update goes out.
    c.match_live(
        id(102),
        Some(&author_update(102, "a@x", "b@x", "tue", "tue")),
    );
    assert!(c.holding());
    let reads = c.follow_reads();
    assert_eq!(reads.len(), 1);
    assert!(
        reads[0]
            .sql
            .text
            .contains("FROM \"public\".\"posts\" t WHERE t.\"author\" = ANY("),
        "{}",
        reads[0].sql.text
    );
    assert_eq!(reads[0].sql.params[0].as_deref(), Some("{\"3\"}"));
    assert!(c.follow_reads().is_empty(), "asked once");
    let rows = |ids: &[&str]| -> Vec<Vec<Option<String>>> {
        ids.iter()
            .map(|i| vec![Some(i.to_string()), Some("3".into())])
            .collect()
    };
    c.related_rows_followed(&reads[0], &rows(&["10", "11"]));
    let related = c.related_reads();
    assert_eq!(
        related.len(),
        1,
        "one statement for every author the frame shows"
    );
    c.related_rows(&related[0], &[vec![Some("3".into()), Some("b@x".into())]]);
    assert!(c.related_reads().is_empty());
    c.release_held();
    assert!(!c.holding());
    let out = sent(&mut c);
    assert_eq!(
        out["gw"],
        vec![(
            EntryKind::Event(EventKind::Update),
            102,
            r#"[{"id":10,"author":{"email":"b@x"}},{"id":11,"author":{"email":"b@x"}}]"#.to_owned()
        )]
    );
}

#[test]
fn a_follow_of_many_items_is_sent_in_frames_of_at_most_a_thousand() {
    let mut c = with_relational_query();
    c.match_live(
        id(102),
        Some(&author_update(102, "a@x", "b@x", "tue", "tue")),
    );
    let reads = c.follow_reads();
    let rows: Vec<Vec<Option<String>>> = (0..2500)
        .map(|i| vec![Some(i.to_string()), Some("3".into())])
        .collect();
    c.related_rows_followed(&reads[0], &rows);
    let related = c.related_reads();
    assert_eq!(related.len(), 3, "one statement per frame for its authors");
    for r in &related {
        c.related_rows(r, &[vec![Some("3".into()), Some("b@x".into())]]);
    }
    c.release_held();
    let msgs = c.take_messages().msgs;
    let entries = decode_batch(&msgs[0].1).unwrap();
    let idx: Vec<u16> = entries.iter().map(|e| e.pos.idx).collect();
    assert_eq!(
        idx,
        [0, 1, 2],
        "each frame its own position, so none is taken for a repeat"
    );
    let out: BTreeMap<String, Vec<(EntryKind, u64, String)>> = [(
        "gw".to_owned(),
        entries
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.pos.lsn,
                    String::from_utf8_lossy(&msgs[0].1[e.body.clone()]).into_owned(),
                )
            })
            .collect(),
    )]
    .into_iter()
    .collect();
    let sizes: Vec<usize> = out["gw"]
        .iter()
        .map(|(k, lsn, body)| {
            assert_eq!((*k, *lsn), (EntryKind::Event(EventKind::Update), 102));
            serde_json::from_str::<serde_json::Value>(body)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [1000, 1000, 500]);
}
