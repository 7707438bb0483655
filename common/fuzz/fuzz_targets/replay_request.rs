//! Registration messages (`common::ctl`): replay requests, `reg` hash fields and ctl stream entries, the
//! way the worker reads them (`CtlEntry::decode` in the matching driver, `RegField`/`Replay::decode` when a
//! shard is loaded), plus the definition a `reg` entry carries.
//!
//! Input: fields separated by `0xff` (never valid UTF-8, so every field can still be any UTF-8 text, or
//! invalid UTF-8 when it contains other high bytes): `op`, `q`, `g`, `f`, `d`. A field that is absent
//! from the input is missing from the entry.
//!
//! Checked: no panic; what decodes re-encodes to something that decodes to the same value
//! (`ReplayRequest`, `Replay`, `RegField`, `CtlEntry` via `fields()`); a replay request's encoding is
//! canonical (the decoder accepts exactly one text per value); a definition that reads back as a
//! `NormalizedQuery` re-serialises to canonical JSON that reads back with the same id (the worker drops a
//! registration whose definition's id differs from `q`).
#![no_main]

use common::change::{StreamId, format_lsn, parse_lsn};
use common::ctl::{CtlEntry, RegField, Replay, ReplayRequest};
use common::normalize::{NormalizedQuery, QueryId};
use common::shard::{DEFAULT_SHARDS, shard_of};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fn check_text_decoders(raw: &[u8]) {
    if let Some(r) = ReplayRequest::decode(raw) {
        assert_eq!(r.encode().as_bytes(), raw, "one text per replay request");
        assert_eq!(ReplayRequest::decode(r.encode().as_bytes()), Some(r));
    }
    if let Some(r) = Replay::decode(raw) {
        assert_eq!(r.encode().as_bytes(), raw, "one text per replay");
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    if let Some(f) = RegField::decode(text) {
        // The driver marks a served replay with `REPLAYED`, which compares the stored field with
        // `field.encode()` byte for byte: a field must have one text.
        assert_eq!(f.encode(), text, "one text per reg field");
        let again = RegField::decode(&f.encode());
        assert_eq!(again.as_ref(), Some(&f), "reg field round-trips");
        assert!(!f.gateway.is_empty() && !f.gateway.contains('|'));
    }
    if let Ok(id) = text.parse::<QueryId>() {
        assert_eq!(id.to_string().parse::<QueryId>(), Ok(id));
        for shards in [1, 7, DEFAULT_SHARDS] {
            assert!(shard_of(id, shards) < shards);
        }
    }
    if let Ok(id) = text.parse::<StreamId>() {
        assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
    }
    if let Some(lsn) = parse_lsn(text) {
        assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
    }
}

fuzz_target!(|data: &[u8]| {
    const KEYS: [&str; 5] = ["op", "q", "g", "f", "d"];
    let map: HashMap<&str, &[u8]> = KEYS.into_iter().zip(data.split(|&b| b == 0xff)).collect();
    for v in map.values() {
        check_text_decoders(v);
    }

    if let Ok(entry) = CtlEntry::decode(|k| map.get(k).copied()) {
        let fields = entry.fields();
        let re: HashMap<&str, &[u8]> = fields.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        assert_eq!(
            CtlEntry::decode(|k| re.get(k).copied()).as_ref(),
            Ok(&entry),
            "ctl entry round-trips through its fields"
        );
        if let CtlEntry::Register { definition, .. } = &entry
            && let Ok(q) = serde_json::from_str::<NormalizedQuery>(definition)
        {
            let _ = q.id() == entry.query();
        }
    }

    if let Some(def) = map.get("d").and_then(|d| std::str::from_utf8(d).ok())
        && let Ok(q) = serde_json::from_str::<NormalizedQuery>(def)
    {
        let own = q.id();
        let canonical = q.canonical_json();
        let back: NormalizedQuery = match serde_json::from_str(&canonical) {
            Ok(b) => b,
            Err(e) => panic!("canonical JSON does not read back ({e}): {canonical}"),
        };
        assert_eq!(back.id(), own, "a re-read definition keeps its id: {canonical}");
    }
});
