//! The matching role's rules, with no I/O: which registrations apply, what is replayed for whom, and what
//! each gateway is sent. The Redis driver ([`super::driver`]) feeds it what it read and carries out what
//! it asks for; everything here is unit-tested with plain values (`tests.rs`).
//!
//! Inputs: ctl entries ([`Coordinator::apply_ctl`]), change chunks read live ([`Coordinator::match_live`]),
//! shard moves ([`Coordinator::load_shard`], [`Coordinator::drop_shard`]), chunks re-read for a replay pass
//! ([`Coordinator::replay_chunk`]), and gateways found dead ([`Coordinator::drop_gateway`]).
//! Outputs: gateway messages to publish ([`Coordinator::take_messages`]), the position to checkpoint
//! ([`Coordinator::cursor`]), the stream range a replay pass must re-read ([`ReplayPass::range`]), and the
//! registrations whose replay was served ([`Coordinator::finish_replays`]).
//!
//! The exactly-once rules it keeps (gateways drop what they already delivered, by position, so every
//! rule errs on the side of sending again):
//! - A ctl entry counts only for an owned shard and only if it is newer than the shard's load: the load
//!   read the ctl position first and the shard's hashes second, so older entries are already in it.
//! - A registration that asks for a replay gets the stream re-read from its LSN up to the cursor, for
//!   that (query, gateway) only, closed by a replay-done entry carrying its request; changes after the
//!   cursor reach it live. Registrations are applied before the changes read in the same round.
//! - A newly loaded shard replays from its checkpoint to the cursor, for all its queries and gateways.
//! - All replays queued at one time share one pass over the union of their ranges (each chunk decoded
//!   once); a burst of ten thousand registrations would otherwise re-read the same window each.

use super::index::{Index, Slot};
use super::matcher::{Frame, Scope, match_chunk};
use common::change::{StreamId, TxChunk};
use common::ctl::{self, CtlEntry, CtlError, RegField, ReplayRequest};
use common::delivery::{Position, append_entry, append_replay_done, append_rights};
use common::normalize::{NormalizedQuery, QueryId};
use common::shard::shard_of;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Publish a gateway's message once it grows past this, even mid-batch (bounds memory per gateway).
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Catch a newly loaded shard up from its checkpoint (all its queries, all their gateways).
    Shard(u32),
    /// A registration asking for a replay: one query, one gateway. Ends with a replay-done entry
    /// carrying `request`.
    Query {
        id: QueryId,
        gateway: Arc<str>,
        shard: u32,
        request: ReplayRequest,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Replay {
    target: Target,
    from: StreamId,
    to: StreamId,
}

/// A registration whose replay was served: the driver marks it in the shard's `reg` hash (unless the
/// gateway asked again meanwhile), so a later load of the shard does not replay it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub shard: u32,
    pub field: RegField,
    pub request: ReplayRequest,
}

/// What one ctl entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlOutcome {
    Applied,
    /// For a shard this worker does not own, or already contained in the shard's load.
    NotOurs,
    /// Unreadable (logged by the caller); its position still counts as read.
    Invalid,
}

/// One pass over the stream serving every replay queued when it started.
pub struct ReplayPass {
    batch: Vec<Replay>,
    from: StreamId,
    to: StreamId,
    /// Shards catching up, with the range each wants.
    shard_ranges: HashMap<u32, (StreamId, StreamId)>,
    /// (query, gateway) replays by the query's slot.
    query_ranges: HashMap<Slot, Vec<(StreamId, StreamId, Arc<str>)>>,
    /// The shard of every query a shard replay covers.
    shard_of_slot: HashMap<Slot, u32>,
    /// The union's bounds over all query replays: a cheap first test before decoding a chunk.
    query_span: (StreamId, StreamId),
}

fn within(at: StreamId, (f, t): (StreamId, StreamId)) -> bool {
    f <= at && at <= t
}

impl ReplayPass {
    /// The stream range to re-read (inclusive), or `None` when nothing needs reading (the replay-done
    /// entries are still due: call [`Coordinator::finish_replays`]).
    pub fn range(&self) -> Option<(StreamId, StreamId)> {
        let empty = self.shard_ranges.is_empty() && self.query_ranges.is_empty();
        (self.from <= self.to && !empty).then_some((self.from, self.to))
    }

    /// Whether the entry at `at` can matter to this pass (decode it only then).
    pub fn wants(&self, at: StreamId) -> bool {
        within(at, self.query_span) || self.shard_ranges.values().any(|r| within(at, *r))
    }

    /// How many replays the pass serves.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// Messages waiting to be published, one per gateway.
#[derive(Default)]
struct Outgoing {
    msgs: HashMap<Arc<str>, Vec<u8>>,
    /// Event entries in `msgs` (for the published-frames counter).
    frames: u64,
}

/// A chunk's frames waiting for related items: nothing after them goes out before they do.
struct Held {
    xid: u32,
    commit_time: i64,
    lsn: u64,
    seq: u32,
    /// Each frame, the gateways it goes to, and its query (for the related reads).
    frames: Vec<(Frame, Vec<Arc<str>>, Arc<NormalizedQuery>)>,
    /// Items of relational queries to read again because a row they show changed.
    follows: Vec<Follow>,
}

/// The items of one relational query whose column `by` holds one of `keys`: they show a related row
/// the chunk changed, and get an `update`.
#[derive(Debug, Clone)]
struct Follow {
    slot: Slot,
    def: Arc<NormalizedQuery>,
    gateways: Vec<Arc<str>>,
    by: String,
    keys: Vec<String>,
    /// Items the chunk changed themselves (their own event already shows them).
    skip: std::collections::HashSet<String>,
}

/// Items per `update` frame of a follow: an author of a million posts sends many frames, not one
/// message of hundreds of megabytes.
const FOLLOW_FRAME_ITEMS: usize = 1000;

/// One statement reading the items of a [`Follow`]; its rows go back through
/// [`Coordinator::related_rows_followed`].
#[derive(Debug, Clone, PartialEq)]
pub struct FollowRead {
    pub follow: usize,
    pub sql: common::sql::Sql,
}

/// Whether the subscriber may read this related row (its permission filter there holds): a change to
/// a row it may not read must not make its items look changed.
fn may_see(
    filter: &common::filter::Filter,
    cells: &[common::change::Cell],
    rel: &common::change::Relation,
) -> bool {
    if filter.is_true() {
        return true;
    }
    let datums: HashMap<&str, common::value::Datum> = rel
        .columns
        .iter()
        .zip(cells)
        .filter_map(|(c, cell)| {
            let d = match cell {
                common::change::Cell::Text(t) => common::value::parse_datum(&c.kind, t).ok()?,
                common::change::Cell::Null => common::value::Datum::Null,
                common::change::Cell::Unchanged => return None,
            };
            Some((c.name.as_str(), d))
        })
        .collect();
    filter.matches(&|name: &str| datums.get(name))
}

fn cell_at<'a>(
    cells: &'a [common::change::Cell],
    rel: &common::change::Relation,
    column: &str,
) -> Option<&'a common::change::Cell> {
    cells.get(rel.columns.iter().position(|c| c.name == column)?)
}

fn cell_text(
    cells: &[common::change::Cell],
    rel: &common::change::Relation,
    column: &str,
) -> Option<String> {
    cell_at(cells, rel, column)?.as_text().map(str::to_owned)
}

/// One statement to run for held frames: its rows go back through [`Coordinator::related_rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedRead {
    pub frame: usize,
    pub relation: u16,
    pub sql: common::sql::Sql,
}

impl Outgoing {
    fn append(&mut self, gw: &Arc<str>, f: &Frame, chunk: &TxChunk) {
        self.append_at(gw, f, chunk.xid, chunk.commit_time)
    }

    fn append_at(&mut self, gw: &Arc<str>, f: &Frame, xid: u32, commit_time: i64) {
        self.frames += 1;
        let msg = self
            .msgs
            .entry(gw.clone())
            .or_insert_with(common::delivery::start_batch);
        append_entry(msg, f.kind, f.query, f.pos, xid, commit_time, &f.data);
    }

    /// A rights entry for `chunk` (which touched `deps`) to every gateway in `gateways`.
    fn rights(&mut self, gateways: &[Arc<str>], chunk: &TxChunk, deps: &[u8]) {
        let pos = Position {
            lsn: chunk.lsn,
            seq: chunk.seq,
            idx: 0,
        };
        for gw in gateways {
            let msg = self
                .msgs
                .entry(gw.clone())
                .or_insert_with(common::delivery::start_batch);
            append_rights(msg, pos, chunk.xid, chunk.commit_time, deps);
        }
    }
}

/// Gateway messages ready to publish, and how many event entries they hold.
#[derive(Debug, Default)]
pub struct Messages {
    pub msgs: Vec<(Arc<str>, Vec<u8>)>,
    pub frames: u64,
}

pub struct Coordinator {
    schema: String,
    shards: u32,
    index: Index,
    /// The last change stream entry matched live.
    cursor: StreamId,
    /// The last ctl stream entry read.
    ctl: StreamId,
    /// Per owned shard, the ctl position its registrations were loaded at: older entries are in the load.
    loaded_at: BTreeMap<u32, StreamId>,
    replays: VecDeque<Replay>,
    out: Outgoing,
    /// Reused between chunks.
    frames: Vec<Frame>,
    /// Frames of relational queries (and everything matched with them) waiting for related items.
    held: Option<Held>,
    /// Transactions recently read from the stream, with their commit LSN, oldest first: which row
    /// versions a follow read may show (those written at or before the change it follows).
    xids: HashMap<u32, u64>,
    xid_order: VecDeque<u32>,
}

/// How many recent transactions [`Coordinator::xids`] remembers. A row version whose writer is older
/// than all of them is shown; one whose writer is newer but unseen committed after the followed
/// change (or not at all) and is left out, its own event showing it.
const RECENT_XIDS: usize = 100_000;

/// `a` precedes `b` in PostgreSQL's circular transaction id order.
fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Coordinator {
    /// `schema`: the PostgreSQL schema whose tables are matched; `shards`: the cluster's shard count;
    /// `cursor`/`ctl`: where the streams are read from.
    pub fn new(schema: &str, shards: u32, cursor: StreamId, ctl: StreamId) -> Coordinator {
        Coordinator {
            schema: schema.to_owned(),
            shards,
            index: Index::default(),
            cursor,
            ctl,
            loaded_at: BTreeMap::new(),
            replays: VecDeque::new(),
            out: Outgoing::default(),
            frames: Vec::new(),
            held: None,
            xids: HashMap::new(),
            xid_order: VecDeque::new(),
        }
    }

    fn remember_xid(&mut self, xid: u32, lsn: u64) {
        if self.xids.insert(xid, lsn).is_none() {
            self.xid_order.push_back(xid);
            while self.xid_order.len() > RECENT_XIDS {
                if let Some(old) = self.xid_order.pop_front() {
                    self.xids.remove(&old);
                }
            }
        }
    }

    /// Whether a row version written by `xmin` existed when the change at `lsn` committed.
    fn written_by(&self, xmin: u32, lsn: u64) -> bool {
        // Frozen (and bootstrap) versions are old.
        if xmin < 3 {
            return true;
        }
        match self.xids.get(&xmin) {
            Some(&at) => at <= lsn,
            None => self
                .xid_order
                .front()
                .is_none_or(|&oldest| xid_precedes(xmin, oldest)),
        }
    }

    /// Route a chunk's frames: straight out, or (when some query needs related items read) held with
    /// everything else of the chunk until [`Coordinator::release_held`], so the order between events
    /// and announcements is the order of the stream.
    fn route(
        &mut self,
        chunk: &TxChunk,
        routed: Vec<(Frame, Vec<Arc<str>>)>,
        follows: Vec<Follow>,
    ) {
        assert!(
            self.held.is_none(),
            "related reads of a previous chunk are still open"
        );
        if !follows.is_empty() || routed.iter().any(|(f, _)| f.marks.is_some()) {
            let frames = routed
                .into_iter()
                .filter_map(|(f, gws)| {
                    let def = self.index.get(f.slot)?.def.clone();
                    Some((f, gws, def))
                })
                .collect();
            self.held = Some(Held {
                xid: chunk.xid,
                commit_time: chunk.commit_time,
                lsn: chunk.lsn,
                seq: chunk.seq,
                frames,
                follows,
            });
            return;
        }
        for (f, gws) in &routed {
            for gw in gws {
                self.out.append(gw, f, chunk);
            }
        }
    }

    /// The changes of `chunk` to rows that relational queries show one level down (an author's email,
    /// a new comment): which of their items to read again. `wanted` limits it to some queries (a
    /// replay); `gateways` says where each query's frames go.
    fn plan_follows(
        &self,
        chunk: &TxChunk,
        wanted: &dyn Fn(Slot) -> bool,
        gateways: &dyn Fn(Slot) -> Vec<Arc<str>>,
    ) -> Vec<Follow> {
        use common::change::Change;
        let mut out: Vec<Follow> = Vec::new();
        if !self.index.has_followers() {
            return out;
        }
        if !chunk
            .relations
            .iter()
            .any(|r| r.schema == self.schema && !self.index.followers(&r.table).is_empty())
        {
            return out;
        }
        for change in &chunk.changes {
            let (rel_id, old, new) = match change {
                Change::Insert { rel, new } => (*rel, None, Some(new)),
                Change::Update { rel, old, new } => (*rel, old.as_ref(), Some(new)),
                Change::Delete { rel, old } => (*rel, Some(old), None),
                Change::Truncate { .. } => continue,
            };
            let Some(rel) = chunk.relation(rel_id).filter(|r| r.schema == self.schema) else {
                continue;
            };
            for &slot in self.index.followers(&rel.table) {
                if !wanted(slot) {
                    continue;
                }
                let Some(entry) = self.index.get(slot) else {
                    continue;
                };
                let def = &entry.def;
                if !def.wants(common::event::EventKind::Update) {
                    continue;
                }
                for p in &def.fields {
                    let Some(r) = p.relation.and_then(|r| def.relations.get(r as usize)) else {
                        continue;
                    };
                    if r.collection != rel.table {
                        continue;
                    }
                    // Only a change to what the item shows (or to which parent it belongs).
                    let touched = match (old, new) {
                        (Some(o), Some(n)) if !o.key_only => r
                            .columns
                            .iter()
                            .map(|(c, _)| c.as_str())
                            .chain(r.foreign_key.as_deref())
                            .any(|c| cell_at(&o.cells, rel, c) != cell_at(n, rel, c)),
                        _ => true,
                    };
                    if !touched {
                        continue;
                    }
                    let visible = new.is_some_and(|n| may_see(&r.filter, n, rel))
                        || old.is_some_and(|o| !o.key_only && may_see(&r.filter, &o.cells, rel));
                    if !visible {
                        continue;
                    }
                    let (by, key_column) = match (&r.foreign_key, &p.key) {
                        (Some(fk), Some(root_key)) => (root_key.clone(), fk.as_str()),
                        _ => (p.field.clone(), r.primary_key.as_str()),
                    };
                    let mut keys: Vec<String> = Vec::new();
                    if let Some(n) = new {
                        keys.extend(cell_text(n, rel, key_column));
                    }
                    if let Some(o) = old {
                        keys.extend(cell_text(&o.cells, rel, key_column));
                    }
                    if keys.is_empty() {
                        continue;
                    }
                    let f = match out.iter_mut().position(|f| f.slot == slot && f.by == by) {
                        Some(i) => &mut out[i],
                        None => {
                            out.push(Follow {
                                slot,
                                def: def.clone(),
                                gateways: gateways(slot),
                                by,
                                keys: Vec::new(),
                                skip: Default::default(),
                            });
                            out.last_mut().expect("pushed")
                        }
                    };
                    f.keys.extend(keys);
                }
            }
        }
        // Items the chunk changed themselves already have their own event.
        for f in &mut out {
            f.keys.sort();
            f.keys.dedup();
            for change in &chunk.changes {
                let (rel_id, cells) = match change {
                    Change::Insert { rel, new } | Change::Update { rel, new, .. } => (*rel, new),
                    _ => continue,
                };
                if let Some(rel) = chunk
                    .relation(rel_id)
                    .filter(|r| r.schema == self.schema && r.table == f.def.collection)
                    && let Some(k) = cell_text(cells, rel, &f.def.primary_key)
                {
                    f.skip.insert(k);
                }
            }
        }
        out.retain(|f| !f.gateways.is_empty());
        out
    }

    /// The statements reading the items held follows show in (asked once, before the related
    /// items).
    pub fn follow_reads(&mut self) -> Vec<FollowRead> {
        let Some(held) = &mut self.held else {
            return Vec::new();
        };
        let reads = held
            .follows
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.keys.is_empty())
            .map(|(i, f)| FollowRead {
                follow: i,
                sql: common::sql::follow(&f.def, &f.by, &f.keys),
            })
            .collect();
        for f in &mut held.follows {
            f.keys.clear();
        }
        reads
    }

    /// Rows read for a [`FollowRead`]: one `update` frame of those items (its related items marked,
    /// read next), placed after the query's own frames of the chunk.
    pub fn related_rows_followed(&mut self, read: &FollowRead, rows: &[Vec<Option<String>>]) {
        let Some(held) = &self.held else { return };
        let Some(f) = held.follows.get(read.follow) else {
            return;
        };
        let width = f.def.root_columns.len();
        // Versions written after the followed change are left out: their own events come later.
        let rows: Vec<&Vec<Option<String>>> = rows
            .iter()
            .filter(|r| {
                r.get(width)
                    .and_then(|x| x.as_deref())
                    .and_then(|x| x.parse::<u32>().ok())
                    .is_none_or(|xmin| self.written_by(xmin, held.lsn))
            })
            .filter(|r| {
                r.first()
                    .and_then(|k| k.as_deref())
                    .is_some_and(|k| !f.skip.contains(k))
            })
            .collect();
        let query = self.index.get(f.slot).map_or(QueryId(0), |e| e.id);
        let Some(held) = &mut self.held else { return };
        let Some(f) = held.follows.get(read.follow) else {
            return;
        };
        let single = f.def.item.is_some();
        let per_frame = if single { 1 } else { FOLLOW_FRAME_ITEMS };
        let rows = if single {
            &rows[..rows.len().min(1)]
        } else {
            &rows[..]
        };
        for part in rows.chunks(per_frame) {
            let mut marks = common::project::Marks::new();
            let mut data = Vec::new();
            if !single {
                data.push(b'[');
            }
            for (n, row) in part.iter().enumerate() {
                if n > 0 {
                    data.push(b',');
                }
                let view = common::project::TextRow::new(
                    &f.def.root_columns,
                    &row[..width.min(row.len())],
                );
                common::project::write_object_marked(&mut data, &f.def.fields, &view, &mut marks);
            }
            if !single {
                data.push(b']');
            }
            // After every frame of this query already held for the chunk (its own, earlier follows).
            let idx = held
                .frames
                .iter()
                .filter(|(fr, _, _)| fr.slot == f.slot)
                .count();
            let frame = Frame {
                slot: f.slot,
                query,
                pos: Position {
                    lsn: held.lsn,
                    seq: held.seq,
                    idx: idx.min(u16::MAX as usize) as u16,
                },
                kind: common::event::EventKind::Update,
                data,
                marks: (!marks.is_empty()).then(|| Box::new(marks)),
            };
            held.frames.push((frame, f.gateways.clone(), f.def.clone()));
        }
    }

    /// The related items held frames still need: one statement per frame and relation, for all the
    /// keys it shows. Empty once every item (and the items they show) was read.
    pub fn related_reads(&mut self) -> Vec<RelatedRead> {
        let Some(held) = &mut self.held else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, (f, _, def)) in held.frames.iter_mut().enumerate() {
            let Some(marks) = &mut f.marks else { continue };
            for (rel, keys) in marks.wanted() {
                if let Some(r) = def.relations.get(rel as usize) {
                    out.push(RelatedRead {
                        frame: i,
                        relation: rel,
                        sql: common::sql::related(r, &keys),
                    });
                }
            }
        }
        out
    }

    /// Rows read for a [`RelatedRead`] (cells as text, in the statement's column order).
    pub fn related_rows(&mut self, read: &RelatedRead, rows: &[Vec<Option<String>>]) {
        let Some(held) = &mut self.held else { return };
        let Some((f, _, def)) = held.frames.get_mut(read.frame) else {
            return;
        };
        let (Some(marks), Some(rel)) = (&mut f.marks, def.relations.get(read.relation as usize))
        else {
            return;
        };
        for row in rows {
            marks.found(read.relation, rel, row);
        }
    }

    /// Whether frames wait for related items.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Every related item was read: splice them in and send the held frames, in order.
    pub fn release_held(&mut self) {
        let Some(held) = self.held.take() else { return };
        for (mut f, gws, _) in held.frames {
            if let Some(marks) = f.marks.take() {
                f.data = marks.splice(&f.data);
            }
            for gw in &gws {
                self.out.append_at(gw, &f, held.xid, held.commit_time);
            }
        }
    }

    pub fn cursor(&self) -> StreamId {
        self.cursor
    }

    pub fn ctl_position(&self) -> StreamId {
        self.ctl
    }

    /// The ctl stream was trimmed past our position: carry on from `at` (the owned shards are reloaded).
    pub fn skip_ctl_to(&mut self, at: StreamId) {
        self.ctl = at;
    }

    pub fn query_count(&self) -> usize {
        self.index.len()
    }

    pub fn replays_queued(&self) -> usize {
        self.replays.len()
    }

    /// Gateways some registration names.
    pub fn gateways(&self) -> Vec<Arc<str>> {
        self.index.gateways()
    }

    /// Shards whose registrations are loaded.
    pub fn loaded_shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.loaded_at.keys().copied()
    }

    /// Apply a ctl entry read at `at`.
    pub fn apply_ctl(&mut self, at: StreamId, entry: Result<CtlEntry, CtlError>) -> CtlOutcome {
        self.ctl = self.ctl.max(at);
        let Ok(entry) = entry else {
            return CtlOutcome::Invalid;
        };
        let n = shard_of(entry.query(), self.shards);
        if self.loaded_at.get(&n).is_none_or(|loaded| at <= *loaded) {
            return CtlOutcome::NotOurs;
        }
        match entry {
            CtlEntry::Register {
                query,
                gateway,
                replay,
                definition,
            } => {
                let Some(def) = serde_json::from_str::<NormalizedQuery>(&definition)
                    .ok()
                    .filter(|q| q.id() == query)
                else {
                    return CtlOutcome::Invalid;
                };
                self.index.register(query, n, Arc::new(def), &gateway);
                self.schedule_query_replay(query, &gateway, n, replay);
            }
            CtlEntry::Unregister { query, gateway } => {
                self.index.unregister(&query, &gateway);
            }
        }
        CtlOutcome::Applied
    }

    fn schedule_query_replay(&mut self, id: QueryId, gw: &str, shard: u32, replay: ctl::Replay) {
        let ctl::Replay::From(request) = replay else {
            return;
        };
        // A replay starting after the cursor re-reads nothing but still sends its replay-done entry,
        // which the gateway may be waiting for.
        self.replays.push_back(Replay {
            target: Target::Query {
                id,
                gateway: gw.into(),
                shard,
                request,
            },
            from: StreamId {
                lsn: request.from,
                seq: 0,
            },
            to: self.cursor,
        });
    }

    /// A shard was acquired and read: `at` is the ctl position read *before* its hashes, `defs` its
    /// query definitions (id, canonical JSON), `regs` its registrations (field, replay), `checkpoint`
    /// the position its last owner published up to. Returns the definitions and registrations that
    /// could not be read.
    pub fn load_shard(
        &mut self,
        n: u32,
        at: StreamId,
        defs: &[(String, String)],
        regs: &[(String, String)],
        checkpoint: Option<StreamId>,
    ) -> usize {
        let mut unreadable = 0;
        let mut parsed: HashMap<QueryId, Arc<NormalizedQuery>> = HashMap::new();
        for (id, json) in defs {
            match serde_json::from_str::<NormalizedQuery>(json) {
                Ok(q) if q.id().to_string() == *id => {
                    parsed.insert(q.id(), Arc::new(q));
                }
                _ => unreadable += 1,
            }
        }
        for (field, replay) in regs {
            let (Some(reg), Some(replay)) = (
                RegField::decode(field),
                ctl::Replay::decode(replay.as_bytes()),
            ) else {
                unreadable += 1;
                continue;
            };
            // A registration whose definition is gone is being removed: skip it.
            let Some(def) = parsed.get(&reg.query) else {
                continue;
            };
            self.index.register(reg.query, n, def.clone(), &reg.gateway);
            self.schedule_query_replay(reg.query, &reg.gateway, n, replay);
        }
        self.loaded_at.insert(n, at);
        if let Some(from) = checkpoint
            && from < self.cursor
        {
            // Before the shard's query replays: they may start later and are closed after the pass.
            self.replays.push_front(Replay {
                target: Target::Shard(n),
                from,
                to: self.cursor,
            });
        }
        unreadable
    }

    /// Forget a shard (released, or its lease was lost): its queries and its queued replays.
    pub fn drop_shard(&mut self, n: u32) {
        self.index.remove_shard(n);
        self.loaded_at.remove(&n);
        self.replays.retain(|r| match &r.target {
            Target::Shard(s) => *s != n,
            Target::Query { shard, .. } => *shard != n,
        });
    }

    /// Match one change stream entry read live; `None` for an unreadable entry (skipped). Returns the
    /// number of changes matched.
    pub fn match_live(&mut self, at: StreamId, chunk: Option<&TxChunk>) -> usize {
        self.cursor = at;
        let Some(chunk) = chunk else {
            return 0;
        };
        self.remember_xid(chunk.xid, chunk.lsn);
        // Said once, when the change is first read (a replay of it does not repeat it).
        for b in common::rights::broken_permissions(chunk, &self.schema) {
            tracing::warn!(
                permission = %b.id,
                policy = %b.policy,
                collection = %b.collection,
                action = %b.action,
                reason = %b.reason,
                "a permission row has a broken filter: the subscriptions it governs end with FORBIDDEN until it is fixed"
            );
        }
        self.announce_rights(
            chunk,
            |me: &Coordinator| {
                // Shards still to catch up have not sent everything up to this commit yet.
                let catching_up: Vec<u32> = me
                    .replays
                    .iter()
                    .filter_map(|r| match r.target {
                        Target::Shard(n) => Some(n),
                        Target::Query { .. } => None,
                    })
                    .collect();
                me.loaded_at
                    .keys()
                    .copied()
                    .filter(|n| !catching_up.contains(n))
                    .collect()
            },
            |me: &Coordinator| me.index.gateways(),
        );
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        match_chunk(
            &mut self.index,
            &self.schema,
            chunk,
            Scope::All,
            &mut frames,
        );
        let follows = self.plan_follows(chunk, &|_| true, &|slot| {
            self.index
                .get(slot)
                .map_or_else(Vec::new, |e| e.gateways.clone())
        });
        if !follows.is_empty() || frames.iter().any(|f| f.marks.is_some()) {
            let routed: Vec<(Frame, Vec<Arc<str>>)> = frames
                .drain(..)
                .map(|f| {
                    let gws = self
                        .index
                        .get(f.slot)
                        .expect("matched slot is live")
                        .gateways
                        .clone();
                    (f, gws)
                })
                .collect();
            self.route(chunk, routed, follows);
        } else {
            // The common case: no related items, straight out without copying the routes.
            for f in &frames {
                let entry = self.index.get(f.slot).expect("matched slot is live");
                for gw in &entry.gateways {
                    self.out.append(gw, f, chunk);
                }
            }
        }
        self.frames = frames;
        chunk.changes.len()
    }

    /// A chunk that changed rights is announced to `gateways`, ahead of every event matched after it,
    /// so a gateway knows of the change before any later event arrives from here. `shards`: those
    /// whose events up to this chunk have all been sent (see `common::rights::Announcement`). Both are
    /// computed only for such a chunk: the common chunk pays one scan of its relations.
    fn announce_rights(
        &mut self,
        chunk: &TxChunk,
        shards: impl FnOnce(&Coordinator) -> Vec<u32>,
        gateways: impl FnOnce(&Coordinator) -> Vec<Arc<str>>,
    ) {
        let deps = common::rights::chunk_deps(chunk, &self.schema);
        if deps.is_empty() {
            return;
        }
        let mut shards = shards(self);
        shards.sort_unstable();
        let body =
            common::rights::encode_announcement(&common::rights::Announcement { deps, shards });
        let gateways = gateways(self);
        self.out.rights(&gateways, chunk, &body);
    }

    /// Take every queued replay into one pass.
    pub fn start_replays(&mut self) -> Option<ReplayPass> {
        if self.replays.is_empty() {
            return None;
        }
        let batch: Vec<Replay> = self.replays.drain(..).collect();
        let from = batch.iter().map(|r| r.from).min().expect("non-empty");
        let to = batch.iter().map(|r| r.to).max().expect("non-empty");
        let mut shard_ranges: HashMap<u32, (StreamId, StreamId)> = HashMap::new();
        let mut query_ranges: HashMap<Slot, Vec<(StreamId, StreamId, Arc<str>)>> = HashMap::new();
        for r in &batch {
            match &r.target {
                Target::Shard(n) => {
                    let e = shard_ranges.entry(*n).or_insert((r.from, r.to));
                    *e = (e.0.min(r.from), e.1.max(r.to));
                }
                Target::Query { id, gateway, .. } => {
                    if let Some(slot) = self.index.slot_of(id) {
                        query_ranges
                            .entry(slot)
                            .or_default()
                            .push((r.from, r.to, gateway.clone()));
                    }
                }
            }
        }
        let shard_of_slot: HashMap<Slot, u32> = if shard_ranges.is_empty() {
            HashMap::new()
        } else {
            self.index
                .entries_with_slots()
                .filter(|(_, e)| shard_ranges.contains_key(&e.shard))
                .map(|(slot, e)| (slot, e.shard))
                .collect()
        };
        let empty_span = (
            StreamId {
                lsn: u64::MAX,
                seq: u64::MAX,
            },
            StreamId::default(),
        );
        let query_span = query_ranges
            .values()
            .flatten()
            .fold(empty_span, |(lo, hi), (f, t, _)| (lo.min(*f), hi.max(*t)));
        Some(ReplayPass {
            batch,
            from,
            to,
            shard_ranges,
            query_ranges,
            shard_of_slot,
            query_span,
        })
    }

    /// Match one chunk re-read for `pass`, for the replays whose range contains it.
    pub fn replay_chunk(&mut self, pass: &ReplayPass, at: StreamId, chunk: &TxChunk) {
        let shards: Vec<u32> = pass
            .shard_ranges
            .iter()
            .filter(|(_, r)| within(at, **r))
            .map(|(n, _)| *n)
            .collect();
        let wanted = |slot: Slot| {
            pass.shard_of_slot
                .get(&slot)
                .is_some_and(|n| shards.contains(n))
                || pass
                    .query_ranges
                    .get(&slot)
                    .is_some_and(|rs| rs.iter().any(|(f, t, _)| within(at, (*f, *t))))
        };
        // Shards whose events up to here went out in this pass: those caught up, and the shards of the
        // queries replayed (their gateway may not have been in the index when this commit was matched
        // live, so it was told nothing then). Told to the gateways the pass replays for.
        let announced = |me: &Coordinator| {
            let mut announced = shards.clone();
            for (slot, rs) in &pass.query_ranges {
                if rs.iter().any(|(f, t, _)| within(at, (*f, *t)))
                    && let Some(e) = me.index.get(*slot)
                    && !announced.contains(&e.shard)
                {
                    announced.push(e.shard);
                }
            }
            announced
        };
        let told = |me: &Coordinator| {
            let mut gateways: std::collections::HashSet<Arc<str>> = pass
                .query_ranges
                .values()
                .flatten()
                .filter(|(f, t, _)| within(at, (*f, *t)))
                .map(|(_, _, gw)| gw.clone())
                .collect();
            if !shards.is_empty() {
                gateways.extend(
                    pass.shard_of_slot
                        .iter()
                        .filter(|(_, n)| shards.contains(n))
                        .filter_map(|(slot, _)| me.index.get(*slot))
                        .flat_map(|e| e.gateways.iter().cloned()),
                );
            }
            let mut gateways: Vec<Arc<str>> = gateways.into_iter().collect();
            gateways.sort();
            gateways
        };
        self.announce_rights(chunk, announced, told);
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        match_chunk(
            &mut self.index,
            &self.schema,
            chunk,
            Scope::Where(&wanted),
            &mut frames,
        );
        // Where a query's frames of this entry go in this pass.
        let route_of = |me: &Coordinator, slot: Slot| -> Vec<Arc<str>> {
            let Some(entry) = me.index.get(slot) else {
                return Vec::new();
            };
            if shards.contains(&entry.shard) {
                entry.gateways.iter().cloned().collect()
            } else if let Some(rs) = pass.query_ranges.get(&slot) {
                rs.iter()
                    .filter(|(f, t, _)| within(at, (*f, *t)))
                    .map(|(_, _, gw)| gw.clone())
                    .collect()
            } else {
                Vec::new()
            }
        };
        let mut routed: Vec<(Frame, Vec<Arc<str>>)> = Vec::with_capacity(frames.len());
        for f in frames.drain(..) {
            if self.index.get(f.slot).is_none() {
                continue;
            }
            let gws = route_of(self, f.slot);
            routed.push((f, gws));
        }
        let follows = self.plan_follows(chunk, &wanted, &|slot| route_of(self, slot));
        self.route(chunk, routed, follows);
        self.frames = frames;
    }

    /// The pass is over: close each query replay with its replay-done entry (after what it replayed).
    /// Returns the registrations to mark as served.
    pub fn finish_replays(&mut self, pass: ReplayPass) -> Vec<Served> {
        let mut served = Vec::new();
        for r in pass.batch {
            let Target::Query {
                id,
                gateway,
                shard,
                request,
            } = r.target
            else {
                continue;
            };
            let msg = self
                .out
                .msgs
                .entry(gateway.clone())
                .or_insert_with(common::delivery::start_batch);
            let upto = Position {
                lsn: r.to.lsn,
                seq: r.to.seq as u32,
                idx: u16::MAX,
            };
            append_replay_done(msg, id, upto, request.encode().as_bytes());
            served.push(Served {
                shard,
                field: RegField::new(id, &gateway),
                request,
            });
        }
        served
    }

    /// Whether some gateway's message should be published now, mid-batch.
    pub fn over_budget(&self) -> bool {
        self.out.msgs.values().any(|m| m.len() > MAX_MESSAGE)
    }

    /// The messages to publish now.
    pub fn take_messages(&mut self) -> Messages {
        Messages {
            msgs: self.out.msgs.drain().collect(),
            frames: std::mem::take(&mut self.out.frames),
        }
    }

    /// A gateway stopped heartbeating: forget its registrations. Returns (query, shard) of each, for
    /// the driver to remove from Redis.
    pub fn drop_gateway(&mut self, gw: &str) -> Vec<(QueryId, u32)> {
        let queries: Vec<(QueryId, u32)> = self
            .index
            .entries()
            .filter(|e| e.gateways.iter().any(|g| &**g == gw))
            .map(|e| (e.id, e.shard))
            .collect();
        self.index.drop_gateway(gw);
        queries
    }
}

#[cfg(test)]
mod tests;
