//! The subscription index a worker keeps for the shards it owns.
//!
//! Per collection, every query is filed under one equality conjunct of its filter (`status = 'x'`,
//! `author IN (…)`), or in a residual list if it has none. For a changed row, the candidates are the
//! queries in the buckets of the row's values (old and new) plus the residual list, so the cost of a change
//! grows with the queries that can match it, not with the number registered. Every candidate is then
//! evaluated exactly ([`common::filter::Filter::matches`]).
//!
//! Pure: no I/O. Benchmarked in `benches/matching.rs`.

use common::filter::{Filter, Op};
use common::normalize::{NormalizedQuery, QueryId};
use common::value::{Datum, Kind};
use std::collections::HashMap;
use std::sync::Arc;

pub type Slot = u32;

/// A value as an index key. Only kinds whose equality is exact byte/number equality are indexed (floats
/// are not: `-0 = 0` and NaN would need special buckets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Int(i64),
    Numeric(Box<str>),
    Text(Box<str>),
    Uuid(u128),
    Bool(bool),
    Date(i32),
    Time(i64),
    Timestamp(i64),
    TimestampTz(i64),
    Other(Box<str>),
}

/// The key of a datum compared with a column of `kind`, if equality on it can use the index: the
/// datum must be of the column's own variant (an integer column compared with `5.5` is not indexed).
pub fn index_key(kind: &Kind, d: &Datum) -> Option<IndexKey> {
    Some(match (kind, d) {
        (Kind::Int2 | Kind::Int4 | Kind::Int8, Datum::Int(i)) => IndexKey::Int(*i),
        (Kind::Numeric, Datum::Numeric(n)) => IndexKey::Numeric(n.to_text().into()),
        (Kind::Text | Kind::Varchar | Kind::Bpchar, Datum::Text(s)) => {
            IndexKey::Text(s.as_str().into())
        }
        (Kind::Uuid, Datum::Uuid(u)) => IndexKey::Uuid(*u),
        (Kind::Bool, Datum::Bool(b)) => IndexKey::Bool(*b),
        (Kind::Date, Datum::Date(v)) => IndexKey::Date(*v),
        (Kind::Time, Datum::Time(v)) => IndexKey::Time(*v),
        (Kind::Timestamp, Datum::Timestamp(v)) => IndexKey::Timestamp(*v),
        (Kind::TimestampTz, Datum::TimestampTz(v)) => IndexKey::TimestampTz(*v),
        (k, Datum::Other(s)) if common::filter::compares_as_text(k) => {
            IndexKey::Other(s.as_str().into())
        }
        _ => return None,
    })
}

/// A row's value under an indexed column, for candidate lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Key(IndexKey),
    /// NULL, or a value no equality bucket can hold: only residual queries can match.
    NoMatch,
    /// The change does not carry the value.
    Unknown,
}

/// A registered query.
pub struct QueryEntry {
    pub id: QueryId,
    pub shard: u32,
    pub def: Arc<NormalizedQuery>,
    /// Gateways with subscribers to this query.
    pub gateways: Vec<Arc<str>>,
    /// Where the query is filed: (column, keys) or `None` for the residual list.
    filed: Option<(String, Vec<IndexKey>)>,
}

#[derive(Default)]
struct CollectionIndex {
    eq: HashMap<String, HashMap<IndexKey, Vec<Slot>>>,
    residual: Vec<Slot>,
}

#[derive(Default)]
pub struct Index {
    slots: Vec<Option<QueryEntry>>,
    free: Vec<Slot>,
    by_id: HashMap<QueryId, Slot>,
    collections: HashMap<String, CollectionIndex>,
    /// Per slot, the generation in which it was last returned as a candidate (dedupes candidates).
    seen: Vec<u32>,
    generation: u32,
    /// Gateway name → registrations naming it. Interns the names (a million registrations share a
    /// few `Arc<str>`s) and lists the gateways without walking every query.
    gateway_refs: HashMap<Arc<str>, usize>,
    /// Collection → relational queries showing items of it one level down (`author.email` on
    /// `directus_users`, `comments.body` on `comments`): a change there may change their items.
    followers: HashMap<String, Vec<Slot>>,
}

/// The collections a relational query's own fields show items of.
fn followed(def: &NormalizedQuery) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &def.fields {
        if let Some(r) = p.relation.and_then(|r| def.relations.get(r as usize))
            && !out.contains(&r.collection)
        {
            out.push(r.collection.clone());
        }
    }
    out
}

/// The conjuncts a query could be filed under: equality with one indexable value, or `IN` with up to 64.
fn filing_options(q: &NormalizedQuery) -> Vec<(String, Vec<IndexKey>)> {
    let conds: Vec<&common::filter::Cond> = match &q.filter {
        Filter::Cond(c) => vec![c],
        Filter::And(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Filter::Cond(c) => Some(c),
                _ => None,
            })
            .collect(),
        Filter::Or(_) => Vec::new(),
    };
    conds
        .into_iter()
        .filter_map(|c| {
            // A `$NOW` argument moves with the clock: not a bucket key.
            let ok = c.now.is_none()
                && match c.op {
                    Op::Eq => c.args.len() == 1,
                    Op::In => !c.args.is_empty() && c.args.len() <= 64,
                    _ => false,
                };
            if !ok {
                return None;
            }
            let keys: Option<Vec<IndexKey>> =
                c.args.iter().map(|a| index_key(&c.kind, a)).collect();
            Some((c.field.clone(), keys?))
        })
        .collect()
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn slot_of(&self, id: &QueryId) -> Option<Slot> {
        self.by_id.get(id).copied()
    }

    /// Whether any relational query follows another collection's rows.
    pub fn has_followers(&self) -> bool {
        !self.followers.is_empty()
    }

    /// The relational queries showing items of `collection` one level down.
    pub fn followers(&self, collection: &str) -> &[Slot] {
        self.followers.get(collection).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, slot: Slot) -> Option<&QueryEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn get_by_id(&self, id: &QueryId) -> Option<&QueryEntry> {
        self.slot_of(id).and_then(|s| self.get(s))
    }

    /// Register `gateway` for the query, inserting the query if needed. Returns whether the gateway was new.
    pub fn register(
        &mut self,
        id: QueryId,
        shard: u32,
        def: Arc<NormalizedQuery>,
        gateway: &str,
    ) -> bool {
        let slot = match self.by_id.get(&id) {
            Some(&s) => s,
            None => self.insert(id, shard, def),
        };
        if self.slots[slot as usize]
            .as_ref()
            .expect("live slot")
            .gateways
            .iter()
            .any(|g| &**g == gateway)
        {
            return false;
        }
        let gw = match self.gateway_refs.get_key_value(gateway) {
            Some((k, _)) => k.clone(),
            None => Arc::from(gateway),
        };
        *self.gateway_refs.entry(gw.clone()).or_default() += 1;
        self.slots[slot as usize]
            .as_mut()
            .expect("live slot")
            .gateways
            .push(gw);
        true
    }

    fn release_gateway(&mut self, gateway: &str) {
        if let Some(n) = self.gateway_refs.get_mut(gateway) {
            *n -= 1;
            if *n == 0 {
                self.gateway_refs.remove(gateway);
            }
        }
    }

    /// Pick the conjunct to file a query under: the one whose buckets hold the fewest queries now, so a
    /// conjunct many queries share (`run = 7` beside `owner = $CURRENT_USER`) does not become one huge
    /// bucket every change scans. Ties go to equality on the primary key (item subscriptions), then to
    /// equality over `IN`, then to the column with more distinct values filed so far.
    fn choose_key(&self, q: &NormalizedQuery) -> Option<(String, Vec<IndexKey>)> {
        let coll = self.collections.get(&q.collection);
        filing_options(q).into_iter().min_by_key(|(col, keys)| {
            let buckets = coll.and_then(|c| c.eq.get(col));
            let filed: usize = keys
                .iter()
                .map(|k| buckets.and_then(|b| b.get(k)).map_or(0, Vec::len))
                .sum();
            let distinct = buckets.map_or(0, HashMap::len);
            (
                filed,
                *col != q.primary_key,
                keys.len(),
                std::cmp::Reverse(distinct),
            )
        })
    }

    fn insert(&mut self, id: QueryId, shard: u32, def: Arc<NormalizedQuery>) -> Slot {
        let filed = self.choose_key(&def);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.seen.push(0);
                (self.slots.len() - 1) as Slot
            }
        };
        let coll = self.collections.entry(def.collection.clone()).or_default();
        match &filed {
            Some((col, keys)) => {
                let buckets = coll.eq.entry(col.clone()).or_default();
                for k in keys {
                    buckets.entry(k.clone()).or_default().push(slot);
                }
            }
            None => coll.residual.push(slot),
        }
        for c in followed(&def) {
            self.followers.entry(c).or_default().push(slot);
        }
        self.slots[slot as usize] = Some(QueryEntry {
            id,
            shard,
            def,
            gateways: Vec::new(),
            filed,
        });
        self.by_id.insert(id, slot);
        slot
    }

    /// Unregister `gateway`; the query is removed when no gateway is left. Returns whether it was removed.
    pub fn unregister(&mut self, id: &QueryId, gateway: &str) -> bool {
        let Some(&slot) = self.by_id.get(id) else {
            return false;
        };
        let entry = self.slots[slot as usize].as_mut().expect("live slot");
        let before = entry.gateways.len();
        entry.gateways.retain(|g| &**g != gateway);
        let (removed, empty) = (entry.gateways.len() < before, entry.gateways.is_empty());
        if removed {
            self.release_gateway(gateway);
        }
        if empty {
            self.remove(id);
            return true;
        }
        false
    }

    /// Remove a query outright.
    pub fn remove(&mut self, id: &QueryId) {
        let Some(slot) = self.by_id.remove(id) else {
            return;
        };
        let entry = self.slots[slot as usize].take().expect("live slot");
        for g in &entry.gateways {
            self.release_gateway(g);
        }
        for c in followed(&entry.def) {
            if let Some(v) = self.followers.get_mut(&c) {
                v.retain(|s| *s != slot);
                if v.is_empty() {
                    self.followers.remove(&c);
                }
            }
        }
        if let Some(coll) = self.collections.get_mut(&entry.def.collection) {
            match &entry.filed {
                Some((col, keys)) => {
                    if let Some(buckets) = coll.eq.get_mut(col) {
                        for k in keys {
                            if let Some(v) = buckets.get_mut(k) {
                                v.retain(|s| *s != slot);
                                if v.is_empty() {
                                    buckets.remove(k);
                                }
                            }
                        }
                        if buckets.is_empty() {
                            coll.eq.remove(col);
                        }
                    }
                }
                None => coll.residual.retain(|s| *s != slot),
            }
        }
        self.free.push(slot);
    }

    /// Drop every query of a shard (the shard moved to another worker).
    pub fn remove_shard(&mut self, shard: u32) {
        let ids: Vec<QueryId> = self
            .slots
            .iter()
            .flatten()
            .filter(|e| e.shard == shard)
            .map(|e| e.id)
            .collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// Remove `gateway` from every query (it died). Returns the queries left without gateways.
    pub fn drop_gateway(&mut self, gateway: &str) -> Vec<QueryId> {
        let ids: Vec<QueryId> = self
            .slots
            .iter()
            .flatten()
            .filter(|e| e.gateways.iter().any(|g| &**g == gateway))
            .map(|e| e.id)
            .collect();
        ids.into_iter()
            .filter(|id| self.unregister(id, gateway))
            .collect()
    }

    /// Every gateway referenced by any query.
    pub fn gateways(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.gateway_refs.keys().cloned().collect();
        out.sort();
        out
    }

    /// Columns of `collection` that some query is filed under (the values a row must be looked up by).
    pub fn indexed_columns(&self, collection: &str) -> Vec<String> {
        self.collections
            .get(collection)
            .map(|c| c.eq.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Start a new candidate generation; slots returned by [`Index::candidates`] are unique within one.
    pub fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        }
    }

    /// Append to `out` the candidates for a row of `collection`; `key_of` gives the row's value under each
    /// indexed column. Residual queries are included.
    pub fn candidates(
        &mut self,
        collection: &str,
        key_of: impl Fn(&str) -> Lookup,
        out: &mut Vec<Slot>,
    ) {
        let Some(coll) = self.collections.get(collection) else {
            return;
        };
        let generation = self.generation;
        let seen = &mut self.seen;
        let mut take = |s: Slot| {
            if seen[s as usize] != generation {
                seen[s as usize] = generation;
                out.push(s);
            }
        };
        for (col, buckets) in &coll.eq {
            match key_of(col) {
                Lookup::Key(k) => {
                    if let Some(slots) = buckets.get(&k) {
                        slots.iter().copied().for_each(&mut take);
                    }
                }
                Lookup::NoMatch => {}
                // The value is not in the change (no REPLICA IDENTITY FULL): any query on the column may match.
                Lookup::Unknown => buckets.values().flatten().copied().for_each(&mut take),
            }
        }
        coll.residual.iter().copied().for_each(&mut take);
    }

    /// Every live query (for shard checkpoints and diagnostics).
    pub fn entries(&self) -> impl Iterator<Item = &QueryEntry> {
        self.slots.iter().flatten()
    }

    /// Every query with its slot.
    pub fn entries_with_slots(&self) -> impl Iterator<Item = (Slot, &QueryEntry)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as Slot, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::filter::{self, Limits, VarContext};
    use common::normalize::{Access, NormalizeLimits, normalize};
    use common::query::{QueryConfig, parse_query};
    use common::schema::{Collection, Column};
    use serde_json::json;

    fn coll() -> Collection {
        let c = Column::new;
        Collection::new(
            "a",
            "public",
            "id",
            vec![
                c("id", Kind::Int4),
                c("status", Kind::Varchar),
                c("n", Kind::Float8),
                c("grp", Kind::Int4),
                c("owner", Kind::Int4),
            ],
        )
    }

    fn q(query: serde_json::Value, item: Option<&str>) -> Arc<NormalizedQuery> {
        let params = parse_query(query.as_object(), &QueryConfig::default()).unwrap();
        let n = normalize(
            &coll(),
            None,
            item,
            &params,
            &Access::Admin,
            &VarContext::default(),
            NormalizeLimits {
                filter: Limits::default(),
            },
        )
        .unwrap();
        Arc::new(n.query)
    }

    fn cands(ix: &mut Index, status: Option<&str>, id: Option<i64>) -> Vec<QueryId> {
        ix.next_generation();
        let mut out = Vec::new();
        ix.candidates(
            "a",
            |col| match col {
                "status" => {
                    status.map_or(Lookup::NoMatch, |s| Lookup::Key(IndexKey::Text(s.into())))
                }
                "id" => id.map_or(Lookup::NoMatch, |i| Lookup::Key(IndexKey::Int(i))),
                _ => Lookup::NoMatch,
            },
            &mut out,
        );
        let mut ids: Vec<QueryId> = out.iter().map(|s| ix.get(*s).unwrap().id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn buckets_and_residual() {
        let mut ix = Index::default();
        let published = q(json!({"filter": {"status": {"_eq": "published"}}}), None);
        let either = q(json!({"filter": {"status": {"_in": ["a", "b"]}}}), None);
        let residual = q(json!({"filter": {"n": {"_gt": 1}}}), None);
        let item = q(json!({"filter": {"status": {"_eq": "x"}}}), Some("7"));
        let all = q(json!({}), None);
        for (d, g) in [
            (&published, "g1"),
            (&either, "g1"),
            (&residual, "g2"),
            (&item, "g1"),
            (&all, "g3"),
        ] {
            assert!(ix.register(d.id(), 0, d.clone(), g));
        }
        assert!(
            !ix.register(published.id(), 0, published.clone(), "g1"),
            "same gateway twice"
        );
        assert!(ix.register(published.id(), 0, published.clone(), "g2"));
        let names = |ix: &Index| {
            ix.gateways()
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ix), ["g1", "g2", "g3"]);
        let mut expect = vec![published.id(), residual.id(), all.id()];
        expect.sort();
        assert_eq!(cands(&mut ix, Some("published"), Some(1)), expect);
        let mut expect = vec![either.id(), residual.id(), all.id()];
        expect.sort();
        assert_eq!(cands(&mut ix, Some("b"), Some(1)), expect);
        let mut expect = vec![item.id(), residual.id(), all.id()];
        expect.sort();
        assert_eq!(
            cands(&mut ix, Some("zzz"), Some(7)),
            expect,
            "item subscriptions are filed under the primary key"
        );
        assert_eq!(ix.indexed_columns("a").len(), 2);

        assert!(!ix.unregister(&published.id(), "g1"));
        assert!(ix.unregister(&published.id(), "g2"));
        assert!(ix.get_by_id(&published.id()).is_none());
        assert_eq!(ix.drop_gateway("g1"), vec![either.id(), item.id()]);
        assert_eq!(ix.len(), 2);
        assert_eq!(names(&ix), ["g2", "g3"], "g1 dropped");
        ix.remove_shard(0);
        assert!(ix.is_empty());
        assert!(ix.gateways().is_empty());
        assert!(
            ix.indexed_columns("a").is_empty(),
            "empty buckets are cleaned up"
        );
    }

    /// Every query shares `grp = 1` (a run or tenant condition) and has its own `owner` (a per-user
    /// permission): after the first, each is filed under its own owner, so a change looks at a handful
    /// of candidates, not at all of them.
    #[test]
    fn a_conjunct_every_query_shares_is_not_where_they_are_filed() {
        let mut ix = Index::default();
        let mut ids = Vec::new();
        for i in 0..1000 {
            let d = q(
                json!({"filter": {"_and": [{"grp": {"_eq": 1}}, {"owner": {"_eq": i}}]}}),
                None,
            );
            ids.push(d.id());
            ix.register(d.id(), 0, d, "g");
        }
        ix.next_generation();
        let mut out = Vec::new();
        ix.candidates(
            "a",
            |col| match col {
                "grp" => Lookup::Key(IndexKey::Int(1)),
                "owner" => Lookup::Key(IndexKey::Int(500)),
                _ => Lookup::NoMatch,
            },
            &mut out,
        );
        let c: Vec<QueryId> = out.iter().map(|s| ix.get(*s).unwrap().id).collect();
        assert!(c.contains(&ids[500]));
        assert!(
            c.len() <= 2,
            "at most the first query shares a bucket with the rest: {} candidates",
            c.len()
        );
    }

    #[test]
    fn floats_and_cross_type_values_are_not_indexed() {
        let f = q(json!({"filter": {"n": {"_eq": 1.5}}}), None);
        assert!(filing_options(&f).is_empty());
        let i = q(json!({"filter": {"id": {"_eq": 5.5}}}), None);
        assert!(filing_options(&i).is_empty(), "int column vs numeric value");
        let _ = filter::Filter::TRUE;
    }
}
