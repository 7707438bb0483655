//! Gateway fan-out: one change on one query delivered to 10 000 local subscribers.
//!
//! Measures [`Hub::deliver`]: decode the worker's batch, dedupe by position, and queue the shared event
//! data with each subscriber's uid suffix in its outbox (no per-subscriber JSON). Draining the outboxes (the
//! socket tasks' job) happens outside the timed region. Throughput is in frames queued.
//!
//! Run: `cargo bench -p gateway --bench fanout`.

use bytes::Bytes;
use common::delivery::{Entry, EntryKind, Position, encode_batch};
use common::event::EventKind;
use common::normalize::QueryId;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::hub::{Hub, SubKey};
use gateway::outbox::Outbox;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn body() -> Vec<u8> {
    // A typical `create` for a chat message, as the worker encodes it: the neutral data (the socket task
    // adds the Directus head and the uid).
    br#"[{"id":"1048576","room":7,"text":"hello, a message of ordinary length for a chat room","created_at":"2026-11-23T12:00:00.000Z"}]"#.to_vec()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("deliver_one_change");
    for subs in [1_000usize, 10_000] {
        let hub = Hub::default();
        let id = QueryId(0xfeed);
        let def: Arc<str> = "{}".into();
        let outboxes: Vec<Arc<Outbox>> =
            (0..subs).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for (i, ob) in outboxes.iter().enumerate() {
            let key = SubKey {
                conn: i as u64,
                sub: 0,
            };
            let suffix = Bytes::from(format!(r#","uid":"{i}"}}"#));
            hub.attach(id, def.clone(), 0, key, ob.clone(), suffix);
            hub.activate(id, key, None, 0);
        }
        let body = body();
        let mut lsn = 0u64;
        g.throughput(Throughput::Elements(subs as u64));
        g.bench_with_input(BenchmarkId::from_parameter(subs), &subs, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    lsn += 1;
                    let msg = Bytes::from(encode_batch(&[Entry {
                        kind: EntryKind::Event(EventKind::Create),
                        query: id,
                        pos: Position {
                            lsn,
                            seq: 0,
                            idx: 0,
                        },
                        xid: 1,
                        commit_time: 0,
                        body: &body[..],
                    }]));
                    let start = Instant::now();
                    let d = hub.deliver(msg);
                    spent += start.elapsed();
                    assert_eq!(d.frames, subs);
                    for ob in &outboxes {
                        ob.drain();
                    }
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
