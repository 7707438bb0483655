//! `fanout_worker::capture::pgoutput::decode` and the `Assembler` on arbitrary replication payloads.
//!
//! Input: payloads separated by the byte sequence `0xfe 0xfe` (a separator that pgoutput's own bytes may
//! contain too; that only cuts a message short, which the decoder must handle anyway). Each payload is
//! decoded on its own; every message that decodes is fed, in order, to one assembler with small chunk
//! limits, the way the capture loop feeds it XLogData payloads.
//!
//! Checked: no panic in the decoder or the assembler on any sequence (messages out of order, changes for
//! unknown relations, column counts that differ from the relation, nested transactions); every chunk the
//! assembler emits encodes to bytes that decode to the same chunk (what the matching stage reads back
//! from the stream); chunks of one transaction carry increasing sequence numbers and only the last one
//! has `last` set.
#![no_main]

use common::change::TxChunk;
use fanout_worker::capture::assemble::{Assembler, AssemblerConfig, Output};
use fanout_worker::capture::pgoutput::decode;
use libfuzzer_sys::fuzz_target;

fn payloads(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.windows(2).position(|w| w == [0xfe, 0xfe]) {
            Some(i) => {
                let (p, r) = rest.split_at(i);
                rest = &r[2..];
                Some(p)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::new(AssemblerConfig {
        chunk_rows: 3,
        chunk_bytes: 256,
        ..AssemblerConfig::default()
    });
    // (lsn, seq) of the last chunk of the open transaction.
    let mut open: Option<(u64, u32)> = None;
    for payload in payloads(data) {
        let Ok(msg) = decode(payload) else { continue };
        let Ok(Some(out)) = asm.push(msg) else { continue };
        let Output::Chunk(chunk) = out else {
            open = None;
            continue;
        };
        let bytes = chunk.encode();
        match TxChunk::decode(&bytes) {
            Ok(back) => assert_eq!(back, chunk, "a chunk reads back as written"),
            Err(e) => panic!("emitted chunk does not decode ({e})"),
        }
        if let Some((lsn, seq)) = open
            && lsn == chunk.lsn
        {
            assert!(chunk.seq > seq, "chunk sequence numbers increase within a transaction");
        }
        open = (!chunk.last).then_some((chunk.lsn, chunk.seq));
    }
});
