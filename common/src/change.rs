//! Committed changes as they travel from capture to the matchers: the Redis stream entry format.
//!
//! One entry per transaction, or per chunk of a large transaction: the entry id is
//! `<commit LSN>-<chunk number>`, so ids increase in commit order and re-appending after a crash is
//! idempotent (Redis refuses an id at or below the last). Values are PostgreSQL's text output, with the
//! column kinds alongside, so each consumer parses and encodes them with [`crate::value`] exactly like the
//! gateway's snapshots.

use crate::value::Kind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What capture writes in place of a secret column's value (passwords, static tokens, TFA secrets):
/// what Directus shows for them. Two equal masks may hide two different values.
pub const MASK: &str = "**********";

/// One column value as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// PostgreSQL's text output.
    Text(String),
    /// A TOASTed value that did not change in an update and could not be filled from the old row (the
    /// table is not `REPLICA IDENTITY FULL`). Its value is unknown here.
    Unchanged,
}

impl Cell {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(t) => Some(t),
            _ => None,
        }
    }
}

// Compact JSON: null, "text", or {"u":1}.
impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Null => s.serialize_none(),
            Cell::Text(t) => s.serialize_str(t),
            Cell::Unchanged => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("u", &1)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(Cell::Null),
            serde_json::Value::String(s) => Ok(Cell::Text(s)),
            serde_json::Value::Object(o) if o.contains_key("u") => Ok(Cell::Unchanged),
            other => Err(serde::de::Error::custom(format!("invalid cell {other}"))),
        }
    }
}

/// A captured row: one cell per column of the relation.
pub type Row = Vec<Cell>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelColumn {
    pub name: String,
    pub kind: Kind,
    /// Part of the replica identity key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key: bool,
}

/// A table as the WAL describes it at the time of the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// PostgreSQL's relation OID.
    pub id: u32,
    pub schema: String,
    pub table: String,
    /// `f` (full), `d` (default: primary key), `i` (index), `n` (nothing).
    pub identity: char,
    pub columns: Vec<RelColumn>,
}

impl Relation {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// The old row of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldRow {
    /// Only the replica identity key columns are known (the table is not `REPLICA IDENTITY FULL`);
    /// the other cells are `Null` placeholders, not values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_only: bool,
    pub cells: Row,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Change {
    #[serde(rename = "i")]
    Insert { rel: u32, new: Row },
    /// `old` is `None` when PostgreSQL sent no old row (identity default and the key did not change).
    #[serde(rename = "u")]
    Update {
        rel: u32,
        old: Option<OldRow>,
        new: Row,
    },
    #[serde(rename = "d")]
    Delete { rel: u32, old: OldRow },
    #[serde(rename = "t")]
    Truncate { rels: Vec<u32> },
}

impl Change {
    /// Text bytes carried (for chunk sizing).
    pub fn weight(&self) -> usize {
        let row = |r: &Row| {
            r.iter()
                .map(|c| c.as_text().map_or(1, str::len) + 4)
                .sum::<usize>()
        };
        match self {
            Change::Insert { new, .. } => row(new),
            Change::Update { old, new, .. } => row(new) + old.as_ref().map_or(0, |o| row(&o.cells)),
            Change::Delete { old, .. } => row(&old.cells),
            Change::Truncate { rels } => rels.len() * 4,
        }
    }
}

/// One stream entry: a whole transaction, or one chunk of a large one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxChunk {
    /// LSN of the transaction's commit record (PostgreSQL's `final_lsn`): orders transactions.
    pub lsn: u64,
    /// End of the commit record, set on the last chunk: the position to confirm once it is safe.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end_lsn: u64,
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time: i64,
    /// Chunk number within the transaction, from 0.
    pub seq: u32,
    /// This chunk ends the transaction.
    pub last: bool,
    /// Every relation a change of this chunk refers to.
    pub relations: Vec<Relation>,
    pub changes: Vec<Change>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl TxChunk {
    /// The Redis stream id: `<lsn>-<seq>`.
    pub fn stream_id(&self) -> StreamId {
        StreamId {
            lsn: self.lsn,
            seq: self.seq as u64,
        }
    }

    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.iter().find(|r| r.id == id)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a chunk always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<TxChunk, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A Redis stream id, `<ms>-<seq>`, here `<commit LSN>-<chunk>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub lsn: u64,
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.lsn, self.seq)
    }
}

impl std::str::FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<StreamId, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            lsn: a.parse().map_err(|_| format!("bad stream id {s:?}"))?,
            seq: b.parse().map_err(|_| format!("bad stream id {s:?}"))?,
        })
    }
}

/// `0/16B3748` ↔ u64, PostgreSQL's LSN notation.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip_is_compact() {
        let chunk = TxChunk {
            lsn: 0x1_0000_0042,
            end_lsn: 0x1_0000_0050,
            xid: 7,
            commit_time: 1_700_000_000_000_000,
            seq: 0,
            last: true,
            relations: vec![Relation {
                id: 16384,
                schema: "public".into(),
                table: "articles".into(),
                identity: 'f',
                columns: vec![
                    RelColumn {
                        name: "id".into(),
                        kind: Kind::Int4,
                        key: true,
                    },
                    RelColumn {
                        name: "title".into(),
                        kind: Kind::Varchar,
                        key: false,
                    },
                ],
            }],
            changes: vec![
                Change::Insert {
                    rel: 16384,
                    new: vec![Cell::Text("1".into()), Cell::Null],
                },
                Change::Update {
                    rel: 16384,
                    old: Some(OldRow {
                        key_only: false,
                        cells: vec![Cell::Text("1".into()), Cell::Null],
                    }),
                    new: vec![Cell::Text("1".into()), Cell::Unchanged],
                },
                Change::Delete {
                    rel: 16384,
                    old: OldRow {
                        key_only: true,
                        cells: vec![Cell::Text("1".into()), Cell::Null],
                    },
                },
                Change::Truncate { rels: vec![16384] },
            ],
        };
        let bytes = chunk.encode();
        assert_eq!(TxChunk::decode(&bytes).unwrap(), chunk);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""new":["1",null]"#), "{text}");
        assert!(text.contains(r#"{"u":1}"#));
        assert_eq!(chunk.stream_id().to_string(), "4294967362-0");
        assert!(TxChunk::decode(b"{\"lsn\":1}").is_err());
        assert!(TxChunk::decode(b"garbage").is_err());
    }

    #[test]
    fn ids_and_lsns() {
        let a: StreamId = "10-2".parse().unwrap();
        let b: StreamId = "9-5".parse().unwrap();
        assert!(b < a);
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(format_lsn(0x1_0000_0001), "1/1");
        assert_eq!(parse_lsn(&format_lsn(u64::MAX)), Some(u64::MAX));
        assert!("x-1".parse::<StreamId>().is_err());
    }
}
