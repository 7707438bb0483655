//! The gateway's local subscriptions: query id → subscribers on this gateway.
//!
//! Delivery: a batch from a worker carries (event kind, query, position, xid, data) entries. For each, the
//! hub drops anything at or below the last position delivered for that query (workers are at-least-once:
//! failover, replays and duplicated publishes are absorbed here), then hands the shared, protocol-neutral
//! data to each subscriber's [`Outbox`] with that subscriber's suffix; the socket task adds its protocol's
//! envelope. No JSON is encoded per subscriber.
//!
//! Gap-free init: a new subscriber is attached (and its events buffered) *before* its snapshot is read;
//! after the `init` frame is written, buffered and later events are filtered with the snapshot's
//! visibility until their commit LSN passes the LSN read after the snapshot, so nothing between snapshot
//! and stream is missed or doubled.
//!
//! Recovery: when the gateway may have missed messages (its Redis subscription dropped, or fell behind),
//! [`Hub::begin_recovery`] puts every query in *recovering* and the registrar re-registers each with "replay
//! from the last position I delivered". Until the worker's replay-done entry for that request arrives,
//! everything for the query is held back (messages published before the worker saw the request may
//! overtake the replay); then the held entries are delivered in position order, without duplicates.
//! Delivering them as they came would let a later event raise the dedupe floor over the replayed ones.

use crate::outbox::Outbox;
use bytes::Bytes;
use common::ctl::ReplayRequest;
use common::delivery::{EntryKind, PgSnapshot, Position, decode_batch};
use common::event::EventKind;
use common::normalize::QueryId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Lock stripes: deliveries for different queries proceed in parallel with subscribes.
const STRIPES: usize = 16;
/// Bytes one query may hold back while recovering. Past it the query's subscribers are closed as slow
/// consumers (they reconnect and start over with a fresh `init`) rather than risk a gap.
pub const RECOVERY_BUFFER_BYTES: usize = 32 << 20;

/// Identifies one subscription of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKey {
    pub conn: u64,
    pub sub: u32,
}

enum SubState {
    /// Snapshot not written yet: events wait here (bounded by the outbox budget).
    Pending {
        buf: Vec<(u64, u32, EventKind, Bytes)>,
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
    recovery: Option<Recovery>,
}

/// A query waiting for the end of the replay it asked for after a possible loss.
struct Recovery {
    /// The replay request whose replay-done entry ends the recovery.
    request: ReplayRequest,
    held: Vec<Held>,
    bytes: usize,
}

struct Held {
    pos: Position,
    kind: EventKind,
    xid: u32,
    commit_time: i64,
    data: Bytes,
}

/// A query to re-register after a possible loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reregistration {
    pub id: QueryId,
    pub def_json: Arc<str>,
    /// Commit LSN to replay from: the last delivered, or the original request's if none was.
    pub from: u64,
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
                recovery: None,
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

    /// The snapshot is written: return the buffered events the subscriber must get now (in order) and
    /// start filtering with `snap` until `until` (or deliver everything when `snap` is None).
    pub fn activate(
        &self,
        id: QueryId,
        key: SubKey,
        snap: Option<Arc<PgSnapshot>>,
        until: u64,
    ) -> Vec<(EventKind, Bytes)> {
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
        for (lsn, xid, kind, data) in buffered {
            if !live && lsn > until {
                live = true;
            }
            if live || !snap.as_ref().is_some_and(|s| s.sees(xid)) {
                out.push((kind, data));
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
        let now_us = common_io::clock::unix_micros();
        for e in entries {
            stats.entries += 1;
            let mut map = self.stripe(&e.query).lock();
            let Some(lq) = map.get_mut(&e.query) else {
                continue;
            };
            let body = msg.slice(e.body);
            let kind = match e.kind {
                EntryKind::Event(kind) => kind,
                EntryKind::ReplayDone => {
                    let answered = lq
                        .recovery
                        .as_ref()
                        .is_some_and(|r| ReplayRequest::decode(&body) == Some(r.request));
                    if answered {
                        let mut held = lq.recovery.take().expect("checked").held;
                        held.sort_by_key(|h| h.pos);
                        for h in held {
                            let event = (h.pos, h.kind, h.xid, h.commit_time);
                            lq.deliver(event, h.data, now_us, &mut stats);
                        }
                    }
                    continue;
                }
            };
            if e.pos <= lq.last {
                stats.duplicates += 1;
                continue;
            }
            if let Some(r) = &mut lq.recovery {
                r.bytes += body.len();
                if r.bytes > RECOVERY_BUFFER_BYTES {
                    tracing::warn!(query = %e.query, "recovery buffer overflowed; closing the query's subscribers");
                    for sub in &lq.subs {
                        sub.outbox.force_overflow();
                    }
                    lq.recovery = None;
                } else {
                    r.held.push(Held {
                        pos: e.pos,
                        kind,
                        xid: e.xid,
                        commit_time: e.commit_time,
                        data: body,
                    });
                }
                continue;
            }
            lq.deliver(
                (e.pos, kind, e.xid, e.commit_time),
                body,
                now_us,
                &mut stats,
            );
        }
        stats
    }

    /// The gateway may have missed messages: hold back every query's deliveries until the replay of a
    /// new registration ends. `request` makes each query's replay request. Returns what to register.
    pub fn begin_recovery(
        &self,
        mut request: impl FnMut(u64) -> ReplayRequest,
    ) -> Vec<(Reregistration, ReplayRequest)> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            for (id, lq) in stripe.lock().iter_mut() {
                let from = if lq.last == Position::ZERO {
                    lq.from
                } else {
                    lq.last.lsn
                };
                let req = request(from);
                // Anything held for an earlier request is re-sent by the new replay.
                lq.recovery = Some(Recovery {
                    request: req,
                    held: Vec::new(),
                    bytes: 0,
                });
                out.push((
                    Reregistration {
                        id: *id,
                        def_json: lq.def_json.clone(),
                        from,
                    },
                    req,
                ));
            }
        }
        out
    }

    /// Whether the query has subscribers here.
    pub fn contains(&self, id: QueryId) -> bool {
        self.stripe(&id).lock().contains_key(&id)
    }

    /// Queries currently holding back deliveries for a replay.
    pub fn recovering(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().values().filter(|q| q.recovery.is_some()).count())
            .sum()
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

impl LocalQuery {
    /// Hand one new event (position above the floor) to every subscriber, by its state. `event` is its
    /// (position, kind, xid, commit time).
    fn deliver(
        &mut self,
        (pos, kind, xid, commit_time): (Position, EventKind, u32, i64),
        data: Bytes,
        now_us: i64,
        stats: &mut Delivered,
    ) {
        if pos <= self.last {
            stats.duplicates += 1;
            return;
        }
        self.last = pos;
        crate::telemetry::hot()
            .change_to_send
            .record((now_us - commit_time).max(0) as f64 / 1e6);
        let _span = common_io::telemetry::change_traced(pos.lsn).then(|| {
            let span = tracing::info_span!(
                target: common_io::telemetry::OTEL_TARGET,
                "change.deliver",
                lsn = pos.lsn,
                subscribers = self.subs.len(),
            );
            common_io::telemetry::join_change_trace(&span, pos.lsn);
            span.entered()
        });
        for sub in &mut self.subs {
            let send = match &mut sub.state {
                SubState::Live => true,
                SubState::Filtering { snap, until } => {
                    if pos.lsn > *until {
                        sub.state = SubState::Live;
                        true
                    } else {
                        !snap.sees(xid)
                    }
                }
                SubState::Pending { buf, bytes } => {
                    *bytes += data.len() + sub.suffix.len();
                    if *bytes > sub.outbox.limit() {
                        // The snapshot takes too long for the event rate: treat as a slow consumer.
                        sub.outbox.force_overflow();
                    } else {
                        buf.push((pos.lsn, xid, kind, data.clone()));
                    }
                    false
                }
            };
            if send {
                sub.outbox.push(kind, data.clone(), sub.suffix.clone());
                stats.frames += 1;
            }
        }
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
                kind: EntryKind::Event(EventKind::Create),
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
            .map(|q| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&q.data),
                    String::from_utf8_lossy(&q.suffix)
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
                .map(|(_, b)| String::from_utf8_lossy(b).to_string())
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
    fn recovery_holds_back_until_the_replay_ends_then_delivers_in_order() {
        let hub = Hub::default();
        let o = Arc::new(Outbox::new(1 << 20));
        let k = SubKey { conn: 1, sub: 1 };
        hub.attach(QueryId(1), "q1".into(), 500, k, o.clone(), Bytes::new());
        hub.activate(QueryId(1), k, None, 0);
        hub.attach(
            QueryId(2),
            "q2".into(),
            500,
            SubKey { conn: 1, sub: 2 },
            o.clone(),
            Bytes::new(),
        );
        hub.deliver(batch(&[(1, 100, 0, 1, "a")]));
        assert_eq!(drained(&o), ["a"]);
        // The subscription dropped: 101 and 102 were lost. Re-register from what was delivered.
        let mut n = 0;
        let mut regs = hub.begin_recovery(|from| {
            n += 1;
            ReplayRequest { from, token: n }
        });
        regs.sort_by_key(|r| r.0.id);
        assert_eq!(
            regs.iter().map(|r| r.0.from).collect::<Vec<_>>(),
            [100, 500],
            "last delivered, or the original replay start when nothing was"
        );
        let token = regs[0].1;
        // A live event overtakes the replay: held, not delivered (it would raise the floor past 101).
        hub.deliver(batch(&[(1, 103, 0, 1, "d")]));
        assert!(o.drain().is_empty());
        hub.deliver(batch(&[(1, 101, 0, 1, "b"), (1, 102, 0, 1, "c")]));
        // A replay-done for some other request changes nothing.
        let done = |req: ReplayRequest| {
            let mut m = common::delivery::start_batch();
            common::delivery::append_replay_done(
                &mut m,
                QueryId(1),
                Position::ZERO,
                req.encode().as_bytes(),
            );
            Bytes::from(m)
        };
        hub.deliver(done(ReplayRequest {
            from: 100,
            token: 999,
        }));
        assert!(o.drain().is_empty());
        assert_eq!(hub.recovering(), 2);
        // The replay re-sends 101..103, then ends: everything once, in order.
        hub.deliver(batch(&[
            (1, 101, 0, 1, "b"),
            (1, 102, 0, 1, "c"),
            (1, 103, 0, 1, "d"),
        ]));
        hub.deliver(done(token));
        assert_eq!(drained(&o), ["b", "c", "d"]);
        assert_eq!(hub.recovering(), 1);
        hub.deliver(batch(&[(1, 104, 0, 1, "e"), (1, 103, 0, 1, "d")]));
        assert_eq!(drained(&o), ["e"]);
    }

    #[test]
    fn a_recovery_that_outgrows_its_buffer_closes_the_subscribers() {
        let hub = Hub::default();
        let o = Arc::new(Outbox::new(1 << 20));
        let k = SubKey { conn: 1, sub: 1 };
        hub.attach(QueryId(1), "q".into(), 0, k, o.clone(), Bytes::new());
        hub.activate(QueryId(1), k, None, 0);
        hub.begin_recovery(|from| ReplayRequest { from, token: 1 });
        let big = "x".repeat(1 << 20);
        for i in 0..(RECOVERY_BUFFER_BYTES >> 20) as u64 + 1 {
            hub.deliver(batch(&[(1, 10 + i, 0, 1, big.as_str())]));
        }
        assert!(
            o.overflowed(),
            "closed as a slow consumer instead of a silent gap"
        );
        assert_eq!(hub.recovering(), 0);
    }
}
