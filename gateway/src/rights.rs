//! Rights that follow changes: which live connections a committed change to the access tables touches,
//! and the cut that keeps their events in commit order around it.
//!
//! Each connection is filed under the [`Dep`]s its identity was computed from (its user, its roles, the
//! policies its access rows name, or the public policies). A worker announces every transaction that
//! changed those tables with a rights entry at the transaction's position, before any event it matched
//! after it ([`common::rights`]). For each connection filed under a touched dep, [`Rights::apply`]:
//! 1. *cuts* every subscription of the connection at that position: events committed up to it still go
//!    out under the rights they were matched with, later ones are held back in the hub;
//! 2. raises the connection's flag; its socket task re-reads its identity and normalises its
//!    subscriptions again, then releases the held events (same query), or moves the subscription to its
//!    new query with a replay from the cut (new filter or fields), or ends it (no longer readable).
//!
//! So no event committed after a rights change is delivered under the old rights, and none committed
//! before it is dropped. A subscriber leaves its old query only once the worker serving that query has
//! announced the change (each announcement names the shards it speaks for): until then that worker
//! may still send the old query's events from before the change. Such a move waits here and is made
//! by the delivery task when the announcement arrives ([`Rights::apply`]). A change announced twice (several workers, replays) is applied once.
//! Work is proportional to the connections a change touches, never to all of them (except a change the
//! stream does not describe fully, [`Dep::Everyone`]).

use crate::hub::{Hub, SubKey};
use crate::outbox::Outbox;
use bytes::Bytes;
use common::ctl::ReplayRequest;
use common::delivery::Position;
use common::normalize::QueryId;
pub use common::rights::{Announcement, Dep};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::Accountability;

/// Rights changes remembered to drop repeats (a change is announced by every worker that serves this
/// gateway, and again by replays over it).
const SEEN: usize = 4096;

/// Bumped by every rights change: caches of identities and permissions compare it to drop what a
/// change made stale.
#[derive(Debug, Default)]
pub struct Epoch(AtomicU64);

impl Epoch {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the registry keeps per connection.
struct ConnRights {
    outbox: Arc<Outbox>,
    acct: Arc<Accountability>,
    subs: Vec<(QueryId, SubKey)>,
    /// The earliest rights change not yet taken up by a re-evaluation.
    cut: Option<u64>,
    /// A re-evaluation is running.
    evaluating: bool,
}

/// A subscriber to move from its query to another after a rights change at `at`.
#[derive(Clone)]
pub struct Move {
    pub conn: u64,
    pub key: SubKey,
    pub at: u64,
    pub old: QueryId,
    /// The shard of `old`, whose announcement of `at` the move waits for.
    pub old_shard: u32,
    pub new: QueryId,
    pub def: Arc<str>,
    pub suffix: Bytes,
    pub outbox: Arc<Outbox>,
    /// The replay of `new` from `at` this subscriber waits for.
    pub request: ReplayRequest,
}

/// A move made in the hub; what is left is Redis work for the delivery task to start.
pub struct Moved {
    pub m: Move,
    /// `old` lost its last subscriber here: unregister it.
    pub old_was_last: bool,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, ConnRights>,
    by_dep: HashMap<Dep, HashSet<u64>>,
    seen: HashSet<(u64, u32)>,
    seen_order: VecDeque<(u64, u32)>,
    /// Commit LSN of recent rights changes → the shards announced for it.
    announced: BTreeMap<u64, HashSet<u32>>,
    /// Moves waiting for their old query's shard to announce the change.
    waiting: Vec<Move>,
    /// Moves made by [`Rights::apply`] whose Redis work is still to start.
    moved: Vec<Moved>,
}

/// The deps an identity was computed from.
pub fn deps_of(acct: &Accountability) -> Vec<Dep> {
    let mut out = Vec::with_capacity(2 + acct.roles.len() + acct.considered.len());
    if let Some(u) = &acct.user {
        out.push(Dep::User(u.clone()));
    }
    out.extend(acct.roles.iter().cloned().map(Dep::Role));
    out.extend(acct.considered.iter().cloned().map(Dep::Policy));
    if acct.roles.is_empty() {
        out.push(Dep::Public);
    }
    out
}

/// The registry of live connections by what their rights depend on.
#[derive(Default)]
pub struct Rights {
    inner: Mutex<Inner>,
    pub epoch: Arc<Epoch>,
    last_lsn: AtomicU64,
}

impl Inner {
    fn file(&mut self, conn: u64, acct: &Accountability) {
        for d in deps_of(acct) {
            self.by_dep.entry(d).or_default().insert(conn);
        }
    }

    fn unfile(&mut self, conn: u64, acct: &Accountability) {
        for d in deps_of(acct) {
            if let Some(set) = self.by_dep.get_mut(&d) {
                set.remove(&conn);
                if set.is_empty() {
                    self.by_dep.remove(&d);
                }
            }
        }
    }
}

impl Rights {
    pub fn new(epoch: Arc<Epoch>) -> Rights {
        Rights {
            inner: Mutex::default(),
            epoch,
            last_lsn: AtomicU64::new(0),
        }
    }

    /// File (or re-file) a connection under its identity's deps.
    pub fn set_identity(&self, conn: u64, outbox: &Arc<Outbox>, acct: &Arc<Accountability>) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        match inner.conns.get_mut(&conn) {
            Some(c) if Arc::ptr_eq(&c.acct, acct) || *c.acct == **acct => {
                c.acct = acct.clone();
            }
            Some(c) => {
                let old = std::mem::replace(&mut c.acct, acct.clone());
                inner.unfile(conn, &old);
                inner.file(conn, acct);
            }
            None => {
                inner.conns.insert(
                    conn,
                    ConnRights {
                        outbox: outbox.clone(),
                        acct: acct.clone(),
                        subs: Vec::new(),
                        cut: None,
                        evaluating: false,
                    },
                );
                inner.file(conn, acct);
            }
        }
    }

    /// The connection closed. Returns the old queries of moves still waiting (the caller detaches them).
    pub fn remove(&self, conn: u64) -> Vec<(QueryId, SubKey)> {
        let mut g = self.inner.lock();
        if let Some(c) = g.conns.remove(&conn) {
            g.unfile(conn, &c.acct);
        }
        let mut out = Vec::new();
        g.waiting.retain(|m| {
            let keep = m.conn != conn;
            if !keep {
                out.push((m.old, m.key));
            }
            keep
        });
        out
    }

    /// Whether the shard `shard` announced a rights change at or after commit LSN `at`.
    fn passed(inner: &Inner, at: u64, shard: u32) -> bool {
        inner.announced.range(at..).any(|(_, s)| s.contains(&shard))
            // Forgotten: far older than every change remembered, so long announced.
            || inner.announced.keys().next().is_none_or(|first| at < *first)
    }

    /// Move a subscriber now if its old query's shard already announced the change, else when it does.
    /// A move still waiting for the same subscriber is replaced (its old query is the one attached).
    /// Returns the move if it was made now.
    pub fn plan_move(&self, hub: &Hub, mut m: Move) -> Option<Moved> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if let Some(i) = inner
            .waiting
            .iter()
            .position(|w| w.conn == m.conn && w.key == m.key)
        {
            let prior = inner.waiting.swap_remove(i);
            m.old = prior.old;
            m.old_shard = prior.old_shard;
            m.at = prior.at;
            m.request.from = prior.at;
        }
        if Self::ready(inner, hub, &m) {
            Some(Self::execute(inner, hub, m))
        } else {
            tracing::debug!(conn = m.conn, old = %m.old, new = %m.new, at = m.at, shard = m.old_shard, "rights: the move waits for the old query's shard");
            inner.waiting.push(m);
            None
        }
    }

    /// A move can be made once the old query's shard announced the change, and once the subscriber's
    /// previous move is complete: a subscriber still waiting for its replay holds events of its
    /// current rights that moving now would drop.
    fn ready(inner: &Inner, hub: &Hub, m: &Move) -> bool {
        Self::passed(inner, m.at, m.old_shard) && !hub.is_rebinding(m.old, m.key)
    }

    /// Make the waiting moves that became ready (a previous move of their subscriber completed).
    pub fn retry(&self, hub: &Hub) {
        Self::make_ready_moves(&mut self.inner.lock(), hub);
    }

    /// Make every waiting move that is ready; the rest keep waiting.
    fn make_ready_moves(inner: &mut Inner, hub: &Hub) {
        for m in std::mem::take(&mut inner.waiting) {
            if Self::ready(inner, hub, &m) {
                let moved = Self::execute(inner, hub, m);
                inner.moved.push(moved);
            } else {
                inner.waiting.push(m);
            }
        }
    }

    /// Cancel a waiting move of (`conn`, `key`) to `new`: its old query is still attached and returned.
    pub fn cancel_move(&self, conn: u64, key: SubKey, new: QueryId) -> Option<QueryId> {
        let mut g = self.inner.lock();
        let i = g
            .waiting
            .iter()
            .position(|w| w.conn == conn && w.key == key && w.new == new)?;
        Some(g.waiting.swap_remove(i).old)
    }

    fn execute(inner: &mut Inner, hub: &Hub, m: Move) -> Moved {
        tracing::debug!(conn = m.conn, old = %m.old, new = %m.new, at = m.at, "rights: moved");
        let cut = match inner.conns.get_mut(&m.conn) {
            Some(c) => {
                c.subs.retain(|s| *s != (m.old, m.key));
                c.subs.push((m.new, m.key));
                c.cut
            }
            None => None,
        };
        let old_was_last = hub.detach(m.old, m.key);
        hub.attach_rebinding(
            m.new,
            m.def.clone(),
            m.key,
            m.outbox.clone(),
            m.suffix.clone(),
            m.request,
            cut,
        );
        Moved { m, old_was_last }
    }

    /// Moves made by the delivery task since the last call; their Redis work is the caller's.
    pub fn take_moved(&self) -> Vec<Moved> {
        std::mem::take(&mut self.inner.lock().moved)
    }

    /// Record a subscription of `conn` and run `attach` (which adds it to the hub) with the cut it must
    /// start with, all under the registry's lock: a rights change applied concurrently either sees the
    /// subscription or is passed to `attach`, never neither.
    pub fn attach_sub<R>(
        &self,
        conn: u64,
        id: QueryId,
        key: SubKey,
        attach: impl FnOnce(Option<u64>) -> R,
    ) -> R {
        let mut g = self.inner.lock();
        let cut = match g.conns.get_mut(&conn) {
            Some(c) => {
                c.subs.push((id, key));
                c.cut
            }
            None => None,
        };
        attach(cut)
    }

    /// Forget a subscription of `conn`.
    pub fn detach_sub(&self, conn: u64, id: QueryId, key: SubKey) {
        if let Some(c) = self.inner.lock().conns.get_mut(&conn) {
            c.subs.retain(|s| *s != (id, key));
        }
    }

    /// Take the connection's pending cut: the position a re-evaluation starting now applies from. The
    /// re-evaluation counts as pending until [`Rights::evaluated`].
    pub fn take_cut(&self, conn: u64) -> Option<u64> {
        let mut g = self.inner.lock();
        let c = g.conns.get_mut(&conn)?;
        let at = c.cut.take()?;
        c.evaluating = true;
        Some(at)
    }

    /// The re-evaluation started by [`Rights::take_cut`] was applied.
    pub fn evaluated(&self, conn: u64) {
        if let Some(c) = self.inner.lock().conns.get_mut(&conn) {
            c.evaluating = false;
        }
    }

    /// Rights changes not yet applied here: connections with a cut or a re-evaluation running, and
    /// moves waiting for an announcement. Zero means every change received so far is in force.
    pub fn pending(&self) -> usize {
        let g = self.inner.lock();
        g.conns
            .values()
            .filter(|c| c.cut.is_some() || c.evaluating)
            .count()
            + g.waiting.len()
    }

    /// The commit LSN of the latest rights change received.
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn.load(Ordering::Relaxed)
    }

    /// The connection's pending cut, if a change arrived since the last [`Rights::take_cut`].
    pub fn pending_cut(&self, conn: u64) -> Option<u64> {
        self.inner.lock().conns.get(&conn)?.cut
    }

    pub fn connections(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// A rights change committed at `pos`, announced by a worker for `a.shards`, touched `a.deps`: make
    /// the moves that waited for it, then (on its first announcement) cut the affected connections'
    /// subscriptions in `hub` and flag the connections. Returns how many connections it touched (none
    /// for a repeat).
    pub fn apply(&self, hub: &Hub, pos: Position, a: &Announcement) -> usize {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner
            .announced
            .entry(pos.lsn)
            .or_default()
            .extend(a.shards.iter().copied());
        while inner.announced.len() > SEEN {
            inner.announced.pop_first();
        }
        Self::make_ready_moves(inner, hub);
        if !inner.seen.insert((pos.lsn, pos.seq)) {
            return 0;
        }
        inner.seen_order.push_back((pos.lsn, pos.seq));
        if inner.seen_order.len() > SEEN
            && let Some(old) = inner.seen_order.pop_front()
        {
            inner.seen.remove(&old);
        }
        let deps = &a.deps;
        self.epoch.bump();
        self.last_lsn.fetch_max(pos.lsn, Ordering::Relaxed);
        let mut touched: HashSet<u64> = HashSet::new();
        if deps.contains(&Dep::Everyone) {
            touched.extend(inner.conns.keys().copied());
        } else {
            for d in deps {
                if let Some(set) = inner.by_dep.get(d) {
                    touched.extend(set.iter().copied());
                }
            }
        }
        for conn in &touched {
            let Some(c) = inner.conns.get_mut(conn) else {
                continue;
            };
            c.cut = Some(c.cut.map_or(pos.lsn, |at| at.min(pos.lsn)));
            tracing::debug!(conn, at = pos.lsn, cut = ?c.cut, subs = c.subs.len(), "rights: cut");
            for (id, key) in &c.subs {
                hub.cut(*id, *key, pos.lsn);
            }
            c.outbox.flag_rights();
        }
        crate::telemetry::rights_change(touched.len());
        touched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(user: Option<&str>, roles: &[&str], policies: &[&str]) -> Arc<Accountability> {
        Arc::new(Accountability {
            user: user.map(str::to_owned),
            role: roles.last().map(|r| (*r).to_owned()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            admin: false,
            app: false,
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            considered: policies.iter().map(|p| (*p).to_owned()).collect(),
            ip: None,
        })
    }

    fn pos(lsn: u64) -> Position {
        Position {
            lsn,
            seq: 0,
            idx: 0,
        }
    }

    #[test]
    fn a_change_touches_the_connections_filed_under_its_deps_once() {
        let hub = Hub::default();
        let r = Rights::default();
        let outboxes: Vec<Arc<Outbox>> = (0..4).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        r.set_identity(1, &outboxes[0], &acct(Some("u1"), &["R"], &["P1"]));
        r.set_identity(2, &outboxes[1], &acct(Some("u2"), &["R"], &["P1", "P2"]));
        r.set_identity(3, &outboxes[2], &acct(Some("u3"), &["S"], &["P3"]));
        r.set_identity(4, &outboxes[3], &acct(None, &[], &["PUB"]));
        let p = |s: &str| Dep::Policy(s.into());
        let ann = |deps: &[Dep]| Announcement {
            deps: deps.to_vec(),
            shards: vec![0],
        };
        let apply = |lsn: u64, deps: &[Dep]| r.apply(&hub, pos(lsn), &ann(deps));
        assert_eq!(apply(10, &[p("P2")]), 1);
        assert_eq!(r.pending_cut(2), Some(10));
        assert!(outboxes[1].take_rights_flag());
        assert!(!outboxes[0].take_rights_flag());
        assert_eq!(apply(10, &[p("P2")]), 0, "a repeat is ignored");
        assert_eq!(apply(11, &[Dep::Role("R".into())]), 2);
        assert_eq!(r.pending_cut(2), Some(10), "the earliest cut stays");
        assert_eq!(r.take_cut(1), Some(11));
        assert_eq!(r.take_cut(1), None);
        assert_eq!(apply(12, &[Dep::Public]), 1);
        assert_eq!(apply(13, &[Dep::User("u3".into())]), 1);
        assert_eq!(apply(14, &[Dep::Everyone]), 4);
        // Re-filed under a new identity: the old deps no longer reach it.
        r.set_identity(3, &outboxes[2], &acct(Some("u3"), &["T"], &["P4"]));
        assert_eq!(apply(15, &[Dep::Role("S".into())]), 0);
        assert_eq!(apply(16, &[p("P4")]), 1);
        r.remove(3);
        assert_eq!(apply(17, &[p("P4")]), 0);
        assert_eq!(r.connections(), 3);
        assert!(
            r.inner.lock().by_dep.get(&p("P4")).is_none(),
            "empty sets go"
        );
    }

    #[test]
    fn a_move_waits_for_the_old_querys_shard_to_announce_the_change() {
        let hub = Hub::default();
        let r = &hub.rights;
        let o = Arc::new(Outbox::new(1 << 20));
        let key = SubKey { conn: 1, sub: 1 };
        r.set_identity(1, &o, &acct(Some("u1"), &["R"], &["P1"]));
        let (old, new) = (QueryId(1), QueryId(2));
        r.attach_sub(1, old, key, |cut| {
            hub.attach_with_cut(old, "{}".into(), 0, key, o.clone(), Bytes::new(), cut)
        });
        hub.activate(old, key, None, 0);
        let ann = |shards: &[u32]| Announcement {
            deps: vec![Dep::Policy("P1".into())],
            shards: shards.to_vec(),
        };
        // Announced first by a worker serving shards 0 and 1; the old query lives in shard 3.
        assert_eq!(r.apply(&hub, pos(50), &ann(&[0, 1])), 1);
        let at = r.take_cut(1).unwrap();
        let m = Move {
            conn: 1,
            key,
            at,
            old,
            old_shard: 3,
            new,
            def: "{}".into(),
            suffix: Bytes::new(),
            outbox: o.clone(),
            request: ReplayRequest { from: at, token: 9 },
        };
        assert!(
            r.plan_move(&hub, m.clone()).is_none(),
            "shard 3 has not spoken"
        );
        // The lagging worker still sends the old query's events from before the change.
        let mut b = common::delivery::start_batch();
        let p49 = Position {
            lsn: 49,
            seq: 0,
            idx: 0,
        };
        common::delivery::append_entry(
            &mut b,
            common::event::EventKind::Create,
            old,
            p49,
            1,
            0,
            b"e49",
        );
        hub.deliver(Bytes::from(b));
        assert_eq!(o.drain().len(), 1, "delivered under the old rights");
        assert!(hub.contains(old) && !hub.contains(new));
        // Its announcement of a later change (or this one) makes the move.
        assert_eq!(
            r.apply(&hub, pos(50), &ann(&[2, 3])),
            0,
            "not applied twice"
        );
        let moved = r.take_moved();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].old_was_last);
        assert!(!hub.contains(old) && hub.contains(new));
        // A move waits for the previous one to complete (its replay to end)...
        let back = Move {
            old: new,
            new: old,
            old_shard: 2,
            ..m.clone()
        };
        assert!(r.plan_move(&hub, back).is_none(), "still rebinding");
        let mut done = common::delivery::start_batch();
        common::delivery::append_replay_done(
            &mut done,
            new,
            Position::ZERO,
            m.request.encode().as_bytes(),
        );
        hub.deliver(Bytes::from(done));
        assert_eq!(r.take_moved().len(), 1, "made when the replay ended");
        assert!(hub.contains(old) && !hub.contains(new));
        r.retry(&hub);
        // ...and is made at once when nothing holds it.
        let mut done = common::delivery::start_batch();
        common::delivery::append_replay_done(
            &mut done,
            old,
            Position::ZERO,
            m.request.encode().as_bytes(),
        );
        hub.deliver(Bytes::from(done));
        let back = Move {
            old,
            new,
            old_shard: 2,
            ..m.clone()
        };
        assert!(r.plan_move(&hub, back).is_some());
        assert!(!hub.contains(old) && hub.contains(new));
        let mut done = common::delivery::start_batch();
        common::delivery::append_replay_done(
            &mut done,
            new,
            Position::ZERO,
            m.request.encode().as_bytes(),
        );
        hub.deliver(Bytes::from(done));
        let back = Move {
            old: new,
            new: old,
            old_shard: 2,
            ..m
        };
        assert!(r.plan_move(&hub, back).is_some());
        assert!(hub.contains(old) && !hub.contains(new));
        // A connection that closes with a move waiting gives back the query it is still on.
        r.apply(&hub, pos(60), &ann(&[0]));
        let at = r.take_cut(1).unwrap();
        let m3 = Move {
            at,
            old,
            new,
            old_shard: 3,
            conn: 1,
            key,
            def: "{}".into(),
            suffix: Bytes::new(),
            outbox: o.clone(),
            request: ReplayRequest {
                from: at,
                token: 10,
            },
        };
        assert!(r.plan_move(&hub, m3).is_none());
        assert_eq!(r.remove(1), vec![(old, key)]);
    }
}
