//! The messages gateways and workers exchange about registrations, each with one encode/decode pair
//! used by both sides (the worker→gateway event batches are in [`crate::delivery`]).
//!
//! - [`ReplayRequest`]: "replay the change stream from this commit LSN for my registration"; the token
//!   makes every request unique, so a gateway can tell which request a replay-done entry answers.
//! - [`Replay`]: what a registration asks for: a replay, or live events only.
//! - [`RegField`]: a (query, gateway) registration, the field of a shard's `reg` hash.
//! - [`CtlEntry`]: an entry of the ctl stream, announcing a registration or its removal to the owner of
//!   the query's shard.
//!
//! Text encodings, because they live in Redis hashes and stream fields that operators read with
//! `redis-cli`.

use crate::normalize::QueryId;
use std::fmt;

/// A gateway's request to replay the change stream from commit LSN `from` for one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayRequest {
    pub from: u64,
    pub token: u64,
}

impl fmt::Display for ReplayRequest {
    /// `<from>@<token>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.from, self.token)
    }
}

impl ReplayRequest {
    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn decode(text: &[u8]) -> Option<ReplayRequest> {
        let text = std::str::from_utf8(text).ok()?;
        let (from, token) = text.split_once('@')?;
        Some(ReplayRequest {
            from: parse_decimal(from)?,
            token: parse_decimal(token)?,
        })
    }
}

/// Digits only (no sign, no spaces, no leading zeros): `u64::from_str` accepts a leading `+` and leading
/// zeros, which would give one value several encodings (and the `REPLAYED` script compares the stored
/// request with the served one's encoding byte for byte).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// What a registration asks of the worker that applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Events from whenever the worker applies the registration (after an identity change, where no
    /// snapshot is re-sent).
    Live,
    /// Replay from the request's LSN first, then end the replay with a replay-done entry.
    From(ReplayRequest),
}

/// How [`Replay::Live`] is written (also what a served request is overwritten with).
const LIVE: &str = "-";

impl Replay {
    pub fn encode(&self) -> String {
        match self {
            Replay::Live => LIVE.to_owned(),
            Replay::From(r) => r.encode(),
        }
    }

    pub fn decode(text: &[u8]) -> Option<Replay> {
        if text == LIVE.as_bytes() {
            return Some(Replay::Live);
        }
        ReplayRequest::decode(text).map(Replay::From)
    }

    /// The string a shard's `reg` hash holds once the replay was served.
    pub fn served() -> &'static str {
        LIVE
    }
}

/// A (query, gateway) registration: the field of a shard's `reg` hash, `<query id>|<gateway id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegField {
    pub query: QueryId,
    pub gateway: String,
}

impl RegField {
    pub fn new(query: QueryId, gateway: &str) -> RegField {
        RegField {
            query,
            gateway: gateway.to_owned(),
        }
    }

    pub fn encode(&self) -> String {
        format!("{}|{}", self.query, self.gateway)
    }

    /// Gateway ids never contain `|`; the query id is the part before the first one, in its canonical form
    /// (32 lowercase hex digits): `REPLAYED` compares a stored field with [`RegField::encode`] byte for
    /// byte, so a field with another spelling of its id would never be marked served.
    pub fn decode(text: &str) -> Option<RegField> {
        let (q, gw) = text.split_once('|')?;
        if gw.is_empty() || gw.contains('|') {
            return None;
        }
        let query: QueryId = q.parse().ok()?;
        if query.to_string() != q {
            return None;
        }
        Some(RegField {
            query,
            gateway: gw.to_owned(),
        })
    }
}

/// An entry of the ctl stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlEntry {
    Register {
        query: QueryId,
        gateway: String,
        replay: Replay,
        /// The query's canonical JSON ([`crate::normalize::NormalizedQuery::canonical_json`]).
        definition: String,
    },
    Unregister {
        query: QueryId,
        gateway: String,
    },
}

/// Why a ctl entry was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    #[error("ctl entry without the {0:?} field")]
    Missing(&'static str),
    #[error("ctl entry with an unreadable {0:?} field")]
    Invalid(&'static str),
    #[error("ctl entry with unknown op {0:?}")]
    UnknownOp(String),
}

impl crate::error::Classify for CtlError {
    /// Ctl entries are written by our gateways: one we cannot read is a bug or a version mismatch.
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Bug
    }
}

impl CtlEntry {
    pub fn query(&self) -> QueryId {
        match self {
            CtlEntry::Register { query, .. } | CtlEntry::Unregister { query, .. } => *query,
        }
    }

    pub fn gateway(&self) -> &str {
        match self {
            CtlEntry::Register { gateway, .. } | CtlEntry::Unregister { gateway, .. } => gateway,
        }
    }

    /// The stream entry's fields, in order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (
                "op",
                match self {
                    CtlEntry::Register { .. } => "reg",
                    CtlEntry::Unregister { .. } => "unreg",
                }
                .to_owned(),
            ),
            ("q", self.query().to_string()),
            ("g", self.gateway().to_owned()),
        ];
        if let CtlEntry::Register {
            replay, definition, ..
        } = self
        {
            out.push(("f", replay.encode()));
            out.push(("d", definition.clone()));
        }
        out
    }

    /// Read an entry from its fields (`get` returns a field's raw value).
    pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<CtlEntry, CtlError> {
        let text = |k: &'static str| -> Result<&'a str, CtlError> {
            let v = get(k).ok_or(CtlError::Missing(k))?;
            std::str::from_utf8(v).map_err(|_| CtlError::Invalid(k))
        };
        let op = text("op")?;
        let query: QueryId = text("q")?.parse().map_err(|_| CtlError::Invalid("q"))?;
        let gateway = text("g")?;
        if gateway.is_empty() || gateway.contains('|') {
            return Err(CtlError::Invalid("g"));
        }
        let gateway = gateway.to_owned();
        match op {
            "reg" => Ok(CtlEntry::Register {
                query,
                gateway,
                replay: Replay::decode(get("f").ok_or(CtlError::Missing("f"))?)
                    .ok_or(CtlError::Invalid("f"))?,
                definition: text("d")?.to_owned(),
            }),
            "unreg" => Ok(CtlEntry::Unregister { query, gateway }),
            other => Err(CtlError::UnknownOp(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn decode_map(fields: &[(&'static str, String)]) -> Result<CtlEntry, CtlError> {
        let map: HashMap<&str, &[u8]> = fields.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        CtlEntry::decode(|k| map.get(k).copied())
    }

    #[test]
    fn the_wire_forms_are_stable() {
        let r = ReplayRequest {
            from: 123456,
            token: 7,
        };
        assert_eq!(r.encode(), "123456@7");
        assert_eq!(Replay::From(r).encode(), "123456@7");
        assert_eq!(Replay::Live.encode(), "-");
        assert_eq!(
            RegField::new(QueryId(0xab), "gw-1").encode(),
            format!("{}|gw-1", QueryId(0xab))
        );
        let e = CtlEntry::Unregister {
            query: QueryId(1),
            gateway: "g".into(),
        };
        assert_eq!(
            e.fields(),
            vec![
                ("op", "unreg".to_owned()),
                ("q", QueryId(1).to_string()),
                ("g", "g".to_owned())
            ]
        );
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            "",
            "-1@2",
            "+1@2",
            "1@",
            "@1",
            "1",
            "1@2@3",
            "x@1",
            " 1@2",
            "18446744073709551616@1",
            // Found by the `replay_request` fuzz target: leading zeros gave "0@8" a second encoding.
            "00@8",
            "1@08",
        ] {
            assert_eq!(ReplayRequest::decode(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(
            ReplayRequest::decode(b"0@0"),
            Some(ReplayRequest { from: 0, token: 0 }),
            "a lone zero is the encoding of zero"
        );
        assert_eq!(Replay::decode(b"--"), None);
        assert_eq!(RegField::decode("nobar"), None);
        assert_eq!(RegField::decode(&format!("{}|", QueryId(1))), None);
        assert_eq!(RegField::decode("zz|gw"), None);
        assert_eq!(RegField::decode(&format!("{}|a|b", QueryId(1))), None);
        // Found by the `replay_request` fuzz target: `u128::from_str_radix` also reads short, `+`-signed
        // and upper-case ids, so one registration had several fields.
        for bad in ["1|]", "+1|g", "AB|g"] {
            assert_eq!(RegField::decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            RegField::decode(&format!("{}|g", QueryId(0xab))),
            Some(RegField::new(QueryId(0xab), "g"))
        );
        let q = QueryId(5).to_string();
        assert_eq!(
            decode_map(&[("q", q.clone()), ("g", "g".into())]),
            Err(CtlError::Missing("op"))
        );
        assert_eq!(
            decode_map(&[
                ("op", "reg".into()),
                ("q", q.clone()),
                ("g", "g".into()),
                ("d", "{}".into())
            ]),
            Err(CtlError::Missing("f"))
        );
        assert_eq!(
            decode_map(&[
                ("op", "reg".into()),
                ("q", q.clone()),
                ("g", "g".into()),
                ("f", "x".into()),
                ("d", "{}".into())
            ]),
            Err(CtlError::Invalid("f"))
        );
        assert_eq!(
            decode_map(&[("op", "move".into()), ("q", q.clone()), ("g", "g".into())]),
            Err(CtlError::UnknownOp("move".into()))
        );
        assert_eq!(
            decode_map(&[
                ("op", "unreg".into()),
                ("q", "nope".into()),
                ("g", "g".into())
            ]),
            Err(CtlError::Invalid("q"))
        );
        let bad_utf8: HashMap<&str, &[u8]> = [("op", &b"\xff"[..])].into_iter().collect();
        assert_eq!(
            CtlEntry::decode(|k| bad_utf8.get(k).copied()),
            Err(CtlError::Invalid("op"))
        );
    }

    fn gateway() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,24}"
    }

    fn replay() -> impl Strategy<Value = Replay> {
        prop_oneof![
            Just(Replay::Live),
            (any::<u64>(), any::<u64>())
                .prop_map(|(from, token)| Replay::From(ReplayRequest { from, token })),
        ]
    }

    proptest! {
        #[test]
        fn replay_round_trips(r in replay()) {
            prop_assert_eq!(Replay::decode(r.encode().as_bytes()), Some(r));
        }

        #[test]
        fn reg_field_round_trips(q in any::<u128>(), gw in gateway()) {
            let f = RegField::new(QueryId(q), &gw);
            prop_assert_eq!(RegField::decode(&f.encode()), Some(f));
        }

        #[test]
        fn ctl_entry_round_trips(q in any::<u128>(), gw in gateway(), r in replay(), def in ".{0,64}", reg in any::<bool>()) {
            let e = if reg {
                CtlEntry::Register { query: QueryId(q), gateway: gw, replay: r, definition: def }
            } else {
                CtlEntry::Unregister { query: QueryId(q), gateway: gw }
            };
            prop_assert_eq!(decode_map(&e.fields()), Ok(e));
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = ReplayRequest::decode(&bytes);
            let _ = Replay::decode(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = RegField::decode(s);
            }
        }
    }
}
