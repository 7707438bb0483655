//! The gateway's local subscriptions: query id → subscribers on this gateway.
//!
//! Delivery: a batch from a worker carries (query, position, xid, body) entries. For each, the hub drops
//! anything at or below the last position delivered for that query (workers are at-least-once: failover,
//! replays and duplicated publishes are absorbed here), then hands the shared body to each subscriber's
//! [`Outbox`] with that subscriber's uid suffix. No JSON is encoded per subscriber.
//!
//! Gap-free init: a new subscriber is attached (and its events buffered) *before* its snapshot is read;
//! after the `init` frame is written, buffered and later events are filtered with the snapshot's
//! visibility until their commit LSN passes the LSN read after the snapshot, so nothing between snapshot
//! and stream is missed or doubled.

use crate::outbox::Outbox;
use bytes::Bytes;
use common::delivery::{PgSnapshot, Position, decode_batch};
use common::normalize::QueryId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Lock stripes: deliveries for different queries proceed in parallel with subscribes.
const STRIPES: usize = 16;

/// Identifies one subscription of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKey {
    pub conn: u64,
    pub sub: u32,
}

enum SubState {
    /// Snapshot not written yet: events wait here (bounded by the outbox budget).
    Pending {
        buf: Vec<(u64, u32, Bytes)>,
        bytes: usize,
    },
    /// `init` written: skip events the snapshot already contains, until the stream passes `until`.
    Filtering {
        snap: Arc<PgSnapshot>,
        until: u64,
    },
    Live,
}

struct LocalSub {
    key: SubKey,
    outbox: Arc<Outbox>,
    suffix: Bytes,
    state: SubState,
}

struct LocalQuery {
    def_json: Arc<str>,
    /// Last position delivered (dedupe floor).
    last: Position,
    /// Where this gateway's registration asked the stream to be replayed from.
    from: u64,
    subs: Vec<LocalSub>,
}

/// What delivering one batch did (for metrics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub entries: usize,
    pub duplicates: usize,
    pub frames: usize,
}

pub struct Hub {
    stripes: Vec<Mutex<HashMap<QueryId, LocalQuery>>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Hub {
    fn stripe(&self, id: &QueryId) -> &Mutex<HashMap<QueryId, LocalQuery>> {
        &self.stripes[(id.0 as usize) % STRIPES]
    }

    /// Add a pending subscriber. Returns true if the query is new on this gateway (it must then be
    /// registered with the workers, replaying from `from`).
    pub fn attach(
        &self,
        id: QueryId,
        def_json: Arc<str>,
        from: u64,
        key: SubKey,
        outbox: Arc<Outbox>,
        suffix: Bytes,
    ) -> bool {
        let mut map = self.stripe(&id).lock();
        let mut new = false;
        let lq = map.entry(id).or_insert_with(|| {
            new = true;
            LocalQuery {
                def_json,
                last: Position::ZERO,
                from,
                subs: Vec::new(),
            }
        });
        lq.subs.push(LocalSub {
            key,
            outbox,
            suffix,
            state: SubState::Pending {
                buf: Vec::new(),
                bytes: 0,
            },
        });
        new
    }

    /// The snapshot is written: return the buffered bodies the subscriber must get now (in order) and
    /// start filtering with `snap` until `until` (or deliver everything when `snap` is None).
    pub fn activate(
        &self,
        id: QueryId,
        key: SubKey,
        snap: Option<Arc<PgSnapshot>>,
        until: u64,
    ) -> Vec<Bytes> {
        let mut map = self.stripe(&id).lock();
        let Some(sub) = map
            .get_mut(&id)
            .and_then(|lq| lq.subs.iter_mut().find(|s| s.key == key))
        else {
            return Vec::new();
        };
        let buffered = match std::mem::replace(&mut sub.state, SubState::Live) {
            SubState::Pending { buf, .. } => buf,
            other => {
                sub.state = other;
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut live = snap.is_none();
        for (lsn, xid, body) in buffered {
            if !live && lsn > until {
                live = true;
            }
            if live || !snap.as_ref().is_some_and(|s| s.sees(xid)) {
                out.push(body);
            }
        }
        if let (false, Some(snap)) = (live, snap) {
            sub.state = SubState::Filtering { snap, until };
        }
        out
    }

    /// Remove a subscriber. Returns true if that was the query's last one here (unregister it).
    pub fn detach(&self, id: QueryId, key: SubKey) -> bool {
        let mut map = self.stripe(&id).lock();
        let Some(lq) = map.get_mut(&id) else {
            return false;
        };
        lq.subs.retain(|s| s.key != key);
        if lq.subs.is_empty() {
            map.remove(&id);
            return true;
        }
        false
    }

    /// Deliver a batch published by a worker.
    pub fn deliver(&self, msg: Bytes) -> Delivered {
        let mut stats = Delivered::default();
        let Ok(entries) = decode_batch(&msg) else {
            tracing::warn!(bytes = msg.len(), "dropping a malformed delivery batch");
            return stats;
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        for e in entries {
            stats.entries += 1;
            let mut map = self.stripe(&e.query).lock();
            let Some(lq) = map.get_mut(&e.query) else {
                continue;
            };
            if e.pos <= lq.last {
                stats.duplicates += 1;
                continue;
            }
            lq.last = e.pos;
            let body = msg.slice(e.body);
            metrics::histogram!("realtime_change_to_send_seconds")
                .record((now_us - e.commit_time).max(0) as f64 / 1e6);
            for sub in &mut lq.subs {
                let send = match &mut sub.state {
                    SubState::Live => true,
                    SubState::Filtering { snap, until } => {
                        if e.pos.lsn > *until {
                            sub.state = SubState::Live;
                            true
                        } else {
                            !snap.sees(e.xid)
                        }
                    }
                    SubState::Pending { buf, bytes } => {
                        *bytes += body.len() + sub.suffix.len();
                        if *bytes > sub.outbox.limit() {
                            // The snapshot takes too long for the event rate: treat as a slow consumer.
                            sub.outbox.force_overflow();
                        } else {
                            buf.push((e.pos.lsn, e.xid, body.clone()));
                        }
                        false
                    }
                };
                if send {
                    sub.outbox.push(body.clone(), sub.suffix.clone());
                    stats.frames += 1;
                }
            }
        }
        stats
    }

    /// Every local query with the position to resume from (for re-registering after a Redis reconnect).
    pub fn registrations(&self) -> Vec<(QueryId, Arc<str>, u64)> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            for (id, lq) in stripe.lock().iter() {
                let from = if lq.last == Position::ZERO {
                    lq.from
                } else {
                    lq.last.lsn
                };
                out.push((*id, lq.def_json.clone(), from));
            }
        }
        out
    }

    pub fn query_count(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }

    pub fn subscriber_count(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().values().map(|q| q.subs.len()).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::delivery::{Entry, encode_batch};

    fn batch(entries: &[(u128, u64, u16, u32, &str)]) -> Bytes {
        let e: Vec<Entry<Vec<u8>>> = entries
            .iter()
            .map(|(q, lsn, idx, xid, body)| Entry {
                query: QueryId(*q),
                pos: Position {
                    lsn: *lsn,
                    seq: 0,
                    idx: *idx,
                },
                xid: *xid,
                commit_time: 0,
                body: body.as_bytes().to_vec(),
            })
            .collect();
        Bytes::from(encode_batch(&e))
    }

    fn drained(o: &Outbox) -> Vec<String> {
        o.drain()
            .into_iter()
            .map(|(b, s)| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&b),
                    String::from_utf8_lossy(&s)
                )
            })
            .collect()
    }

    #[test]
    fn dedupes_by_position_and_fans_out_with_suffixes() {
        let hub = Hub::default();
        let (a, b) = (
            Arc::new(Outbox::new(1 << 20)),
            Arc::new(Outbox::new(1 << 20)),
        );
        let ka = SubKey { conn: 1, sub: 1 };
        let kb = SubKey { conn: 2, sub: 1 };
        assert!(hub.attach(
            QueryId(9),
            "{}".into(),
            0,
            ka,
            a.clone(),
            Bytes::from_static(b",\"uid\":\"a\"}")
        ));
        assert!(!hub.attach(
            QueryId(9),
            "{}".into(),
            0,
            kb,
            b.clone(),
            Bytes::from_static(b"}")
        ));
        hub.activate(QueryId(9), ka, None, 0);
        hub.activate(QueryId(9), kb, None, 0);
        let d = hub.deliver(batch(&[
            (9, 10, 0, 1, "{\"e\":1"),
            (9, 10, 0, 1, "{\"e\":1"),
            (9, 9, 5, 1, "{\"old\":1"),
            (9, 11, 0, 2, "{\"e\":2"),
            (8, 1, 0, 1, "{}"),
        ]));
        assert_eq!(
            d,
            Delivered {
                entries: 5,
                duplicates: 2,
                frames: 4
            }
        );
        assert_eq!(
            drained(&a),
            ["{\"e\":1,\"uid\":\"a\"}", "{\"e\":2,\"uid\":\"a\"}"]
        );
        assert_eq!(drained(&b), ["{\"e\":1}", "{\"e\":2}"]);
        assert!(!hub.detach(QueryId(9), ka));
        assert!(
            hub.detach(QueryId(9), kb),
            "last subscriber leaves: unregister"
        );
        assert_eq!(hub.query_count(), 0);
    }

    #[test]
    fn pending_subscribers_get_only_what_their_snapshot_lacks() {
        let hub = Hub::default();
        let o = Arc::new(Outbox::new(1 << 20));
        let k = SubKey { conn: 1, sub: 1 };
        hub.attach(
            QueryId(1),
            "{}".into(),
            0,
            k,
            o.clone(),
            Bytes::from_static(b"}"),
        );
        // While the snapshot is read: xid 5 is visible to it, 7 was in progress, 12 started later.
        hub.deliver(batch(&[
            (1, 100, 0, 5, "{\"t5\":1"),
            (1, 101, 0, 7, "{\"t7\":1"),
            (1, 150, 0, 12, "{\"t12\":1"),
        ]));
        assert!(o.drain().is_empty(), "nothing before init");
        let snap = Arc::new(PgSnapshot::parse("6:10:7").unwrap());
        let now = hub.activate(QueryId(1), k, Some(snap), 200);
        assert_eq!(
            now.iter()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .collect::<Vec<_>>(),
            ["{\"t7\":1", "{\"t12\":1"]
        );
        // Still filtering: a late event of a transaction the snapshot saw is dropped; past `until`
        // (commit LSN after the snapshot) everything flows.
        hub.deliver(batch(&[
            (1, 151, 0, 3, "{\"t3\":1"),
            (1, 260, 0, 4, "{\"t4\":1"),
            (1, 270, 0, 2, "{\"t2\":1"),
        ]));
        assert_eq!(drained(&o), ["{\"t4\":1}", "{\"t2\":1}"]);
    }

    #[test]
    fn resume_positions() {
        let hub = Hub::default();
        let o = Arc::new(Outbox::new(1 << 20));
        hub.attach(
            QueryId(1),
            "q1".into(),
            500,
            SubKey { conn: 1, sub: 1 },
            o.clone(),
            Bytes::new(),
        );
        hub.attach(
            QueryId(2),
            "q2".into(),
            500,
            SubKey { conn: 1, sub: 2 },
            o,
            Bytes::new(),
        );
        hub.activate(QueryId(2), SubKey { conn: 1, sub: 2 }, None, 0);
        hub.deliver(batch(&[(2, 900, 0, 1, "{}")]));
        let mut regs = hub.registrations();
        regs.sort_by_key(|r| r.0);
        assert_eq!(regs.iter().map(|r| r.2).collect::<Vec<_>>(), [500, 900]);
    }
}
