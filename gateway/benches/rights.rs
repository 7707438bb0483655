//! The gateway's share of one rights change: 100 000 live subscriptions (one per connection) spread
//! over 100 policies; one policy's change touches its 1 000.
//!
//! Measures [`Hub::deliver`] of the worker's rights entry: decode, find the touched connections in the
//! registry (by policy, not by scanning), cut each one's subscription in the hub and flag its socket
//! task; then, as each socket task would after re-reading the rights, release its subscription (same
//! query). The database reads of the re-evaluation are not in it (they are one identity query and one
//! permissions query per connection, and per query shape; BENCHMARKS.md has the end-to-end numbers).
//! A change to a policy nobody here uses is measured too: the cost every gateway pays for every change.
//!
//! Run: `cargo bench -p gateway --bench rights`.

use bytes::Bytes;
use common::delivery::{Position, append_rights, start_batch};
use common::normalize::QueryId;
use common::rights::{Announcement, Dep, encode_announcement};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::auth::Accountability;
use gateway::hub::{Hub, SubKey};
use gateway::outbox::Outbox;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 100_000;
const POLICIES: usize = 100;

fn policy(p: usize) -> String {
    format!("00000000-0000-4000-8000-{p:012}")
}

fn rights_entry(lsn: u64, policy: &str) -> Bytes {
    let body = encode_announcement(&Announcement {
        deps: vec![Dep::Policy(policy.to_owned())],
        shards: (0..256).collect(),
    });
    let mut m = start_batch();
    append_rights(
        &mut m,
        Position {
            lsn,
            seq: 0,
            idx: 0,
        },
        1,
        0,
        &body,
    );
    Bytes::from(m)
}

fn bench(c: &mut Criterion) {
    let hub = Hub::default();
    let identities: Vec<Arc<Accountability>> = (0..POLICIES)
        .map(|p| {
            Arc::new(Accountability {
                user: None,
                role: Some(format!("role-{p}")),
                roles: vec![format!("role-{p}")],
                admin: false,
                app: false,
                policies: vec![policy(p)],
                considered: vec![policy(p)],
                ip: None,
            })
        })
        .collect();
    let mut keys = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let p = i % POLICIES;
        let conn = i as u64;
        let outbox = Arc::new(Outbox::new(1 << 20));
        // One query per policy, as a permission filter makes them.
        let id = QueryId(p as u128 + 1);
        let key = SubKey { conn, sub: 1 };
        hub.rights.set_identity(conn, &outbox, &identities[p]);
        hub.rights.attach_sub(conn, id, key, |cut| {
            hub.attach_with_cut(id, "{}".into(), 0, key, outbox.clone(), Bytes::new(), cut)
        });
        hub.activate(id, key, None, 0);
        keys.push((conn, id, key, outbox));
    }
    let touched: Vec<_> = keys
        .iter()
        .filter(|k| k.0 as usize % POLICIES == 7)
        .cloned()
        .collect();
    let mut lsn = 0u64;
    let mut g = c.benchmark_group("rights_change");
    g.throughput(Throughput::Elements(touched.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("touching", touched.len()),
        &touched.len(),
        |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    lsn += 1;
                    let msg = rights_entry(lsn, &policy(7));
                    let started = Instant::now();
                    let d = hub.deliver(msg);
                    for (conn, id, key, outbox) in &touched {
                        outbox.take_rights_flag();
                        hub.rights.take_cut(*conn);
                        hub.release(*id, *key, None);
                        hub.rights.evaluated(*conn);
                    }
                    spent += started.elapsed();
                    assert_eq!(d.rights, touched.len());
                }
                spent
            })
        },
    );
    g.throughput(Throughput::Elements(1));
    g.bench_function("touching_none", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                lsn += 1;
                let msg = rights_entry(lsn, "not-a-policy-anyone-has");
                let started = Instant::now();
                let d = hub.deliver(msg);
                spent += started.elapsed();
                assert_eq!(d.rights, 0);
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
