//! Decoder for PostgreSQL's `pgoutput` logical replication messages (protocol version 1).
//!
//! Pure and bounds-checked: malformed input is an error, never a panic (fuzzed by a property test).
//! Begin and Commit are parsed by the transport (pgwire-replication) as well; they are decoded here too so
//! the assembler can be driven from raw bytes in tests.

use common::change::Cell;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message truncated while reading {what}")]
    Truncated { what: &'static str },
    #[error("unknown pgoutput message type {:?}", char::from(*.0))]
    UnknownMessage(u8),
    #[error("unknown tuple column kind {:?}", char::from(*.0))]
    UnknownTupleKind(u8),
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("invalid pgoutput message: {0}")]
    Invalid(&'static str),
}

impl common::error::Classify for DecodeError {
    /// PostgreSQL sent a message this decoder does not read: the session restarts from the last confirmed
    /// position, which replays the same message, so retrying does not help.
    fn fault(&self) -> common::error::Fault {
        common::error::Fault::Bug
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key (flag bit 1).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: char,
    pub columns: Vec<RelationColumn>,
}

/// The old tuple of an update or delete: `K` (key columns only) or `O` (the whole old row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    pub key_only: bool,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(RelationMessage),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        rel: u32,
        new: Vec<Cell>,
    },
    Update {
        rel: u32,
        old: Option<OldTuple>,
        new: Vec<Cell>,
    },
    Delete {
        rel: u32,
        old: OldTuple,
    },
    Truncate {
        options: u8,
        rels: Vec<u32>,
    },
    /// `pg_logical_emit_message` (only with `messages 'true'`).
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated { what })?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { what })?;
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A NUL-terminated string.
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self
            .buf
            .get(self.pos..)
            .ok_or(DecodeError::Truncated { what })?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { what })?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::BadUtf8 { what })?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01; ours from 1970-01-01.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

fn tuple(r: &mut Reader) -> Result<Vec<Cell>, DecodeError> {
    let n = r.i16("tuple column count")?;
    if n < 0 {
        return Err(DecodeError::Invalid("negative column count"));
    }
    let mut cells = Vec::with_capacity(n as usize);
    for _ in 0..n {
        cells.push(match r.u8("tuple column kind")? {
            b'n' => Cell::Null,
            b'u' => Cell::Unchanged,
            b't' => {
                let len = r.i32("value length")?;
                if len < 0 {
                    return Err(DecodeError::Invalid("negative value length"));
                }
                let bytes = r.take(len as usize, "value")?;
                Cell::Text(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| DecodeError::BadUtf8 { what: "text value" })?,
                )
            }
            // Binary values only come with the `binary` option, which we never request.
            b'b' => {
                return Err(DecodeError::Invalid(
                    "binary tuple values were not requested",
                ));
            }
            other => return Err(DecodeError::UnknownTupleKind(other)),
        });
    }
    Ok(cells)
}

/// Decode one pgoutput message (the payload of an XLogData).
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let msg = match r.u8("message type")? {
        b'B' => Message::Begin {
            final_lsn: r.u64("final lsn")?,
            commit_time: r.i64("commit time")?.saturating_add(PG_EPOCH_OFFSET_MICROS),
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("end lsn")?,
            commit_time: r.i64("commit time")?.saturating_add(PG_EPOCH_OFFSET_MICROS),
        },
        b'O' => Message::Origin {
            lsn: r.u64("origin lsn")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")? as char;
            let n = r.i16("column count")?;
            if n < 0 {
                return Err(DecodeError::Invalid("negative column count"));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    key: flags & 1 != 0,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("type modifier")?,
                });
            }
            Message::Relation(RelationMessage {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32("type oid")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let rel = r.u32("relation id")?;
            if r.u8("new tuple marker")? != b'N' {
                return Err(DecodeError::Invalid("insert without N tuple"));
            }
            Message::Insert {
                rel,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let rel = r.u32("relation id")?;
            let mut old = None;
            let mut marker = r.u8("tuple marker")?;
            if marker == b'K' || marker == b'O' {
                old = Some(OldTuple {
                    key_only: marker == b'K',
                    cells: tuple(&mut r)?,
                });
                marker = r.u8("new tuple marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::Invalid("update without N tuple"));
            }
            Message::Update {
                rel,
                old,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            let rel = r.u32("relation id")?;
            let marker = r.u8("old tuple marker")?;
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError::Invalid("delete without K or O tuple"));
            }
            Message::Delete {
                rel,
                old: OldTuple {
                    key_only: marker == b'K',
                    cells: tuple(&mut r)?,
                },
            }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            if n as usize > buf.len() {
                return Err(DecodeError::Truncated {
                    what: "truncated relations",
                });
            }
            let mut rels = Vec::with_capacity(n as usize);
            for _ in 0..n {
                rels.push(r.u32("truncated relation")?);
            }
            Message::Truncate { options, rels }
        }
        b'M' => {
            let transactional = r.u8("message flags")? & 1 != 0;
            let lsn = r.u64("message lsn")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.u32("message length")?;
            let content = r.take(len as usize, "message content")?.to_vec();
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.done()?;
    Ok(msg)
}

/// Encoders for tests (of this module, the assembler and the capture pipeline).
pub mod encode {
    use common::change::Cell;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn tuple(out: &mut Vec<u8>, cells: &[Cell]) {
        out.extend_from_slice(&(cells.len() as i16).to_be_bytes());
        for c in cells {
            match c {
                Cell::Null => out.push(b'n'),
                Cell::Unchanged => out.push(b'u'),
                Cell::Text(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    pub fn begin(final_lsn: u64, commit_time_pg: i64, xid: u32) -> Vec<u8> {
        let mut o = vec![b'B'];
        o.extend_from_slice(&final_lsn.to_be_bytes());
        o.extend_from_slice(&commit_time_pg.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        o
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time_pg: i64) -> Vec<u8> {
        let mut o = vec![b'C', 0];
        o.extend_from_slice(&commit_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&commit_time_pg.to_be_bytes());
        o
    }

    /// `columns`: (key, name, type oid)
    pub fn relation(
        id: u32,
        ns: &str,
        name: &str,
        identity: u8,
        columns: &[(bool, &str, u32)],
    ) -> Vec<u8> {
        let mut o = vec![b'R'];
        o.extend_from_slice(&id.to_be_bytes());
        cstr(&mut o, ns);
        cstr(&mut o, name);
        o.push(identity);
        o.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (key, n, oid) in columns {
            o.push(u8::from(*key));
            cstr(&mut o, n);
            o.extend_from_slice(&oid.to_be_bytes());
            o.extend_from_slice(&(-1i32).to_be_bytes());
        }
        o
    }

    pub fn type_msg(oid: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut o = vec![b'Y'];
        o.extend_from_slice(&oid.to_be_bytes());
        cstr(&mut o, ns);
        cstr(&mut o, name);
        o
    }

    pub fn insert(rel: u32, new: &[Cell]) -> Vec<u8> {
        let mut o = vec![b'I'];
        o.extend_from_slice(&rel.to_be_bytes());
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    /// `old`: (key_only, cells)
    pub fn update(rel: u32, old: Option<(bool, &[Cell])>, new: &[Cell]) -> Vec<u8> {
        let mut o = vec![b'U'];
        o.extend_from_slice(&rel.to_be_bytes());
        if let Some((key_only, cells)) = old {
            o.push(if key_only { b'K' } else { b'O' });
            tuple(&mut o, cells);
        }
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    pub fn delete(rel: u32, key_only: bool, old: &[Cell]) -> Vec<u8> {
        let mut o = vec![b'D'];
        o.extend_from_slice(&rel.to_be_bytes());
        o.push(if key_only { b'K' } else { b'O' });
        tuple(&mut o, old);
        o
    }

    pub fn truncate(rels: &[u32]) -> Vec<u8> {
        let mut o = vec![b'T'];
        o.extend_from_slice(&(rels.len() as u32).to_be_bytes());
        o.push(0);
        for r in rels {
            o.extend_from_slice(&r.to_be_bytes());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::encode as enc;
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn decodes_every_message_type() {
        assert_eq!(
            decode(&enc::begin(10, 0, 7)).unwrap(),
            Message::Begin {
                final_lsn: 10,
                commit_time: PG_EPOCH_OFFSET_MICROS,
                xid: 7
            }
        );
        assert_eq!(
            decode(&enc::commit(10, 20, 5)).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 20,
                commit_time: PG_EPOCH_OFFSET_MICROS + 5
            }
        );
        let Message::Relation(r) = decode(&enc::relation(
            5,
            "public",
            "a",
            b'f',
            &[(true, "id", 23), (false, "t", 25)],
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                r.id,
                r.namespace.as_str(),
                r.name.as_str(),
                r.replica_identity
            ),
            (5, "public", "a", 'f')
        );
        assert_eq!(
            r.columns[0],
            RelationColumn {
                key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1
            }
        );
        assert_eq!(
            decode(&enc::type_msg(9, "public", "mood")).unwrap(),
            Message::Type {
                oid: 9,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
        assert_eq!(
            decode(&enc::insert(5, &[t("1"), Cell::Null])).unwrap(),
            Message::Insert {
                rel: 5,
                new: vec![t("1"), Cell::Null]
            }
        );
        assert_eq!(
            decode(&enc::update(
                5,
                Some((false, &[t("1"), t("a")])),
                &[t("1"), Cell::Unchanged]
            ))
            .unwrap(),
            Message::Update {
                rel: 5,
                old: Some(OldTuple {
                    key_only: false,
                    cells: vec![t("1"), t("a")]
                }),
                new: vec![t("1"), Cell::Unchanged]
            }
        );
        assert_eq!(
            decode(&enc::update(5, None, &[t("2")])).unwrap(),
            Message::Update {
                rel: 5,
                old: None,
                new: vec![t("2")]
            }
        );
        assert_eq!(
            decode(&enc::delete(5, true, &[t("1"), Cell::Null])).unwrap(),
            Message::Delete {
                rel: 5,
                old: OldTuple {
                    key_only: true,
                    cells: vec![t("1"), Cell::Null]
                }
            }
        );
        assert_eq!(
            decode(&enc::truncate(&[5, 6])).unwrap(),
            Message::Truncate {
                options: 0,
                rels: vec![5, 6]
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(
            decode(&[]).unwrap_err(),
            DecodeError::Truncated {
                what: "message type"
            }
        );
        assert_eq!(decode(b"Z").unwrap_err(), DecodeError::UnknownMessage(b'Z'));
        let mut ins = enc::insert(5, &[t("hello")]);
        ins.truncate(ins.len() - 2);
        assert!(matches!(decode(&ins), Err(DecodeError::Truncated { .. })));
        let mut ins = enc::insert(5, &[t("x")]);
        ins.push(0);
        assert_eq!(
            decode(&ins).unwrap_err(),
            DecodeError::Invalid("trailing bytes")
        );
        let mut bad_kind = enc::insert(5, &[t("x")]);
        bad_kind[8] = b'q';
        assert_eq!(
            decode(&bad_kind).unwrap_err(),
            DecodeError::UnknownTupleKind(b'q')
        );
        let mut bad_utf8 = enc::insert(5, &[t("ab")]);
        let n = bad_utf8.len();
        bad_utf8[n - 1] = 0xff;
        assert_eq!(
            decode(&bad_utf8).unwrap_err(),
            DecodeError::BadUtf8 { what: "text value" }
        );
        // A huge declared length must not allocate or panic.
        let mut huge = vec![b'I', 0, 0, 0, 5, b'N', 0, 1, b't'];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(decode(&huge), Err(DecodeError::Truncated { .. })));
        let mut trunc = vec![b'T'];
        trunc.extend_from_slice(&u32::MAX.to_be_bytes());
        trunc.push(0);
        assert!(decode(&trunc).is_err());
        assert!(decode(&[b'D', 0, 0, 0, 1, b'N', 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_messages(idx in 0usize..40, byte in any::<u8>(), cut in 0usize..40) {
            for mut m in [enc::relation(1, "s", "t", b'f', &[(true, "a", 23)]), enc::update(1, Some((false, &[t("x")])), &[t("y")]), enc::truncate(&[1])] {
                if idx < m.len() { m[idx] = byte; }
                let cut = cut.min(m.len());
                let _ = decode(&m[..cut]);
                let _ = decode(&m);
            }
        }
    }
}
