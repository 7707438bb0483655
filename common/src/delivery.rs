//! What travels from workers to gateways, and what a gateway needs to deliver it exactly once.
//!
//! - [`Position`]: where an event sits in the change stream: commit LSN, chunk, frame. Per query,
//!   positions only grow; a gateway drops anything at or below the last it delivered (workers are
//!   at-least-once: failover and replays re-send).
//! - Batches ([`encode_batch`], [`decode_batch`]): the binary message a worker publishes on a gateway's
//!   channel: entries of (event kind, query, position, xid, the event's `data`). The data is
//!   protocol-neutral (`crate::event`), encoded once per query and shared by every subscriber; the
//!   gateway's protocol only adds its envelope and each subscriber's part around it.
//!   A [`EntryKind::ReplayDone`] entry closes a replay the gateway asked for (see `gateway::hub`).
//! - [`PgSnapshot`]: PostgreSQL's `pg_current_snapshot()`, to drop events already contained in an `init`
//!   snapshot (gap-free init).

use crate::event::EventKind;
use crate::normalize::QueryId;

/// Position of an event: the transaction's commit LSN, the chunk within it, the frame within the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub lsn: u64,
    pub seq: u32,
    pub idx: u16,
}

impl Position {
    pub const ZERO: Position = Position {
        lsn: 0,
        seq: 0,
        idx: 0,
    };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}.{}", self.lsn, self.seq, self.idx)
    }
}

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An event for the query's subscribers; the body is its `data`.
    Event(EventKind),
    /// The end of a replay this gateway asked for: every event of the query up to `pos` has been
    /// published before this entry. The body is the registration token the replay answered.
    ReplayDone,
    /// The transaction at `pos` changed the tables rights are computed from (`crate::rights`): every
    /// event this worker sends after it was matched after that commit. Query id zero; the body lists
    /// the deps it touched ([`crate::rights::encode_deps`]).
    Rights,
}

/// One entry for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<B> {
    pub kind: EntryKind,
    pub query: QueryId,
    pub pos: Position,
    /// Top-level transaction id (for the init-snapshot visibility check).
    pub xid: u32,
    /// Commit time, µs since the Unix epoch (for latency metrics).
    pub commit_time: i64,
    /// Events: the event's `data` JSON. Replay ends: the registration token.
    pub body: B,
}

/// Version 3: neutral event data, the kind in the entry's kind byte. Version 2 (whole Directus bodies,
/// one event kind byte) is still read, so gateways can be upgraded before the workers.
const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const HEADER: usize = 1 + 16 + 8 + 4 + 2 + 4 + 8 + 4;

/// Encode entries into one message.
pub fn encode_batch<B: AsRef<[u8]>>(entries: &[Entry<B>]) -> Vec<u8> {
    let size: usize = 1 + entries
        .iter()
        .map(|e| HEADER + e.body.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    for e in entries {
        append(
            &mut out,
            e.kind,
            e.query,
            e.pos,
            e.xid,
            e.commit_time,
            e.body.as_ref(),
        );
    }
    out
}

/// Append one event (its `data`) to a message started with [`start_batch`].
pub fn append_entry(
    out: &mut Vec<u8>,
    event: EventKind,
    query: QueryId,
    pos: Position,
    xid: u32,
    commit_time: i64,
    data: &[u8],
) {
    append(
        out,
        EntryKind::Event(event),
        query,
        pos,
        xid,
        commit_time,
        data,
    );
}

/// Append a rights change at `pos` (a transaction of commit time `commit_time`) touching `deps`.
pub fn append_rights(out: &mut Vec<u8>, pos: Position, xid: u32, commit_time: i64, deps: &[u8]) {
    append(
        out,
        EntryKind::Rights,
        QueryId(0),
        pos,
        xid,
        commit_time,
        deps,
    );
}

/// Append the end of a replay of `query` up to `pos`, answering registration `token`.
pub fn append_replay_done(out: &mut Vec<u8>, query: QueryId, pos: Position, token: &[u8]) {
    append(out, EntryKind::ReplayDone, query, pos, 0, 0, token);
}

fn append(
    out: &mut Vec<u8>,
    kind: EntryKind,
    query: QueryId,
    pos: Position,
    xid: u32,
    commit_time: i64,
    body: &[u8],
) {
    out.push(match kind {
        EntryKind::ReplayDone => 1,
        EntryKind::Rights => 5,
        EntryKind::Event(EventKind::Create) => 2,
        EntryKind::Event(EventKind::Update) => 3,
        EntryKind::Event(EventKind::Delete) => 4,
    });
    out.extend_from_slice(&query.0.to_be_bytes());
    out.extend_from_slice(&pos.lsn.to_be_bytes());
    out.extend_from_slice(&pos.seq.to_be_bytes());
    out.extend_from_slice(&pos.idx.to_be_bytes());
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&commit_time.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// A new, empty message.
pub fn start_batch() -> Vec<u8> {
    vec![VERSION]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed delivery batch: {0}")]
pub struct BatchError(&'static str);

impl crate::error::Classify for BatchError {
    /// Batches are written by our workers: one we cannot read is a bug or a version mismatch.
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Bug
    }
}

/// Decode a message into entries whose bodies are ranges of `msg`.
pub fn decode_batch(msg: &[u8]) -> Result<Vec<Entry<std::ops::Range<usize>>>, BatchError> {
    let Some((&v, mut rest)) = msg.split_first() else {
        return Err(BatchError("empty"));
    };
    if v != VERSION && v != VERSION_2 {
        return Err(BatchError("unknown version"));
    }
    let mut at = 1usize;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err(BatchError("truncated header"));
        }
        let kind = match (v, rest[0]) {
            (_, 1) => EntryKind::ReplayDone,
            (VERSION, 2) => EntryKind::Event(EventKind::Create),
            (VERSION, 3) => EntryKind::Event(EventKind::Update),
            (VERSION, 4) => EntryKind::Event(EventKind::Delete),
            (VERSION, 5) => EntryKind::Rights,
            // Version 2: the kind is inside the body (read below).
            (VERSION_2, 0) => EntryKind::Event(EventKind::Create),
            _ => return Err(BatchError("unknown entry kind")),
        };
        let h = &rest[1..];
        let u128_at = |o: usize| u128::from_be_bytes(h[o..o + 16].try_into().expect("16"));
        let u64_at = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8"));
        let u32_at = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().expect("4"));
        let query = QueryId(u128_at(0));
        let pos = Position {
            lsn: u64_at(16),
            seq: u32_at(24),
            idx: u16::from_be_bytes(h[28..30].try_into().expect("2")),
        };
        let xid = u32_at(30);
        let commit_time = u64_at(34) as i64;
        let len = u32_at(42) as usize;
        if rest.len() < HEADER + len {
            return Err(BatchError("truncated body"));
        }
        let mut body = at + HEADER..at + HEADER + len;
        let kind = match kind {
            EntryKind::Event(_) if v == VERSION_2 => {
                let (event, head) = v2_event(&msg[body.clone()])
                    .ok_or(BatchError("version 2 event without a Directus envelope"))?;
                body.start += head;
                EntryKind::Event(event)
            }
            k => k,
        };
        out.push(Entry {
            kind,
            query,
            pos,
            xid,
            commit_time,
            body,
        });
        at += HEADER + len;
        rest = &rest[HEADER + len..];
    }
    Ok(out)
}

/// A version 2 event body, `{"type":"subscription","event":"<e>","data":<data>`: its kind and the length
/// of the part before `<data>`.
fn v2_event(body: &[u8]) -> Option<(EventKind, usize)> {
    EventKind::ALL.into_iter().find_map(|k| {
        let head = crate::protocol::event_head(k);
        body.starts_with(head).then_some((k, head.len()))
    })
}

/// `pg_current_snapshot()`: transactions below `xmin` are complete, from `xmax` on not yet started, and
/// those in `xip` were in progress. 64-bit (epoch-extended) ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl PgSnapshot {
    /// Parse `xmin:xmax:xip1,xip2,...`.
    pub fn parse(text: &str) -> Option<PgSnapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(PgSnapshot { xmin, xmax, xip })
    }

    /// Widen a 32-bit xid (as pgoutput sends it) to 64 bits using this snapshot's epoch: the xid is at
    /// most 2^31 away from `xmax`.
    fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax >> 32;
        let candidate = (epoch << 32) | xid as u64;
        if candidate > self.xmax + (1u64 << 31) {
            candidate.saturating_sub(1u64 << 32)
        } else if candidate + (1u64 << 31) < self.xmax {
            candidate + (1u64 << 32)
        } else {
            candidate
        }
    }

    /// Were the effects of transaction `xid` (committed) visible to this snapshot?
    pub fn sees(&self, xid: u32) -> bool {
        let x = self.widen(xid);
        if x < self.xmin {
            return true;
        }
        if x >= self.xmax {
            return false;
        }
        !self.xip.contains(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let entries = vec![
            Entry {
                kind: EntryKind::Event(EventKind::Update),
                query: QueryId(7),
                pos: Position {
                    lsn: 100,
                    seq: 1,
                    idx: 2,
                },
                xid: 9,
                commit_time: 123,
                body: b"{\"a\":1".to_vec(),
            },
            Entry {
                kind: EntryKind::ReplayDone,
                query: QueryId(u128::MAX),
                pos: Position {
                    lsn: u64::MAX,
                    seq: 0,
                    idx: 0,
                },
                xid: 0,
                commit_time: -1,
                body: Vec::new(),
            },
            Entry {
                kind: EntryKind::Rights,
                query: QueryId(0),
                pos: Position {
                    lsn: 101,
                    seq: 0,
                    idx: 0,
                },
                xid: 10,
                commit_time: 124,
                body: b"p:1\npub".to_vec(),
            },
        ];
        let msg = encode_batch(&entries);
        let decoded = decode_batch(&msg).unwrap();
        assert_eq!(decoded.len(), 3);
        for (d, e) in decoded.iter().zip(&entries) {
            assert_eq!(
                (d.kind, d.query, d.pos, d.xid, d.commit_time),
                (e.kind, e.query, e.pos, e.xid, e.commit_time)
            );
            assert_eq!(&msg[d.body.clone()], &e.body[..]);
        }
        assert!(decode_batch(&[]).is_err());
        assert!(decode_batch(&[1]).is_err(), "old version");
        for kind in EventKind::ALL {
            let m = encode_batch(&[Entry {
                kind: EntryKind::Event(kind),
                query: QueryId(1),
                pos: Position::ZERO,
                xid: 0,
                commit_time: 0,
                body: b"[1]".to_vec(),
            }]);
            assert_eq!(decode_batch(&m).unwrap()[0].kind, EntryKind::Event(kind));
        }
        let mut bad_kind = msg.clone();
        bad_kind[1] = 9;
        assert!(decode_batch(&bad_kind).is_err());
        assert!(decode_batch(&msg[..msg.len() - 1]).is_err());
        assert!(decode_batch(&msg[..10]).is_err());
        assert_eq!(decode_batch(&start_batch()).unwrap().len(), 0);
    }

    /// What a version 2 worker published: whole Directus bodies, entry kind 0 for every event.
    fn v2_batch(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = vec![VERSION_2];
        for (kind, body) in entries {
            m.push(*kind);
            m.extend_from_slice(&7u128.to_be_bytes());
            m.extend_from_slice(&100u64.to_be_bytes());
            m.extend_from_slice(&1u32.to_be_bytes());
            m.extend_from_slice(&2u16.to_be_bytes());
            m.extend_from_slice(&9u32.to_be_bytes());
            m.extend_from_slice(&123i64.to_be_bytes());
            m.extend_from_slice(&(body.len() as u32).to_be_bytes());
            m.extend_from_slice(body);
        }
        m
    }

    #[test]
    fn version_2_batches_read_as_neutral_events() {
        let m = v2_batch(&[
            (
                0,
                br#"{"type":"subscription","event":"delete","data":["5"]"#,
            ),
            (1, b"0@3"),
            (
                0,
                br#"{"type":"subscription","event":"create","data":[{"id":1}]"#,
            ),
        ]);
        let d = decode_batch(&m).unwrap();
        let got: Vec<_> = d.iter().map(|e| (e.kind, &m[e.body.clone()])).collect();
        assert_eq!(
            got,
            [
                (EntryKind::Event(EventKind::Delete), &br#"["5"]"#[..]),
                (EntryKind::ReplayDone, &b"0@3"[..]),
                (EntryKind::Event(EventKind::Create), &br#"[{"id":1}]"#[..]),
            ]
        );
        assert_eq!(
            (d[0].query, d[0].pos, d[0].xid, d[0].commit_time),
            (
                QueryId(7),
                Position {
                    lsn: 100,
                    seq: 1,
                    idx: 2
                },
                9,
                123
            )
        );
        // Only kinds 0 and 1 existed, and an event body must carry the envelope.
        assert!(decode_batch(&v2_batch(&[(2, b"[1]")])).is_err());
        assert!(decode_batch(&v2_batch(&[(0, b"[1]")])).is_err());
    }

    #[test]
    fn positions_order() {
        let p = |lsn, seq, idx| Position { lsn, seq, idx };
        assert!(p(1, 0, 5) < p(2, 0, 0));
        assert!(p(2, 0, 9) < p(2, 1, 0));
        assert!(p(2, 1, 0) < p(2, 1, 1));
    }

    #[test]
    fn snapshot_visibility() {
        let s = PgSnapshot::parse("100:110:102,105").unwrap();
        assert!(s.sees(99), "below xmin: complete");
        assert!(s.sees(101));
        assert!(!s.sees(102), "in progress");
        assert!(!s.sees(110), "at or after xmax");
        assert!(!s.sees(200));
        assert_eq!(PgSnapshot::parse("5:5:").unwrap().xip, Vec::<u64>::new());
        assert!(PgSnapshot::parse("x").is_none());
        // Epoch boundary: xmax just past a wrap of the 32-bit counter.
        let s = PgSnapshot::parse(&format!("{}:{}:", (1u64 << 32) - 5, (1u64 << 32) + 5)).unwrap();
        assert!(s.sees(u32::MAX - 10), "old epoch, below xmin");
        assert!(s.sees(2), "new epoch, between xmin and xmax");
        assert!(!s.sees(7), "new epoch, after xmax");
    }
}
