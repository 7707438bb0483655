//! Matching captured changes against the index and building each query's event frames.
//!
//! For every change, the candidates from the [`Index`] are evaluated against the old and the new row:
//!
//! | old row | new row | event |
//! |---|---|---|
//! | – (insert) | matches | `create` |
//! | matches or not | matches | `update` (an update entering the filter is an `update`) |
//! | matches | does not | `delete` with the key (the row left the filter) |
//! | matches (delete) | – | `delete` |
//!
//! A value the change stream cannot provide (old rows without `REPLICA IDENTITY FULL`, unchanged TOASTed
//! values) makes the filter "unknown": an unknown new row sends nothing, an unknown old row of a delete
//! sends the key (as Directus always does).
//!
//! Frames: per query and chunk, consecutive events of one kind form one frame (a bulk update is one
//! `update` with several rows); the body is encoded once and shared by every gateway and subscriber.

use super::index::{Index, Lookup, Slot, index_key};
use common::change::{Cell, Change, Relation, TxChunk};
use common::delivery::Position;
use common::event::EventKind;
use common::filter::Filter;
use common::normalize::{NormalizedQuery, QueryId};
use common::project::{self, Marks, ProjectRow};
use common::value::{self, Datum, Kind};
use std::cell::OnceCell;
use std::collections::HashMap;

/// A row of a change, with values parsed on demand.
struct RowView<'a> {
    rel: &'a Relation,
    cells: &'a [Cell],
    /// Only the replica-identity key columns are real (old row of a non-FULL table).
    key_only: bool,
    parsed: Vec<OnceCell<Option<Datum>>>,
}

impl<'a> RowView<'a> {
    fn new(rel: &'a Relation, cells: &'a [Cell], key_only: bool) -> RowView<'a> {
        RowView {
            rel,
            cells,
            key_only,
            parsed: (0..cells.len()).map(|_| OnceCell::new()).collect(),
        }
    }

    fn known(&self, i: usize) -> bool {
        match self.cells.get(i) {
            None | Some(Cell::Unchanged) => false,
            Some(_) => !self.key_only || self.rel.columns[i].key,
        }
    }

    /// The datum of column `i` (`Datum::Null` for NULL); `None` if unknown or unparseable.
    fn datum(&self, i: usize) -> Option<&Datum> {
        if !self.known(i) {
            return None;
        }
        self.parsed[i]
            .get_or_init(|| match &self.cells[i] {
                Cell::Null => Some(Datum::Null),
                Cell::Text(t) => value::parse_datum(&self.rel.columns[i].kind, t).ok(),
                Cell::Unchanged => None,
            })
            .as_ref()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Unknown,
}

struct Ctx<'a> {
    rel: &'a Relation,
    columns: HashMap<&'a str, usize>,
}

impl Ctx<'_> {
    fn idx(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    fn eval(&self, f: &Filter, row: &RowView) -> Tri {
        // Unknown if the filter needs a value the row does not have.
        for c in f.conditions() {
            match self.idx(&c.field) {
                Some(i) if row.known(i) => {}
                Some(_) => return Tri::Unknown,
                // A column the relation no longer has is NULL.
                None => {}
            }
        }
        let null = Datum::Null;
        let get = |name: &str| -> Option<&Datum> {
            Some(self.idx(name).and_then(|i| row.datum(i)).unwrap_or(&null))
        };
        if f.matches(&get) { Tri::Yes } else { Tri::No }
    }

    fn key_text<'r>(&self, q: &NormalizedQuery, row: &'r RowView) -> Option<&'r str> {
        row.cells.get(self.idx(&q.primary_key)?)?.as_text()
    }

    fn write_key(&self, out: &mut Vec<u8>, q: &NormalizedQuery, row: &RowView) {
        value::write_json_string(out, self.key_text(q, row).unwrap_or_default());
    }

    /// `{"field":value,...}` with the query's projection and per-field visibility ([`project`]);
    /// related items as placeholders in `marks` (read and spliced before the frame is sent).
    fn write_object(
        &self,
        out: &mut Vec<u8>,
        q: &NormalizedQuery,
        row: &RowView,
        marks: Option<&mut Marks>,
    ) {
        let view = EventRow { ctx: self, row };
        match marks {
            Some(m) => project::write_object_marked(out, &q.fields, &view, m),
            None => project::write_object(out, &q.fields, &view),
        }
    }
}

/// A change's row as the projection reads it.
struct EventRow<'c, 'r> {
    ctx: &'c Ctx<'c>,
    row: &'c RowView<'r>,
}

impl ProjectRow for EventRow<'_, '_> {
    fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)> {
        let i = self.ctx.idx(field)?;
        let text = match &self.row.cells[i] {
            Cell::Text(t) => Some(t.as_str()),
            // Unknown (unchanged TOAST without the old row) is sent as null.
            Cell::Null | Cell::Unchanged => None,
        };
        Some((&self.ctx.rel.columns[i].kind, text))
    }

    fn holds(&self, when: &Filter) -> bool {
        self.ctx.eval(when, self.row) == Tri::Yes
    }
}

/// Add one event to a query's frames: consecutive events of one kind share a frame, except for item
/// subscriptions whose `data` is a single object.
fn push_event(
    pending: &mut Vec<Pending>,
    pending_at: &mut HashMap<Slot, usize>,
    slot: Slot,
    q: &NormalizedQuery,
    kind: EventKind,
    write: &dyn Fn(&mut Vec<u8>, Option<&mut Marks>),
) {
    if !q.wants(kind) {
        return;
    }
    let at = *pending_at.entry(slot).or_insert_with(|| {
        pending.push(Pending {
            slot,
            frames: Vec::new(),
        });
        pending.len() - 1
    });
    let frames = &mut pending[at].frames;
    if q.item.is_some() || frames.last().is_none_or(|(k, _, _, _)| *k != kind) {
        // A list's `[` goes in first; `match_chunk` closes it.
        let open = if q.item.is_some() {
            Vec::new()
        } else {
            vec![b'[']
        };
        // Boxed: only relational queries have any, and every frame of a chunk moves through here.
        let marks = q.is_relational().then(|| Box::new(Marks::new()));
        frames.push((kind, open, 0, marks));
    }
    let (_, buf, count, marks) = frames.last_mut().expect("pushed");
    if *count > 0 {
        buf.push(b',');
    }
    write(buf, marks.as_deref_mut());
    *count += 1;
}

/// Frames under construction for one query: kind, data, events in it, related-item placeholders.
struct Pending {
    slot: Slot,
    frames: Vec<(EventKind, Vec<u8>, usize, Option<Box<Marks>>)>,
}

/// A finished event for one query: its kind and its protocol-neutral `data` (`crate::event` in common).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub slot: Slot,
    pub query: QueryId,
    pub pos: Position,
    pub kind: EventKind,
    pub data: Vec<u8>,
    /// For a relational query: the related items `data` has placeholders for, to read and splice
    /// before the frame goes out (`None` when there are none).
    pub marks: Option<Box<Marks>>,
}

/// Match one chunk. `schema` is the PostgreSQL schema whose tables are collections; `only` restricts
/// matching to one query (a replay for a new registration).
/// Which of the index's queries a chunk is matched against.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    All,
    /// One query (a replay for one registration).
    Query(QueryId),
    /// The candidates the predicate keeps (replays for several shards and registrations at once).
    Where(&'a dyn Fn(Slot) -> bool),
}

pub fn match_chunk(
    ix: &mut Index,
    schema: &str,
    chunk: &TxChunk,
    scope: Scope<'_>,
    out: &mut Vec<Frame>,
) {
    // `$NOW` in a filter means the change's commit time: the same on every replay of it.
    common::filter::with_now(chunk.commit_time, || {
        match_chunk_at(ix, schema, chunk, scope, out)
    })
}

fn match_chunk_at(
    ix: &mut Index,
    schema: &str,
    chunk: &TxChunk,
    scope: Scope<'_>,
    out: &mut Vec<Frame>,
) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut pending_at: HashMap<Slot, usize> = HashMap::new();
    let mut cands: Vec<Slot> = Vec::new();
    let only_slot = match scope {
        Scope::Query(id) => match ix.slot_of(&id) {
            Some(s) => Some(s),
            None => return,
        },
        Scope::All | Scope::Where(_) => None,
    };
    let mut contexts: HashMap<u32, Ctx> = HashMap::new();

    for change in &chunk.changes {
        let (rel_id, old, new, is_insert) = match change {
            Change::Insert { rel, new } => (*rel, None, Some(new), true),
            Change::Update { rel, old, new } => (*rel, old.as_ref(), Some(new), false),
            Change::Delete { rel, old } => (*rel, Some(old), None, false),
            // Truncate names no rows; Directus sends nothing for it either.
            Change::Truncate { .. } => continue,
        };
        let Some(rel) = chunk.relation(rel_id) else {
            continue;
        };
        if rel.schema != schema {
            continue;
        }
        let ctx = contexts.entry(rel_id).or_insert_with(|| Ctx {
            rel,
            columns: rel
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.as_str(), i))
                .collect(),
        });
        let new_row = new.map(|cells| RowView::new(rel, cells, false));
        let old_row = old.map(|o| RowView::new(rel, &o.cells, o.key_only));

        cands.clear();
        match only_slot {
            Some(s) => {
                if ix.get(s).is_some_and(|e| e.def.collection == rel.table) {
                    cands.push(s);
                }
            }
            None => {
                ix.next_generation();
                let key_of = |row: &RowView, col: &str| -> Lookup {
                    let Some(i) = ctx.idx(col) else {
                        return Lookup::NoMatch;
                    };
                    if !row.known(i) {
                        return Lookup::Unknown;
                    }
                    match row
                        .datum(i)
                        .and_then(|d| index_key(&rel.columns[i].kind, d))
                    {
                        Some(k) => Lookup::Key(k),
                        None => Lookup::NoMatch,
                    }
                };
                if let Some(r) = &new_row {
                    ix.candidates(&rel.table, |c| key_of(r, c), &mut cands);
                }
                if let Some(r) = &old_row {
                    ix.candidates(&rel.table, |c| key_of(r, c), &mut cands);
                }
                if let Scope::Where(keep) = scope {
                    cands.retain(|s| keep(*s));
                }
            }
        }

        for &slot in &cands {
            let q = &ix.get(slot).expect("candidate is live").def;
            let was = old_row.as_ref().map(|r| ctx.eval(&q.filter, r));
            let is = new_row.as_ref().map(|r| ctx.eval(&q.filter, r));
            let mut emit = |kind: EventKind, write: &dyn Fn(&mut Vec<u8>, Option<&mut Marks>)| {
                push_event(&mut pending, &mut pending_at, slot, q, kind, write)
            };
            if is_insert {
                if is == Some(Tri::Yes) {
                    let n = new_row.as_ref().expect("insert has a new row");
                    emit(EventKind::Create, &|buf, m| ctx.write_object(buf, q, n, m));
                }
                continue;
            }
            match (&old_row, &new_row) {
                (Some(o), None) => {
                    if was != Some(Tri::No) {
                        emit(EventKind::Delete, &|buf, _| ctx.write_key(buf, q, o));
                    }
                }
                (old, Some(n)) => {
                    let key_changed = old
                        .as_ref()
                        .and_then(|o| ctx.key_text(q, o))
                        .is_some_and(|k| Some(k) != ctx.key_text(q, n));
                    if key_changed {
                        if was != Some(Tri::No) {
                            let o = old.as_ref().expect("key changed implies an old row");
                            emit(EventKind::Delete, &|buf, _| ctx.write_key(buf, q, o));
                        }
                    } else if was == Some(Tri::Yes) && is != Some(Tri::Yes) {
                        emit(EventKind::Delete, &|buf, _| ctx.write_key(buf, q, n));
                    }
                    if is == Some(Tri::Yes) {
                        emit(EventKind::Update, &|buf, m| ctx.write_object(buf, q, n, m));
                    }
                }
                (None, None) => {}
            }
        }
    }

    for p in pending {
        let entry = ix.get(p.slot).expect("live");
        let item = entry.def.item.is_some();
        for (i, (kind, data, _, marks)) in p.frames.into_iter().enumerate() {
            let mut data = data;
            if !item {
                data.push(b']');
            }
            out.push(Frame {
                slot: p.slot,
                query: entry.id,
                pos: Position {
                    lsn: chunk.lsn,
                    seq: chunk.seq,
                    idx: i.min(u16::MAX as usize) as u16,
                },
                kind,
                data,
                marks: marks.filter(|m| !m.is_empty()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::change::{OldRow, RelColumn};
    use common::filter::{Limits, VarContext};
    use common::normalize::{Access, NormalizeLimits, ReadRule, normalize};
    use common::protocol::write_subscription_suffix;
    use common::query::{QueryConfig, parse_query};
    use common::schema::{Collection, Column};
    use common::value::Kind;
    use serde_json::{Value as Json, json};
    use std::sync::Arc;

    const REL: u32 = 1;

    fn coll() -> Collection {
        let c = Column::new;
        Collection::new(
            "articles",
            "public",
            "id",
            vec![
                c("id", Kind::Int4),
                c("title", Kind::Text),
                c("status", Kind::Varchar),
                c("author", Kind::Uuid),
            ],
        )
    }

    fn relation(identity_full: bool) -> Relation {
        let c = |n: &str, k: Kind, key: bool| RelColumn {
            name: n.into(),
            kind: k,
            key,
        };
        Relation {
            id: REL,
            schema: "public".into(),
            table: "articles".into(),
            identity: if identity_full { 'f' } else { 'd' },
            columns: vec![
                c("id", Kind::Int4, true),
                c("title", Kind::Text, false),
                c("status", Kind::Varchar, false),
                c("author", Kind::Uuid, false),
            ],
        }
    }

    fn query(
        q: Json,
        event: Option<EventKind>,
        item: Option<&str>,
        access: &Access,
    ) -> Arc<NormalizedQuery> {
        let params = parse_query(q.as_object(), &QueryConfig::default()).unwrap();
        Arc::new(
            normalize(
                &coll(),
                event,
                item,
                &params,
                access,
                &VarContext::default(),
                NormalizeLimits {
                    filter: Limits::default(),
                },
            )
            .unwrap()
            .query,
        )
    }

    fn row(id: &str, title: &str, status: &str) -> Vec<Cell> {
        vec![
            Cell::Text(id.into()),
            Cell::Text(title.into()),
            Cell::Text(status.into()),
            Cell::Null,
        ]
    }

    fn chunk(changes: Vec<Change>, full: bool) -> TxChunk {
        TxChunk {
            lsn: 100,
            end_lsn: 110,
            xid: 5,
            commit_time: 0,
            seq: 0,
            last: true,
            relations: vec![relation(full)],
            changes,
        }
    }

    /// The frames each query gets, as the JSON a subscriber without uid would see.
    fn run(ix: &mut Index, c: &TxChunk) -> Vec<(QueryId, Json)> {
        let mut out = Vec::new();
        match_chunk(ix, "public", c, Scope::All, &mut out);
        out.into_iter()
            .map(|f| {
                let mut b = common::protocol::event_body(f.kind, &f.data);
                write_subscription_suffix(&mut b, None);
                (f.query, serde_json::from_slice(&b).unwrap())
            })
            .collect()
    }

    fn ins(id: &str, t: &str, s: &str) -> Change {
        Change::Insert {
            rel: REL,
            new: row(id, t, s),
        }
    }
    fn upd(old: Option<(&str, &str, &str)>, new: (&str, &str, &str)) -> Change {
        Change::Update {
            rel: REL,
            old: old.map(|(a, b, c)| OldRow {
                key_only: false,
                cells: row(a, b, c),
            }),
            new: row(new.0, new.1, new.2),
        }
    }
    fn del(id: &str, t: &str, s: &str) -> Change {
        Change::Delete {
            rel: REL,
            old: OldRow {
                key_only: false,
                cells: row(id, t, s),
            },
        }
    }

    #[test]
    fn enter_leave_and_deletes() {
        let mut ix = Index::default();
        let published = query(
            json!({"fields": "id,title", "filter": {"status": {"_eq": "published"}}}),
            None,
            None,
            &Access::Admin,
        );
        ix.register(published.id(), 0, published.clone(), "g");
        let c = chunk(
            vec![
                ins("1", "a", "draft"),
                ins("2", "b", "published"),
                upd(Some(("1", "a", "draft")), ("1", "a", "published")),
                upd(Some(("2", "b", "published")), ("2", "B", "published")),
                upd(Some(("2", "B", "published")), ("2", "B", "draft")),
                del("1", "a", "published"),
                del("3", "c", "draft"),
            ],
            true,
        );
        let frames = run(&mut ix, &c);
        let bodies: Vec<Json> = frames.into_iter().map(|(_, j)| j).collect();
        assert_eq!(
            bodies,
            vec![
                json!({"type":"subscription","event":"create","data":[{"id":2,"title":"b"}]}),
                json!({"type":"subscription","event":"update","data":[{"id":1,"title":"a"},{"id":2,"title":"B"}]}),
                json!({"type":"subscription","event":"delete","data":["2","1"]}),
            ],
            "draft insert: nothing; entering: update; leaving: delete; deleting an invisible row: nothing"
        );
    }

    #[test]
    fn positions_items_events_and_permissions() {
        let mut ix = Index::default();
        let item = query(json!({"fields": "title"}), None, Some("1"), &Access::Admin);
        let deletes = query(json!({}), Some(EventKind::Delete), None, &Access::Admin);
        let public = query(
            json!({}),
            None,
            None,
            &Access::Rules(vec![
                ReadRule {
                    filter: Some(json!({"status": {"_eq": "published"}})),
                    fields: Some(vec!["id".into(), "title".into()]),
                },
                ReadRule {
                    filter: Some(json!({"status": {"_eq": "draft"}})),
                    fields: Some(vec!["id".into(), "status".into()]),
                },
            ]),
        );
        for q in [&item, &deletes, &public] {
            ix.register(q.id(), 0, q.clone(), "g");
        }
        let c = chunk(
            vec![
                ins("1", "a", "draft"),
                upd(Some(("1", "a", "draft")), ("1", "b", "draft")),
                del("1", "b", "draft"),
            ],
            true,
        );
        let mut frames: Vec<Frame> = Vec::new();
        match_chunk(&mut ix, "public", &c, Scope::All, &mut frames);
        let of = |q: &Arc<NormalizedQuery>| -> Vec<(Position, Json)> {
            frames
                .iter()
                .filter(|f| f.query == q.id())
                .map(|f| {
                    let mut b = common::protocol::event_body(f.kind, &f.data);
                    write_subscription_suffix(&mut b, Some("u"));
                    (f.pos, serde_json::from_slice(&b).unwrap())
                })
                .collect()
        };
        let item_frames = of(&item);
        assert_eq!(
            item_frames
                .iter()
                .map(|(_, j)| j["data"].clone())
                .collect::<Vec<_>>(),
            [json!({"title":"a"}), json!({"title":"b"}), json!("1")]
        );
        assert_eq!(
            item_frames.iter().map(|(p, _)| p.idx).collect::<Vec<_>>(),
            [0, 1, 2],
            "positions grow per query"
        );
        assert_eq!(
            of(&deletes)
                .iter()
                .map(|(_, j)| j["event"].clone())
                .collect::<Vec<_>>(),
            [json!("delete")]
        );
        // The public sees drafts with id and status only; title is null where only the draft rule applies.
        assert_eq!(
            of(&public)[0].1["data"],
            json!([{"id":1,"title":null,"status":"draft"}])
        );
        assert_eq!(of(&public)[0].1["uid"], "u");
    }

    #[test]
    fn unknown_values_and_key_changes() {
        let mut ix = Index::default();
        let published = query(
            json!({"fields": "id", "filter": {"status": {"_eq": "published"}}}),
            None,
            None,
            &Access::Admin,
        );
        ix.register(published.id(), 0, published.clone(), "g");
        // Default identity: old rows are key-only; an update without the old row cannot tell if it left.
        let key_only = OldRow {
            key_only: true,
            cells: vec![Cell::Text("1".into()), Cell::Null, Cell::Null, Cell::Null],
        };
        let c = chunk(
            vec![
                Change::Update {
                    rel: REL,
                    old: None,
                    new: row("1", "a", "draft"),
                },
                Change::Update {
                    rel: REL,
                    old: None,
                    new: row("1", "a", "published"),
                },
                Change::Delete {
                    rel: REL,
                    old: key_only.clone(),
                },
                Change::Update {
                    rel: REL,
                    old: None,
                    new: vec![
                        Cell::Text("2".into()),
                        Cell::Null,
                        Cell::Unchanged,
                        Cell::Null,
                    ],
                },
            ],
            false,
        );
        let bodies: Vec<Json> = run(&mut ix, &c)
            .into_iter()
            .map(|(_, j)| j["event"].clone())
            .collect();
        assert_eq!(
            bodies,
            [json!("update"), json!("delete")],
            "no leave detection without the old row; deletes are sent; unknown new rows send nothing"
        );

        // A primary key change: the old key is deleted, the new row updated.
        let c = chunk(
            vec![upd(Some(("1", "a", "published")), ("9", "a", "published"))],
            true,
        );
        let bodies: Vec<Json> = run(&mut ix, &c).into_iter().map(|(_, j)| j).collect();
        assert_eq!(bodies[0]["data"], json!(["1"]));
        assert_eq!(bodies[1]["data"], json!([{"id":9}]));
    }

    #[test]
    fn only_one_query_for_replays_and_other_schemas_ignored() {
        let mut ix = Index::default();
        let a = query(json!({}), None, None, &Access::Admin);
        let b = query(json!({"fields": "id"}), None, None, &Access::Admin);
        ix.register(a.id(), 0, a.clone(), "g");
        ix.register(b.id(), 0, b.clone(), "g");
        let c = chunk(vec![ins("1", "a", "x")], true);
        let mut out = Vec::new();
        match_chunk(&mut ix, "public", &c, Scope::Query(b.id()), &mut out);
        assert_eq!(out.iter().map(|f| f.query).collect::<Vec<_>>(), [b.id()]);
        out.clear();
        match_chunk(&mut ix, "other", &c, Scope::All, &mut out);
        assert!(out.is_empty());
    }
}
