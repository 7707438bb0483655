//! `common::delivery::decode_batch` (the worker → gateway message) on arbitrary bytes.
//!
//! Checked: no panic; entry bodies are in-bounds, ordered, non-overlapping ranges that, with the headers,
//! cover the whole message (in version 2 batches an event's range starts after its Directus envelope);
//! re-encoding the decoded entries (with `encode_batch`, and with `start_batch` + `append_entry` /
//! `append_replay_done`) gives back the same bytes for a current-version message, and for a version 2
//! message a current one that decodes to the same entries.
#![no_main]

use common::delivery::{
    Entry, EntryKind, append_entry, append_replay_done, append_rights, decode_batch, encode_batch, start_batch,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = decode_batch(data) else {
        return;
    };
    let current = data[0] == start_batch()[0];
    let mut end = 1;
    for e in &entries {
        assert!(e.body.start >= end && e.body.start <= e.body.end && e.body.end <= data.len());
        end = e.body.end;
    }
    assert_eq!(end, data.len(), "entries cover the message");

    let owned: Vec<Entry<Vec<u8>>> = entries
        .iter()
        .map(|e| Entry {
            kind: e.kind,
            query: e.query,
            pos: e.pos,
            xid: e.xid,
            commit_time: e.commit_time,
            body: data[e.body.clone()].to_vec(),
        })
        .collect();
    let msg = encode_batch(&owned);
    let again = decode_batch(&msg).expect("re-encoded batch decodes");
    if current {
        assert_eq!(msg, data, "encode_batch(decode_batch(m)) == m");
        assert_eq!(again, entries, "same entries");
    } else {
        let same: Vec<_> = again
            .iter()
            .map(|e| (e.kind, e.query, e.pos, e.xid, e.commit_time, &msg[e.body.clone()]))
            .collect();
        let was: Vec<_> = owned
            .iter()
            .map(|e| (e.kind, e.query, e.pos, e.xid, e.commit_time, &e.body[..]))
            .collect();
        assert_eq!(same, was, "a version 2 batch re-encodes to the same entries");
        return;
    }

    // The incremental builders the worker uses produce the same message when they can express it
    // (a replay-done entry built by `append_replay_done` always has xid 0 and commit time 0).
    let mut inc = start_batch();
    let mut expressible = true;
    for e in &owned {
        match e.kind {
            EntryKind::Event(kind) => append_entry(
                &mut inc,
                kind,
                e.query,
                e.pos,
                e.xid,
                e.commit_time,
                &e.body,
            ),
            EntryKind::ReplayDone if e.xid == 0 && e.commit_time == 0 => {
                append_replay_done(&mut inc, e.query, e.pos, &e.body)
            }
            EntryKind::ReplayDone => expressible = false,
            EntryKind::Rights if e.query.0 == 0 => {
                append_rights(&mut inc, e.pos, e.xid, e.commit_time, &e.body)
            }
            EntryKind::Rights => expressible = false,
        }
    }
    if expressible {
        assert_eq!(inc, data);
    }
});
