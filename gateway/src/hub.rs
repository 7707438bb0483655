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
use crate::rights::Rights;
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
        buf: Vec<(Position, u32, EventKind, Bytes)>,
        bytes: usize,
    },
    /// `init` written: skip events the snapshot already contains, until the stream passes `until`.
    Filtering {
        snap: Arc<PgSnapshot>,
        until: u64,
    },
    Live,
    /// Moved here from another query by a rights change at commit LSN `from` (`crate::rights`): this
    /// query's events after `from` are this subscriber's, including those other subscribers here got
    /// before it came. They arrive from the replay `request` asked for (below the query's dedupe floor)
    /// and live; all wait here until the replay ends, then go out in position order, once.
    Rebinding {
        from: u64,
        request: ReplayRequest,
        buf: Vec<Held>,
        bytes: usize,
    },
}

/// Events held back by a rights change: those committed after `at` wait until the connection's
/// subscriptions are evaluated again (`crate::rights`).
struct Cut {
    at: u64,
    held: Vec<Held>,
    bytes: usize,
}

struct LocalSub {
    key: SubKey,
    outbox: Arc<Outbox>,
    suffix: Bytes,
    state: SubState,
    cut: Option<Cut>,
    /// Commit LSN at or below which nothing is for this subscriber: a subscriber moved here by a rights
    /// change at that position had those events from its previous query (under the previous rights),
    /// and a lagging worker may still send them live after the replay ended.
    floor: u64,
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

#[derive(Clone)]
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
    /// Connections touched by rights changes.
    pub rights: usize,
}

pub struct Hub {
    stripes: Vec<Mutex<HashMap<QueryId, LocalQuery>>>,
    /// Live connections by what their rights depend on.
    pub rights: Rights,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new(Default::default())
    }
}

impl Hub {
    /// A hub whose rights changes bump `epoch`.
    pub fn new(epoch: Arc<crate::rights::Epoch>) -> Hub {
        Hub {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            rights: Rights::new(epoch),
        }
    }

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
        self.attach_with_cut(id, def_json, from, key, outbox, suffix, None)
    }

    /// [`Hub::attach`] for a subscriber whose connection has a rights change pending at `cut`.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_with_cut(
        &self,
        id: QueryId,
        def_json: Arc<str>,
        from: u64,
        key: SubKey,
        outbox: Arc<Outbox>,
        suffix: Bytes,
        cut: Option<u64>,
    ) -> bool {
        let pending = SubState::Pending {
            buf: Vec::new(),
            bytes: 0,
        };
        self.attach_in(id, def_json, from, key, outbox, suffix, pending, cut)
    }

    /// Add a subscriber moved from another query by a rights change at `from` (see
    /// [`SubState::Rebinding`]), cut at `cut` if a later change is pending. Returns true if the query
    /// is new here. Either way it must be registered with the replay `request`.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_rebinding(
        &self,
        id: QueryId,
        def_json: Arc<str>,
        key: SubKey,
        outbox: Arc<Outbox>,
        suffix: Bytes,
        request: ReplayRequest,
        cut: Option<u64>,
    ) -> bool {
        let state = SubState::Rebinding {
            from: request.from,
            request,
            buf: Vec::new(),
            bytes: 0,
        };
        self.attach_in(id, def_json, request.from, key, outbox, suffix, state, cut)
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_in(
        &self,
        id: QueryId,
        def_json: Arc<str>,
        from: u64,
        key: SubKey,
        outbox: Arc<Outbox>,
        suffix: Bytes,
        state: SubState,
        cut: Option<u64>,
    ) -> bool {
        let state_floor = match &state {
            SubState::Rebinding { from, .. } => Some(*from),
            _ => None,
        };
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
            state,
            cut: cut.map(|at| Cut {
                at,
                held: Vec::new(),
                bytes: 0,
            }),
            // A moved subscriber had everything up to its move from its previous query.
            floor: state_floor.unwrap_or(0),
        });
        new
    }

    /// Whether the subscriber is still waiting for the replay of a move (`SubState::Rebinding`).
    pub fn is_rebinding(&self, id: QueryId, key: SubKey) -> bool {
        self.stripe(&id)
            .lock()
            .get(&id)
            .and_then(|lq| lq.subs.iter().find(|s| s.key == key))
            .is_some_and(|s| matches!(s.state, SubState::Rebinding { .. }))
    }

    /// A rights change at commit LSN `at` touched the subscriber: hold back its events committed after
    /// `at` (an earlier cut stays).
    pub fn cut(&self, id: QueryId, key: SubKey, at: u64) {
        let mut map = self.stripe(&id).lock();
        if let Some(sub) = map
            .get_mut(&id)
            .and_then(|lq| lq.subs.iter_mut().find(|s| s.key == key))
        {
            match &mut sub.cut {
                Some(c) => c.at = c.at.min(at),
                None => {
                    sub.cut = Some(Cut {
                        at,
                        held: Vec::new(),
                        bytes: 0,
                    })
                }
            }
        }
    }

    /// The subscriber's rights were evaluated again and its query stays: deliver what its cut held
    /// back, up to `upto` (a rights change that arrived meanwhile, which stays cut) or all of it.
    pub fn release(&self, id: QueryId, key: SubKey, upto: Option<u64>) {
        let mut map = self.stripe(&id).lock();
        let Some(sub) = map
            .get_mut(&id)
            .and_then(|lq| lq.subs.iter_mut().find(|s| s.key == key))
        else {
            return;
        };
        let Some(cut) = sub.cut.take() else {
            return;
        };
        if let Some(at) = upto {
            sub.cut = Some(Cut {
                at,
                held: Vec::new(),
                bytes: 0,
            });
        }
        let mut stats = Delivered::default();
        for h in cut.held {
            sub.offer(&h, &mut stats);
        }
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
        for (pos, xid, kind, data) in buffered {
            if !live && pos.lsn > until {
                live = true;
            }
            if live || !snap.as_ref().is_some_and(|s| s.sees(xid)) {
                if let Some(cut) = sub.cut.as_mut().filter(|c| pos.lsn > c.at) {
                    // A rights change came first: this one waits for the re-evaluation.
                    cut.bytes += data.len();
                    cut.held.push(Held {
                        pos,
                        kind,
                        xid,
                        commit_time: 0,
                        data,
                    });
                } else {
                    out.push((kind, data));
                }
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
        let mut rebound = false;
        for e in entries {
            stats.entries += 1;
            if e.kind == EntryKind::Rights {
                let a = common::rights::decode_announcement(&msg[e.body.clone()]);
                stats.rights += self.rights.apply(self, e.pos, &a);
                continue;
            }
            let mut map = self.stripe(&e.query).lock();
            let Some(lq) = map.get_mut(&e.query) else {
                continue;
            };
            let body = msg.slice(e.body);
            let kind = match e.kind {
                EntryKind::Event(kind) => kind,
                EntryKind::Rights => continue,
                EntryKind::ReplayDone => {
                    if let Some(request) = ReplayRequest::decode(&body) {
                        for sub in &mut lq.subs {
                            rebound |= sub.end_rebinding(request, &mut stats);
                        }
                    }
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
                // Below the floor for the query, but maybe not for a subscriber moved here since.
                let h = Held {
                    pos: e.pos,
                    kind,
                    xid: e.xid,
                    commit_time: e.commit_time,
                    data: body,
                };
                for sub in &mut lq.subs {
                    sub.hold_for_rebinding(&h);
                }
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
        if rebound {
            // A move may have waited for this subscriber's previous move to finish.
            self.rights.retry(self);
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
        let h = Held {
            pos,
            kind,
            xid,
            commit_time,
            data,
        };
        for sub in &mut self.subs {
            sub.offer(&h, stats);
        }
    }
}

impl LocalSub {
    /// One event above the query's floor, for this subscriber: held by a rights cut, buffered while its
    /// snapshot or its move is pending, filtered by its snapshot, or queued.
    fn offer(&mut self, h: &Held, stats: &mut Delivered) {
        if h.pos.lsn <= self.floor {
            return;
        }
        if let Some(cut) = self.cut.as_mut().filter(|c| h.pos.lsn > c.at) {
            cut.bytes += h.data.len() + self.suffix.len();
            if cut.bytes > self.outbox.limit() {
                // The re-evaluation takes too long for the event rate: a slow consumer.
                self.outbox.force_overflow();
            } else {
                cut.held.push(h.clone());
            }
            return;
        }
        let send = match &mut self.state {
            SubState::Live => true,
            SubState::Filtering { snap, until } => {
                if h.pos.lsn > *until {
                    self.state = SubState::Live;
                    true
                } else {
                    !snap.sees(h.xid)
                }
            }
            SubState::Pending { buf, bytes } => {
                *bytes += h.data.len() + self.suffix.len();
                if *bytes > self.outbox.limit() {
                    // The snapshot takes too long for the event rate: treat as a slow consumer.
                    self.outbox.force_overflow();
                } else {
                    buf.push((h.pos, h.xid, h.kind, h.data.clone()));
                }
                false
            }
            SubState::Rebinding { .. } => {
                self.hold_for_rebinding(h);
                false
            }
        };
        if send {
            self.outbox
                .push(h.kind, h.data.clone(), self.suffix.clone());
            stats.frames += 1;
        }
    }

    /// Keep an event for a subscriber being moved here, if it is after the move.
    fn hold_for_rebinding(&mut self, h: &Held) {
        if let SubState::Rebinding {
            from, buf, bytes, ..
        } = &mut self.state
            && h.pos.lsn > *from
        {
            *bytes += h.data.len() + self.suffix.len();
            if *bytes > self.outbox.limit() {
                self.outbox.force_overflow();
            } else {
                buf.push(h.clone());
            }
        }
    }

    /// The replay `request` ended: a subscriber moved here with it goes live with what it gathered,
    /// in position order, once.
    /// Returns whether it did.
    fn end_rebinding(&mut self, request: ReplayRequest, stats: &mut Delivered) -> bool {
        let SubState::Rebinding { request: r, .. } = &self.state else {
            return false;
        };
        if *r != request {
            return false;
        }
        let SubState::Rebinding { mut buf, .. } =
            std::mem::replace(&mut self.state, SubState::Live)
        else {
            unreachable!("checked above");
        };
        buf.sort_by_key(|h| h.pos);
        buf.dedup_by_key(|h| h.pos);
        for h in &buf {
            self.offer(h, stats);
        }
        true
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
                frames: 4,
                rights: 0
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

    fn rights_batch(lsn: u64, deps: &str) -> Bytes {
        rights_from(lsn, deps, &[0])
    }

    /// A rights entry announced for `shards`.
    fn rights_from(lsn: u64, deps: &str, shards: &[u32]) -> Bytes {
        let a = common::rights::Announcement {
            deps: common::rights::decode_announcement(format!("s:\n{deps}").as_bytes()).deps,
            shards: shards.to_vec(),
        };
        let mut m = common::delivery::start_batch();
        common::delivery::append_rights(
            &mut m,
            Position {
                lsn,
                seq: 0,
                idx: 0,
            },
            1,
            0,
            &common::rights::encode_announcement(&a),
        );
        Bytes::from(m)
    }

    fn replay_done(q: u128, req: ReplayRequest) -> Bytes {
        let mut m = common::delivery::start_batch();
        common::delivery::append_replay_done(
            &mut m,
            QueryId(q),
            Position::ZERO,
            req.encode().as_bytes(),
        );
        Bytes::from(m)
    }

    fn acct(user: &str, policy: &str) -> Arc<crate::auth::Accountability> {
        Arc::new(crate::auth::Accountability {
            user: Some(user.into()),
            role: Some("R".into()),
            roles: vec!["R".into()],
            admin: false,
            app: false,
            policies: vec![policy.into()],
            considered: vec![policy.into()],
            ip: None,
        })
    }

    /// A live subscriber of query `q` on connection `conn` (filed under `policy`).
    fn live(hub: &Hub, q: u128, conn: u64, policy: &str) -> (Arc<Outbox>, SubKey) {
        let o = Arc::new(Outbox::new(1 << 20));
        let k = SubKey { conn, sub: 1 };
        hub.rights
            .set_identity(conn, &o, &acct(&format!("u{conn}"), policy));
        hub.rights.attach_sub(conn, QueryId(q), k, |cut| {
            hub.attach_with_cut(QueryId(q), "{}".into(), 0, k, o.clone(), Bytes::new(), cut)
        });
        hub.activate(QueryId(q), k, None, 0);
        (o, k)
    }

    #[test]
    fn a_rights_change_holds_later_events_until_the_subscriber_is_evaluated_again() {
        let hub = Hub::default();
        let (a, ka) = live(&hub, 1, 1, "P1");
        let (b, _) = live(&hub, 1, 2, "P2");
        // Committed at 100, 101 (the rights change), 102, 103; the worker sends the change first.
        hub.deliver(batch(&[(1, 100, 0, 1, "e100")]));
        let d = hub.deliver(rights_batch(101, "p:P1"));
        assert_eq!(d.rights, 1, "only the connection filed under P1");
        assert!(a.take_rights_flag());
        assert!(!b.take_rights_flag());
        hub.deliver(batch(&[(1, 101, 0, 1, "e101"), (1, 102, 0, 1, "e102")]));
        hub.deliver(batch(&[(1, 103, 0, 1, "e103")]));
        assert_eq!(drained(&a), ["e100", "e101"], "up to the change, not after");
        assert_eq!(drained(&b), ["e100", "e101", "e102", "e103"]);
        // Same query after the re-evaluation: the held events follow, in order.
        assert_eq!(hub.rights.take_cut(1), Some(101));
        hub.release(QueryId(1), ka, None);
        assert_eq!(drained(&a), ["e102", "e103"]);
        hub.deliver(batch(&[(1, 104, 0, 1, "e104")]));
        assert_eq!(drained(&a), ["e104"]);
        // The same change announced again (another worker) touches nobody.
        assert_eq!(hub.deliver(rights_batch(101, "p:P1")).rights, 0);
    }

    #[test]
    fn a_release_keeps_a_later_change_cut() {
        let hub = Hub::default();
        let (a, ka) = live(&hub, 1, 1, "P1");
        hub.deliver(rights_batch(10, "p:P1"));
        assert_eq!(hub.rights.take_cut(1), Some(10));
        // While the first re-evaluation runs, a second change commits at 12.
        hub.deliver(rights_batch(12, "r:R"));
        hub.deliver(batch(&[
            (1, 11, 0, 1, "e11"),
            (1, 12, 0, 1, "e12"),
            (1, 13, 0, 1, "e13"),
        ]));
        assert!(drained(&a).is_empty());
        hub.release(QueryId(1), ka, hub.rights.pending_cut(1));
        assert_eq!(drained(&a), ["e11", "e12"], "up to the second change");
        assert_eq!(hub.rights.take_cut(1), Some(12));
        hub.release(QueryId(1), ka, None);
        assert_eq!(drained(&a), ["e13"]);
    }

    #[test]
    fn a_subscriber_moved_to_a_query_gets_its_events_after_the_change_once_in_order() {
        let hub = Hub::default();
        // Query 2 is already live here for another connection, which got 105 and 106.
        let (other, _) = live(&hub, 2, 9, "P9");
        let (a, ka) = live(&hub, 1, 1, "P1");
        hub.deliver(rights_batch(100, "p:P1"));
        hub.deliver(batch(&[(1, 104, 0, 1, "old104")]));
        hub.deliver(batch(&[(2, 105, 0, 1, "new105"), (2, 106, 0, 1, "new106")]));
        assert!(drained(&a).is_empty(), "held: after the change");
        assert_eq!(drained(&other), ["new105", "new106"]);
        // The re-evaluation moves it to query 2 with a replay from 100.
        assert_eq!(hub.rights.take_cut(1), Some(100));
        hub.rights.detach_sub(1, QueryId(1), ka);
        assert!(
            hub.detach(QueryId(1), ka),
            "its old query's last subscriber here"
        );
        let req = ReplayRequest {
            from: 100,
            token: 77,
        };
        let new_here = hub.rights.attach_sub(1, QueryId(2), ka, |cut| {
            hub.attach_rebinding(
                QueryId(2),
                "{}".into(),
                ka,
                a.clone(),
                Bytes::new(),
                req,
                cut,
            )
        });
        assert!(!new_here);
        // A live event overtakes the replay; then the replay re-sends 99 (before the change), 105, 106.
        hub.deliver(batch(&[(2, 107, 0, 1, "new107")]));
        hub.deliver(batch(&[
            (2, 99, 0, 1, "new99"),
            (2, 105, 0, 1, "new105"),
            (2, 106, 0, 1, "new106"),
        ]));
        assert!(drained(&a).is_empty(), "nothing until the replay ends");
        assert_eq!(drained(&other), ["new107"], "the others see no repeats");
        hub.deliver(replay_done(
            2,
            ReplayRequest {
                from: 100,
                token: 5,
            },
        ));
        assert!(drained(&a).is_empty(), "another request's end");
        hub.deliver(replay_done(2, req));
        assert_eq!(drained(&a), ["new105", "new106", "new107"]);
        hub.deliver(batch(&[(2, 108, 0, 1, "new108")]));
        assert_eq!(drained(&a), ["new108"]);
        assert_eq!(drained(&other), ["new108"]);
    }

    #[test]
    fn a_change_before_the_init_is_written_holds_the_buffered_events_after_it() {
        let hub = Hub::default();
        let o = Arc::new(Outbox::new(1 << 20));
        let k = SubKey { conn: 1, sub: 1 };
        hub.rights.set_identity(1, &o, &acct("u1", "P1"));
        hub.rights.attach_sub(1, QueryId(1), k, |cut| {
            hub.attach_with_cut(QueryId(1), "{}".into(), 0, k, o.clone(), Bytes::new(), cut)
        });
        hub.deliver(batch(&[(1, 10, 0, 1, "e10")]));
        hub.deliver(rights_batch(11, "u:u1"));
        hub.deliver(batch(&[(1, 12, 0, 1, "e12")]));
        let now: Vec<Bytes> = hub
            .activate(QueryId(1), k, None, 0)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(now, [Bytes::from_static(b"e10")]);
        hub.release(QueryId(1), k, None);
        assert_eq!(drained(&o), ["e12"]);
    }
}
