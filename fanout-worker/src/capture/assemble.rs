//! Turns the pgoutput message sequence into [`TxChunk`]s: whole transactions, or chunks of large ones.
//!
//! Pure: messages in, chunks out. It keeps the relation cache (a `Relation` message may arrive in the
//! middle of the stream after an `ALTER TABLE`; changes before it keep the old description), fills
//! unchanged TOASTed values of an update from its old row, drops excluded tables, masks secret columns,
//! and bounds memory by emitting a chunk whenever the open one reaches the row or byte limit. PostgreSQL
//! sends a transaction only after it committed (protocol 1, no streaming), so a chunk can be published
//! before the commit message arrives.

use crate::capture::pgoutput::{DecodeError, Message, RelationMessage};
use common::change::{Cell, Change, OldRow, RelColumn, Relation, Row, TxChunk};
use common::value::Kind;
use std::collections::{HashMap, HashSet};

/// Text that replaces a masked column's value.
pub use common::change::MASK;

#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Emit a chunk when the open one holds this many changes...
    pub chunk_rows: usize,
    /// ...or this many bytes of values.
    pub chunk_bytes: usize,
    /// Tables whose changes are dropped (e.g. `directus_migrations`).
    pub exclude: HashSet<String>,
    /// Tables of which only deletes pass, cut down to the named columns: `directus_sessions` → its
    /// `user`, so a logout reaches the gateways (`common::rights`) while refresh tokens never leave
    /// PostgreSQL. A table both here and in `exclude` is excluded.
    pub ends_only: HashMap<String, Vec<String>>,
    /// (table, column) pairs whose non-null values are replaced by [`MASK`].
    pub mask: HashSet<(String, String)>,
}

impl Default for AssemblerConfig {
    fn default() -> AssemblerConfig {
        AssemblerConfig {
            chunk_rows: 1000,
            chunk_bytes: 1 << 20,
            exclude: ["directus_migrations"]
                .into_iter()
                .map(String::from)
                .collect(),
            ends_only: [("directus_sessions".to_owned(), vec!["user".to_owned()])]
                .into_iter()
                .collect(),
            mask: [
                ("directus_users", "password"),
                ("directus_users", "token"),
                ("directus_users", "tfa_secret"),
            ]
            .into_iter()
            .map(|(t, c)| (t.to_owned(), c.to_owned()))
            .collect(),
        }
    }
}

impl common::error::Classify for AssembleError {
    /// The message sequence broke pgoutput's rules (or our reading of them).
    fn fault(&self) -> common::error::Fault {
        common::error::Fault::Bug
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("Begin while a transaction is open")]
    NestedBegin,
    #[error("row has {got} columns, relation {rel} has {expected}")]
    ColumnCount {
        rel: u32,
        expected: usize,
        got: usize,
    },
}

/// What one message produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A chunk to append (the last one of a transaction has `last` and `end_lsn` set).
    Chunk(TxChunk),
    /// A transaction ended with nothing to publish (only excluded tables): confirm `end_lsn` as usual.
    Empty { end_lsn: u64 },
}

struct Cached {
    rel: Relation,
    excluded: bool,
    masked: Vec<usize>,
    /// For an [`AssemblerConfig::ends_only`] table: the columns kept (`rel` lists only those).
    kept: Option<Vec<usize>>,
}

struct OpenTx {
    lsn: u64,
    xid: u32,
    commit_time: i64,
    seq: u32,
    changes: Vec<Change>,
    bytes: usize,
    /// Relations referenced by `changes`, as they were described when referenced.
    relations: Vec<Relation>,
}

pub struct Assembler {
    cfg: AssemblerConfig,
    relations: HashMap<u32, Cached>,
    /// Kinds of non-built-in types, resolved from the catalog by the caller.
    type_kinds: HashMap<u32, Kind>,
    tx: Option<OpenTx>,
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig) -> Assembler {
        Assembler {
            cfg,
            relations: HashMap::new(),
            type_kinds: HashMap::new(),
            tx: None,
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Type OIDs of this relation that are neither built in nor resolved yet.
    pub fn unresolved_types(&self, rel: &RelationMessage) -> Vec<u32> {
        let mut out: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| Kind::from_oid(*oid).is_none() && !self.type_kinds.contains_key(oid))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn set_type_kind(&mut self, oid: u32, kind: Kind) {
        self.type_kinds.insert(oid, kind);
    }

    fn kind_of(&self, oid: u32) -> Kind {
        Kind::from_oid(oid)
            .or_else(|| self.type_kinds.get(&oid).cloned())
            .unwrap_or(Kind::Other)
    }

    /// Feed one decoded message.
    pub fn push(&mut self, msg: Message) -> Result<Option<Output>, AssembleError> {
        match msg {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                if self.tx.is_some() {
                    return Err(AssembleError::NestedBegin);
                }
                self.tx = Some(OpenTx {
                    lsn: final_lsn,
                    xid,
                    commit_time,
                    seq: 0,
                    changes: Vec::new(),
                    bytes: 0,
                    relations: Vec::new(),
                });
                Ok(None)
            }
            Message::Commit { end_lsn, .. } => {
                let tx = self
                    .tx
                    .take()
                    .ok_or(AssembleError::OutsideTransaction("Commit"))?;
                if tx.seq == 0 && tx.changes.is_empty() {
                    return Ok(Some(Output::Empty { end_lsn }));
                }
                Ok(Some(Output::Chunk(TxChunk {
                    lsn: tx.lsn,
                    end_lsn,
                    xid: tx.xid,
                    commit_time: tx.commit_time,
                    seq: tx.seq,
                    last: true,
                    relations: tx.relations,
                    changes: tx.changes,
                })))
            }
            Message::Relation(r) => {
                let rel = Relation {
                    id: r.id,
                    schema: r.namespace.clone(),
                    table: r.name.clone(),
                    identity: r.replica_identity,
                    columns: r
                        .columns
                        .iter()
                        .map(|c| RelColumn {
                            name: c.name.clone(),
                            kind: self.kind_of(c.type_oid),
                            key: c.key,
                        })
                        .collect(),
                };
                // Changes already in the open chunk used the previous description: close that chunk first.
                let flushed = match &self.tx {
                    Some(tx) if tx.relations.iter().any(|x| x.id == rel.id && *x != rel) => {
                        self.cut_chunk()
                    }
                    _ => None,
                };
                let masked = rel
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| self.cfg.mask.contains(&(rel.table.clone(), c.name.clone())))
                    .map(|(i, _)| i)
                    .collect();
                let excluded = self.cfg.exclude.contains(&rel.table);
                let mut rel = rel;
                let kept = self.cfg.ends_only.get(&rel.table).map(|names| {
                    let kept: Vec<usize> = (0..rel.columns.len())
                        .filter(|&i| names.contains(&rel.columns[i].name))
                        .collect();
                    // Without its key the cut-down row is not a key row: a key-only old row then
                    // carries nothing of it, which readers treat as unknown.
                    rel.columns = kept
                        .iter()
                        .map(|&i| RelColumn {
                            key: false,
                            ..rel.columns[i].clone()
                        })
                        .collect();
                    kept
                });
                self.relations.insert(
                    rel.id,
                    Cached {
                        rel,
                        excluded,
                        masked,
                        kept,
                    },
                );
                Ok(flushed.map(Output::Chunk))
            }
            Message::Type { .. } | Message::Origin { .. } | Message::LogicalMessage { .. } => {
                Ok(None)
            }
            Message::Insert { rel, new } => {
                if self.ends_only(rel)? {
                    return Ok(None);
                }
                let Some(new) = self.row(rel, new)? else {
                    return Ok(None);
                };
                self.add(rel, Change::Insert { rel, new })
            }
            Message::Update { rel, old, new } => {
                if self.ends_only(rel)? {
                    return Ok(None);
                }
                let Some(mut new) = self.row(rel, new)? else {
                    return Ok(None);
                };
                let old = match old {
                    Some(o) => {
                        let cells = self.row(rel, o.cells)?.expect("relation is not excluded");
                        Some(OldRow {
                            key_only: o.key_only,
                            cells,
                        })
                    }
                    None => None,
                };
                if let Some(old) = old.as_ref().filter(|o| !o.key_only) {
                    for (cell, prev) in new.iter_mut().zip(&old.cells) {
                        if *cell == Cell::Unchanged {
                            *cell = prev.clone();
                        }
                    }
                }
                self.add(rel, Change::Update { rel, old, new })
            }
            Message::Delete { rel, old } => {
                let Some(cells) = self.row(rel, old.cells)? else {
                    return Ok(None);
                };
                self.add(
                    rel,
                    Change::Delete {
                        rel,
                        old: OldRow {
                            key_only: old.key_only,
                            cells,
                        },
                    },
                )
            }
            Message::Truncate { rels, .. } => {
                let mut kept = Vec::new();
                for r in rels {
                    let c = self
                        .relations
                        .get(&r)
                        .ok_or(AssembleError::UnknownRelation(r))?;
                    if !c.excluded && c.kept.is_none() {
                        kept.push(r);
                    }
                }
                if kept.is_empty() {
                    return Ok(None);
                }
                let first = kept[0];
                for r in &kept[1..] {
                    self.reference(*r)?;
                }
                self.add(first, Change::Truncate { rels: kept })
            }
        }
    }

    /// Whether `rel` is an [`AssemblerConfig::ends_only`] table (its inserts and updates are dropped).
    fn ends_only(&self, rel: u32) -> Result<bool, AssembleError> {
        let c = self
            .relations
            .get(&rel)
            .ok_or(AssembleError::UnknownRelation(rel))?;
        Ok(c.kept.is_some())
    }

    /// Check the row against its relation, mask secrets and cut an ends-only row down to its kept
    /// columns; `None` if the relation is excluded.
    fn row(&self, rel: u32, mut cells: Row) -> Result<Option<Row>, AssembleError> {
        let c = self
            .relations
            .get(&rel)
            .ok_or(AssembleError::UnknownRelation(rel))?;
        if c.excluded {
            return Ok(None);
        }
        if let Some(kept) = &c.kept {
            if kept.last().is_some_and(|&i| i >= cells.len()) {
                return Err(AssembleError::ColumnCount {
                    rel,
                    expected: kept.last().map_or(0, |i| i + 1),
                    got: cells.len(),
                });
            }
            return Ok(Some(
                kept.iter()
                    .map(|&i| std::mem::replace(&mut cells[i], Cell::Null))
                    .collect(),
            ));
        }
        if cells.len() != c.rel.columns.len() {
            return Err(AssembleError::ColumnCount {
                rel,
                expected: c.rel.columns.len(),
                got: cells.len(),
            });
        }
        for &i in &c.masked {
            if let Cell::Text(t) = &mut cells[i] {
                *t = MASK.to_owned();
            }
        }
        Ok(Some(cells))
    }

    /// Make sure the open chunk lists relation `rel`.
    fn reference(&mut self, rel: u32) -> Result<(), AssembleError> {
        let desc = &self
            .relations
            .get(&rel)
            .ok_or(AssembleError::UnknownRelation(rel))?
            .rel;
        let tx = self
            .tx
            .as_mut()
            .ok_or(AssembleError::OutsideTransaction("a change"))?;
        if !tx.relations.iter().any(|r| r.id == rel) {
            tx.relations.push(desc.clone());
        }
        Ok(())
    }

    fn add(&mut self, rel: u32, change: Change) -> Result<Option<Output>, AssembleError> {
        self.reference(rel)?;
        let tx = self.tx.as_mut().expect("reference checked the transaction");
        tx.bytes += change.weight();
        tx.changes.push(change);
        if tx.changes.len() >= self.cfg.chunk_rows || tx.bytes >= self.cfg.chunk_bytes {
            return Ok(self.cut_chunk().map(Output::Chunk));
        }
        Ok(None)
    }

    /// Emit the open transaction's changes so far as a non-final chunk.
    fn cut_chunk(&mut self) -> Option<TxChunk> {
        let tx = self.tx.as_mut()?;
        if tx.changes.is_empty() {
            return None;
        }
        let chunk = TxChunk {
            lsn: tx.lsn,
            end_lsn: 0,
            xid: tx.xid,
            commit_time: tx.commit_time,
            seq: tx.seq,
            last: false,
            relations: std::mem::take(&mut tx.relations),
            changes: std::mem::take(&mut tx.changes),
        };
        tx.seq += 1;
        tx.bytes = 0;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::pgoutput::{decode, encode as enc};

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn feed(a: &mut Assembler, msgs: &[Vec<u8>]) -> Vec<Output> {
        msgs.iter()
            .filter_map(|m| a.push(decode(m).unwrap()).unwrap())
            .collect()
    }

    fn rel(id: u32, table: &str) -> Vec<u8> {
        enc::relation(
            id,
            "public",
            table,
            b'f',
            &[(true, "id", 23), (false, "body", 25)],
        )
    }

    #[test]
    fn whole_transactions_in_order() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let out = feed(
            &mut a,
            &[
                enc::begin(100, 0, 1),
                rel(1, "a"),
                enc::insert(1, &[t("1"), t("x")]),
                enc::update(1, Some((false, &[t("1"), t("x")])), &[t("1"), t("y")]),
                enc::delete(1, false, &[t("1"), t("y")]),
                enc::commit(100, 120, 0),
            ],
        );
        let [Output::Chunk(c)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.lsn, c.end_lsn, c.seq, c.last, c.xid),
            (100, 120, 0, true, 1)
        );
        assert_eq!(c.changes.len(), 3);
        assert_eq!(
            c.relations[0].columns[0],
            RelColumn {
                name: "id".into(),
                kind: Kind::Int4,
                key: true
            }
        );
        assert!(!a.in_transaction());
    }

    #[test]
    fn unchanged_toast_is_filled_from_the_old_row() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let out = feed(
            &mut a,
            &[
                enc::begin(1, 0, 1),
                rel(1, "a"),
                enc::update(
                    1,
                    Some((false, &[t("1"), t("big")])),
                    &[t("1"), Cell::Unchanged],
                ),
                enc::update(
                    1,
                    Some((true, &[t("1"), Cell::Null])),
                    &[t("1"), Cell::Unchanged],
                ),
                enc::update(1, None, &[t("2"), Cell::Unchanged]),
                enc::commit(1, 2, 0),
            ],
        );
        let Output::Chunk(c) = &out[0] else { panic!() };
        let news: Vec<&Row> = c
            .changes
            .iter()
            .map(|ch| match ch {
                Change::Update { new, .. } => new,
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            news[0],
            &vec![t("1"), t("big")],
            "filled from the full old row"
        );
        assert_eq!(
            news[1][1],
            Cell::Unchanged,
            "a key-only old row cannot fill it"
        );
        assert_eq!(news[2][1], Cell::Unchanged);
    }

    #[test]
    fn large_transactions_are_chunked() {
        let mut a = Assembler::new(AssemblerConfig {
            chunk_rows: 2,
            ..Default::default()
        });
        let mut msgs = vec![enc::begin(50, 0, 9), rel(1, "a")];
        for i in 0..5 {
            msgs.push(enc::insert(1, &[t(&i.to_string()), Cell::Null]));
        }
        msgs.push(enc::commit(50, 60, 0));
        let out = feed(&mut a, &msgs);
        let chunks: Vec<&TxChunk> = out
            .iter()
            .map(|o| match o {
                Output::Chunk(c) => c,
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.seq, c.changes.len(), c.last))
                .collect::<Vec<_>>(),
            [(0, 2, false), (1, 2, false), (2, 1, true)]
        );
        assert!(chunks.iter().all(|c| c.lsn == 50 && c.relations.len() == 1));
        assert_eq!(chunks[2].end_lsn, 60);
        assert_eq!(
            chunks
                .iter()
                .map(|c| c.stream_id().to_string())
                .collect::<Vec<_>>(),
            ["50-0", "50-1", "50-2"]
        );
        // A chunk boundary exactly at the end: the final chunk is empty but still marks the end.
        let mut a = Assembler::new(AssemblerConfig {
            chunk_rows: 1,
            ..Default::default()
        });
        let out = feed(
            &mut a,
            &[
                enc::begin(7, 0, 1),
                rel(1, "a"),
                enc::insert(1, &[t("1"), Cell::Null]),
                enc::commit(7, 8, 0),
            ],
        );
        let last = match out.last().unwrap() {
            Output::Chunk(c) => c,
            _ => panic!(),
        };
        assert!(last.last && last.changes.is_empty() && last.seq == 1 && last.end_lsn == 8);
    }

    #[test]
    fn relation_changes_mid_transaction_split_the_chunk() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let altered = enc::relation(
            1,
            "public",
            "a",
            b'f',
            &[(true, "id", 23), (false, "body", 25), (false, "extra", 20)],
        );
        let out = feed(
            &mut a,
            &[
                enc::begin(1, 0, 1),
                rel(1, "a"),
                enc::insert(1, &[t("1"), t("x")]),
                altered,
                enc::insert(1, &[t("2"), t("y"), t("7")]),
                enc::commit(1, 2, 0),
            ],
        );
        let chunks: Vec<&TxChunk> = out
            .iter()
            .map(|o| match o {
                Output::Chunk(c) => c,
                _ => panic!(),
            })
            .collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].relations[0].columns.len(), 2);
        assert_eq!(chunks[1].relations[0].columns.len(), 3);
        assert_eq!(chunks[1].relations[0].columns[2].kind, Kind::Int8);
    }

    #[test]
    fn exclusions_masks_and_types() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let users = enc::relation(
            2,
            "public",
            "directus_users",
            b'f',
            &[
                (true, "id", 2950),
                (false, "password", 1043),
                (false, "mood", 90000),
            ],
        );
        let r = match decode(&users).unwrap() {
            Message::Relation(r) => r,
            _ => panic!(),
        };
        assert_eq!(a.unresolved_types(&r), vec![90000]);
        a.set_type_kind(90000, Kind::Other);
        let out = feed(
            &mut a,
            &[
                enc::begin(1, 0, 1),
                enc::relation(
                    3,
                    "public",
                    "directus_sessions",
                    b'f',
                    &[
                        (true, "token", 1043),
                        (false, "user", 2950),
                        (false, "ip", 1043),
                    ],
                ),
                enc::insert(3, &[t("secret-refresh-token"), t("u"), t("1.2.3.4")]),
                users,
                enc::insert(2, &[t("u"), t("$argon2id$..."), t("happy")]),
                enc::commit(1, 2, 0),
                enc::begin(3, 0, 2),
                enc::update(
                    3,
                    Some((false, &[t("secret-refresh-token"), t("u"), Cell::Null])),
                    &[t("rotated"), t("u"), Cell::Null],
                ),
                enc::insert(3, &[t("another"), t("u"), Cell::Null]),
                enc::commit(3, 4, 0),
                enc::begin(5, 0, 3),
                enc::delete(3, false, &[t("rotated"), t("u"), t("1.2.3.4")]),
                enc::delete(3, true, &[t("another"), Cell::Null, Cell::Null]),
                enc::commit(5, 6, 0),
            ],
        );
        let Output::Chunk(c) = &out[0] else { panic!() };
        assert_eq!(c.changes.len(), 1, "a session's start is never captured");
        assert!(c.relations.iter().all(|r| r.table != "directus_sessions"));
        assert_eq!(
            c.changes[0],
            Change::Insert {
                rel: 2,
                new: vec![t("u"), t(MASK), t("happy")]
            }
        );
        assert_eq!(out[1], Output::Empty { end_lsn: 4 }, "nor its refresh");
        // Its end is, as the user alone: the token never leaves PostgreSQL.
        let Output::Chunk(c) = &out[2] else { panic!() };
        let sessions = &c.relations[0];
        assert_eq!(sessions.table, "directus_sessions");
        assert_eq!(sessions.columns.len(), 1);
        assert_eq!(
            (sessions.columns[0].name.as_str(), sessions.columns[0].key),
            ("user", false)
        );
        assert_eq!(
            c.changes,
            vec![
                Change::Delete {
                    rel: 3,
                    old: OldRow {
                        key_only: false,
                        cells: vec![t("u")]
                    }
                },
                Change::Delete {
                    rel: 3,
                    old: OldRow {
                        key_only: true,
                        cells: vec![Cell::Null]
                    }
                },
            ]
        );
        let text = format!("{out:?}");
        assert!(
            !text.contains("secret-refresh-token")
                && !text.contains("rotated")
                && !text.contains("another")
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut a = Assembler::new(AssemblerConfig::default());
        assert_eq!(
            a.push(decode(&enc::commit(1, 2, 0)).unwrap()).unwrap_err(),
            AssembleError::OutsideTransaction("Commit")
        );
        a.push(decode(&enc::begin(1, 0, 1)).unwrap()).unwrap();
        assert_eq!(
            a.push(decode(&enc::begin(1, 0, 1)).unwrap()).unwrap_err(),
            AssembleError::NestedBegin
        );
        assert_eq!(
            a.push(decode(&enc::insert(9, &[t("1")])).unwrap())
                .unwrap_err(),
            AssembleError::UnknownRelation(9)
        );
        a.push(decode(&rel(1, "a")).unwrap()).unwrap();
        assert!(matches!(
            a.push(decode(&enc::insert(1, &[t("1")])).unwrap()),
            Err(AssembleError::ColumnCount { .. })
        ));
        assert_eq!(
            a.push(decode(&enc::truncate(&[42])).unwrap()).unwrap_err(),
            AssembleError::UnknownRelation(42)
        );
    }
}
