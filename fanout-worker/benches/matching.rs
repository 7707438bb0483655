//! Matching cost per change as the number of registered queries grows.
//!
//! Every query is `{"filter":{"room":{"_eq":<n>}}}` on `messages` (distinct queries, equality filters);
//! one change is one inserted row. Three workloads, each at 1 000, 100 000 and 1 000 000 queries:
//!
//! - `one_percent_of_changes`: 1 % of changes match (one query each), 99 % match none.
//! - `ten_per_change`: every change matches exactly 10 queries (ten subscriptions share each value).
//! - `one_percent_of_queries`: every change matches 1 % of the registered queries (10, 1 000, 10 000);
//!   throughput is per matched query.
//!
//! With the index, the first two must stay flat as the count grows, and the third must cost the same per
//! match. Run: `cargo bench -p fanout-worker --bench matching`.

use common::change::{Cell, Change, RelColumn, Relation, TxChunk};
use common::filter::{Filter, Limits, VarContext};
use common::normalize::{Access, NormalizeLimits, NormalizedQuery, normalize};
use common::query::{QueryConfig, parse_query};
use common::schema::{Collection, Column};
use common::value::{Datum, Kind};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout_worker::matching::index::Index;
use fanout_worker::matching::matcher::{Frame, Scope, match_chunk};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

const REL: u32 = 16384;
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn template() -> NormalizedQuery {
    let c = Column::new;
    let coll = Collection::new(
        "messages",
        "public",
        "id",
        vec![
            c("id", Kind::Int4),
            c("room", Kind::Int4),
            c("text", Kind::Text),
        ],
    );
    let params = parse_query(
        json!({"filter": {"room": {"_eq": 0}}}).as_object(),
        &QueryConfig::default(),
    )
    .expect("query");
    normalize(
        &coll,
        None,
        None,
        &params,
        &Access::Admin,
        &VarContext::default(),
        NormalizeLimits {
            filter: Limits::default(),
        },
    )
    .expect("normalize")
    .query
}

/// The template with its equality value replaced (normalising a million queries one by one would
/// dominate the run; the result is identical).
fn with_room(t: &NormalizedQuery, room: i64, salt: u32) -> NormalizedQuery {
    let mut q = t.clone();
    fn set(f: &mut Filter, room: i64) {
        match f {
            Filter::Cond(c) if c.field == "room" => c.args = vec![Datum::Int(room)],
            Filter::And(parts) | Filter::Or(parts) => parts.iter_mut().for_each(|p| set(p, room)),
            Filter::Cond(_) => {}
        }
    }
    set(&mut q.filter, room);
    // Queries sharing a value still differ, like real subscriptions with one more (here always true)
    // condition: `room = v AND id <> -salt`.
    if salt > 0 {
        let extra = Filter::Cond(common::filter::Cond {
            field: "id".into(),
            kind: Kind::Int4,
            op: common::filter::Op::Neq,
            args: vec![Datum::Int(-(salt as i64))],
            now: None,
        });
        q.filter = Filter::And(vec![q.filter, extra]);
    }
    q
}

fn index(n: usize, per_value: usize) -> Index {
    let t = template();
    let mut ix = Index::default();
    for i in 0..n {
        let q = with_room(&t, (i / per_value) as i64, (i % per_value) as u32);
        ix.register(q.id(), 0, Arc::new(q), "gw");
    }
    assert_eq!(ix.len(), n, "queries must be distinct");
    ix
}

fn chunk(room: i64) -> TxChunk {
    let c = |n: &str, k: Kind, key: bool| RelColumn {
        name: n.into(),
        kind: k,
        key,
    };
    TxChunk {
        lsn: 1,
        end_lsn: 2,
        xid: 700,
        commit_time: 0,
        seq: 0,
        last: true,
        relations: vec![Relation {
            id: REL,
            schema: "public".into(),
            table: "messages".into(),
            identity: 'f',
            columns: vec![
                c("id", Kind::Int4, true),
                c("room", Kind::Int4, false),
                c("text", Kind::Text, false),
            ],
        }],
        changes: vec![Change::Insert {
            rel: REL,
            new: vec![
                Cell::Text("42".into()),
                Cell::Text(room.to_string()),
                Cell::Text("hello, a message of ordinary length for a chat room".into()),
            ],
        }],
    }
}

fn run(ix: &mut Index, chunk: &TxChunk, out: &mut Vec<Frame>) -> usize {
    out.clear();
    match_chunk(ix, "public", chunk, Scope::All, out);
    out.len()
}

fn bench(c: &mut Criterion) {
    let mut out = Vec::new();

    let mut g = c.benchmark_group("one_percent_of_changes");
    g.throughput(Throughput::Elements(100));
    for n in SIZES {
        let mut ix = index(n, 1);
        // 100 changes: one inside the registered range, 99 outside it.
        let chunks: Vec<TxChunk> = (0..100)
            .map(|i| {
                chunk(if i == 0 {
                    (n / 2) as i64
                } else {
                    (n + i) as i64
                })
            })
            .collect();
        let matched: usize = chunks.iter().map(|ch| run(&mut ix, ch, &mut out)).sum();
        assert_eq!(matched, 1);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for ch in &chunks {
                    black_box(run(&mut ix, ch, &mut out));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ten_per_change");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut ix = index(n, 10);
        let ch = chunk((n / 20) as i64);
        assert_eq!(run(&mut ix, &ch, &mut out), 10);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(run(&mut ix, &ch, &mut out)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("one_percent_of_queries");
    g.sample_size(20);
    for n in SIZES {
        let matches = n / 100;
        g.throughput(Throughput::Elements(matches as u64));
        let mut ix = index(n, matches);
        let ch = chunk(7);
        assert_eq!(run(&mut ix, &ch, &mut out), matches);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(run(&mut ix, &ch, &mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
