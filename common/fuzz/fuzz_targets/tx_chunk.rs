//! `common::change::TxChunk::decode` (a change-stream entry) on arbitrary bytes.
//!
//! Checked: no panic; a chunk that decodes re-encodes to JSON that decodes to the same chunk, and that
//! encoding is a fixed point (encode → decode → encode gives the same bytes). The stream id and
//! `Change::weight` (chunk sizing) must not panic either.
#![no_main]

use common::change::{StreamId, TxChunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(chunk) = TxChunk::decode(data) else {
        return;
    };
    let bytes = chunk.encode();
    let again = match TxChunk::decode(&bytes) {
        Ok(c) => c,
        Err(e) => panic!(
            "re-encoded chunk does not decode ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again, chunk, "encode → decode round-trips");
    assert_eq!(again.encode(), bytes, "the encoding is canonical");

    let id = chunk.stream_id();
    assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
    for c in &chunk.changes {
        let _ = c.weight();
    }
    for r in &chunk.relations {
        let _ = chunk.relation(r.id);
        for col in &r.columns {
            let _ = r.column_index(&col.name);
        }
    }
});
