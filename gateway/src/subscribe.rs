//! Turning a `subscribe` message into a live subscription and its `init` frame.
//!
//! Order of checks follows Directus's subscribe handler (the zod shape check ran in the parser): a
//! collection that does not exist (or may never be subscribed to) for a non-admin, the query sanitiser
//! (INVALID_QUERY), `directus_extensions` (INVALID_PAYLOAD), the service's checks: the collection for an
//! admin, read permission and fields (FORBIDDEN, naming the collection or the fields), then `item` on
//! `directus_fields`/`directus_relations` (INVALID_PAYLOAD, at registration in Directus), then the
//! snapshot. Where Directus answers a non-admin's unknown collection with INVALID_COLLECTION, or sends
//! nothing, we send its FORBIDDEN collection text (DESIGN §4: a subscription that can never deliver),
//! which also hides whether the collection exists. Errors from the "service" layer carry no uid, as in
//! Directus.
//!
//! Gap-free init (DESIGN 3.6): the WAL position `L` is read first; the subscriber is attached to the hub
//! (events for it are buffered from now on) and, if the query is new on this gateway, registered with the
//! workers, who replay the stream from shortly before `L` for it; only then is the snapshot read, in a
//! REPEATABLE READ transaction that also returns `pg_current_snapshot()` and the WAL position after it.
//! The socket task writes `init`, then the buffered events the snapshot does not contain.

use crate::auth::Accountability;
use crate::hub::SubKey;
use crate::outbox::Outbox;
use crate::state::AppState;
use bytes::Bytes;
use common::delivery::PgSnapshot;
use common::error::RealtimeError;
use common::filter::{Filter, QueryError, VarContext};
use common::normalize::{NormalizeLimits, Normalized, NormalizedQuery, QueryId, normalize_with};
use common::project::{Marks, ProjectRow};
use common::protocol::{self, ErrorCode, SubscribeRequest};
use common::query::{MetaKind, parse_query};
use common::schema::Collection;
use common::value::{Datum, Kind};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest an `init` snapshot (or a meta count) may run.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection keeps for a live subscription.
#[derive(Debug)]
pub struct ActiveSub {
    /// The request, to normalise it again when the connection's identity changes.
    pub request: common::protocol::StoredRequest,
    pub id: QueryId,
    pub key: SubKey,
    /// `,"uid":"…"}`: what this subscriber appends to every shared event body.
    pub suffix: Bytes,
}

/// The connection a subscription belongs to.
pub struct SubCtx {
    pub conn: u64,
    pub sub: u32,
    pub outbox: Arc<Outbox>,
}

/// A subscription ready to go live: the socket task writes `init`, then activates it in the hub.
pub struct Subscribed {
    pub sub: ActiveSub,
    pub init: Vec<u8>,
    pub snapshot: Option<Arc<PgSnapshot>>,
    /// WAL position read after the snapshot: later commits cannot be in it.
    pub until: u64,
}

pub fn suffix_for(uid: &str) -> Bytes {
    let mut out = Vec::with_capacity(uid.len() + 12);
    protocol::write_subscription_suffix(&mut out, Some(uid));
    Bytes::from(out)
}

/// A Directus service error (sent as a `subscribe` error without uid, see `session::subscription_refused`).
fn service_error(code: ErrorCode, message: &str) -> RealtimeError {
    RealtimeError::new(code, message)
}

fn query_error(e: &QueryError) -> RealtimeError {
    e.clone().into()
}

fn unavailable() -> RealtimeError {
    service_error(
        ErrorCode::ServiceUnavailable,
        protocol::MSG_DATABASE_UNAVAILABLE,
    )
}

use common_io::clock::unix_micros as now_micros;

/// How old the schema must be before a subscription naming an unknown field reloads it.
const SCHEMA_MISS_RELOAD: Duration = Duration::from_secs(1);

/// Reload the schema for a field or relation it lacks (at most once per [`SCHEMA_MISS_RELOAD`]).
async fn reload_after_miss(state: &AppState) -> Result<Arc<common::schema::Schema>, RealtimeError> {
    state
        .schema
        .refresh_if_older(&state.pool, &state.config.db_schema, SCHEMA_MISS_RELOAD)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "schema reload failed");
            unavailable()
        })
}

/// Look the collection up, reloading the schema once if it is unknown (a table created since).
async fn find_collection(
    state: &AppState,
    name: &str,
) -> Result<Option<Collection>, RealtimeError> {
    if let Some(c) = state.schema.get().get(name) {
        return Ok(Some(c.clone()));
    }
    let fresh = state
        .schema
        .refresh(&state.pool, &state.config.db_schema)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "schema reload failed");
            unavailable()
        })?;
    Ok(fresh.get(name).cloned())
}

/// The collections `fields` reach through many-to-one relations, with `acct`'s read access in each.
/// A dotted field whose first part is not a known relation reloads the schema once (a relation
/// created since), as an unknown collection does.
async fn related_access(
    state: &AppState,
    acct: &Accountability,
    coll: &Collection,
    fields: &[String],
) -> Result<HashMap<String, (Collection, common::normalize::Access)>, RealtimeError> {
    let mut out = HashMap::new();
    // `*` and bare aliases reach the one-to-many collections (their items' keys are shown).
    let reaches_o2m = !coll.o2m.is_empty()
        && fields
            .iter()
            .any(|f| f == "*" || coll.o2m_target(f).is_some());
    if !reaches_o2m && !fields.iter().any(|f| f.contains('.')) {
        return Ok(out);
    }
    let mut schema = state.schema.get();
    let unknown_root = |schema: &common::schema::Schema| {
        let here = schema.get(&coll.name);
        fields.iter().any(|f| {
            f.split_once('.').is_some_and(|(root, _)| {
                here.is_none_or(|c| c.m2o_target(root).is_none() && c.o2m_target(root).is_none())
            })
        })
    };
    if unknown_root(&schema) {
        schema = reload_after_miss(state).await?;
    }
    let root = schema
        .get(&coll.name)
        .cloned()
        .unwrap_or_else(|| coll.clone());
    let names = common::normalize::related_collections(&root, fields, &|n| schema.get(n).cloned());
    for name in names {
        let Some(c) = schema.get(&name) else { continue };
        let access = state
            .auth
            .read_access(acct, &name)
            .await
            .map_err(|_| unavailable())?;
        out.insert(name, (c.clone(), access));
    }
    Ok(out)
}

/// Validate and normalise a subscription for `acct` (no snapshot, no registration).
async fn prepare(
    state: &AppState,
    acct: &Accountability,
    req: &SubscribeRequest,
) -> Result<(Collection, Normalized), RealtimeError> {
    let collection = req.collection.as_str();
    let forbidden_collection = || query_error(&QueryError::unknown_collection(collection));
    // Directus knows `directus_extensions` (a system collection) and refuses it after the query.
    let extensions = collection == "directus_extensions";
    let coll = if extensions {
        None
    } else {
        find_collection(state, collection)
            .await?
            .filter(|_| !common::schema::is_unsubscribable(collection))
    };
    // Directus refuses a non-admin here, before the query is looked at (with INVALID_COLLECTION).
    if coll.is_none() && !extensions && !acct.admin {
        return Err(forbidden_collection());
    }
    let params =
        parse_query(req.query.as_ref(), &state.config.query).map_err(|e| query_error(&e))?;
    if extensions {
        return Err(service_error(
            ErrorCode::InvalidPayload,
            &protocol::msg_invalid_payload(protocol::REASON_EXTENSIONS_UNSUPPORTED),
        ));
    }
    // An admin's subscription to a missing collection fails in Directus's service, after the query.
    let mut coll = coll.ok_or_else(forbidden_collection)?;
    // A field this collection does not have may be a column added since the schema was read.
    let missing = |c: &Collection| {
        params.fields.iter().any(|f| {
            !f.contains('.') && f != "*" && c.column(f).is_none() && c.o2m_target(f).is_none()
        })
    };
    if missing(&coll) {
        let fresh = reload_after_miss(state).await?;
        if let Some(c) = fresh.get(collection) {
            coll = c.clone();
        }
    }
    let access = state
        .auth
        .read_access(acct, collection)
        .await
        .map_err(|_| unavailable())?;
    // The collections relational fields reach, with the caller's access there.
    let related = related_access(state, acct, &coll, &params.fields).await?;
    let mut refs = Vec::new();
    if let Some(f) = &params.filter {
        refs.extend(common::filter::required_lookups(f));
    }
    let accesses = std::iter::once(&access).chain(related.values().map(|(_, a)| a));
    for access in accesses {
        if let common::normalize::Access::Rules(rules) = access {
            for r in rules {
                if let Some(f) = &r.filter {
                    refs.extend(common::filter::required_lookups(f));
                }
            }
        }
    }
    refs.sort();
    refs.dedup();
    let lookups = if refs.is_empty() {
        Default::default()
    } else {
        state
            .auth
            .variable_lookups(acct, &refs, &state.schema.get())
            .await
            .map_err(|_| unavailable())?
    };
    let vars = VarContext {
        now_micros: now_micros(),
        user: acct.user.clone(),
        role: acct.role.clone(),
        roles: acct.roles.clone(),
        policies: acct.policies.clone(),
        lookups,
    };
    let limits = NormalizeLimits {
        filter: state.config.limits.filter,
    };
    let normalized = normalize_with(
        &coll,
        req.event,
        req.item.as_deref(),
        &params,
        &access,
        &vars,
        limits,
        &related,
    )
    .map_err(|e| query_error(&e))?;
    if req.item.is_some() && matches!(collection, "directus_fields" | "directus_relations") {
        return Err(service_error(
            ErrorCode::InvalidPayload,
            &protocol::msg_invalid_payload(&protocol::reason_item_subscription(collection)),
        ));
    }
    Ok((coll, normalized))
}

/// Normalise again for a new identity (after re-auth or token expiry): the query to move to, or why the
/// subscription is no longer allowed.
pub async fn reauthorize(
    state: &AppState,
    acct: &Accountability,
    req: &SubscribeRequest,
) -> Result<Arc<NormalizedQuery>, RealtimeError> {
    prepare(state, acct, req)
        .await
        .map(|(_, n)| Arc::new(n.query))
}

fn parse_lsn_text(text: &str) -> Result<u64, RealtimeError> {
    common::change::parse_lsn(text).ok_or_else(unavailable)
}

/// Validate, normalise, go live and snapshot. `uid` is `String(uid)` or the generated uid.
pub async fn subscribe(
    state: &AppState,
    acct: &Accountability,
    req: SubscribeRequest,
    uid: &str,
    ctx: SubCtx,
) -> Result<Subscribed, RealtimeError> {
    let (coll, Normalized { query, snapshot }) = prepare(state, acct, &req).await?;
    let id = query.id();
    let key = SubKey {
        conn: ctx.conn,
        sub: ctx.sub,
    };
    let suffix = suffix_for(uid);
    let mut client = state.pool.get().await.map_err(|_| unavailable())?;

    // The position before the snapshot; a new registration replays from a little before it. The
    // *insert* position, like `until` below (see there).
    let before: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|_| unavailable())?
        .get(0);
    let from = parse_lsn_text(&before)?.saturating_sub(state.config.replay_lookback);
    let def: Arc<str> = query.canonical_json().into();
    // Through the rights registry: a rights change applied meanwhile cuts this subscriber too.
    let new_here = state.hub.rights.attach_sub(ctx.conn, id, key, |cut| {
        state.hub.attach_with_cut(
            id,
            def.clone(),
            from,
            key,
            ctx.outbox.clone(),
            suffix.clone(),
            cut,
        )
    });
    if new_here && let Err(e) = state.registrar.register(&state.hub, id, &def, from).await {
        tracing::warn!(error = %e, "registering a query failed");
        detach(state, id, key);
        return Err(service_error(
            ErrorCode::ServiceUnavailable,
            protocol::MSG_REDIS_UNAVAILABLE,
        ));
    }

    let started = std::time::Instant::now();
    let result = async {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|_| unavailable())?;
        let snap_text: String = tx
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(|_| unavailable())?
            .get(0);
        let snap = PgSnapshot::parse(&snap_text).ok_or_else(unavailable)?;
        let init = if req.event.is_some() {
            // With an event filter Directus sends an init without data and runs no query.
            protocol::init_frame(None, None, Some(uid))
        } else {
            let (data, meta) = read_snapshot(state, &tx, &coll, &query, &snapshot).await?;
            protocol::init_frame(Some(&data), meta.as_deref(), Some(uid))
        };
        // Every transaction this snapshot sees inserted its commit record before this point, so a
        // change whose commit LSN is above it is one the snapshot cannot contain. It must be the WAL
        // *insert* position: `pg_current_wal_lsn()` is the write position, which trails commits that
        // did not wait for their WAL (`synchronous_commit = off`, up to the WAL writer's delay), and
        // changes the snapshot already held were delivered again after `init` (issue 11).
        let after: String = tx
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(|_| unavailable())?
            .get(0);
        let until = parse_lsn_text(&after)?;
        let _ = tx.commit().await;
        Ok((init, snap, until))
    }
    .await;
    metrics::histogram!("realtime_snapshot_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok((init, snap, until)) => Ok(Subscribed {
            sub: ActiveSub {
                request: common::protocol::StoredRequest::new(&req),
                id,
                key,
                suffix,
            },
            init,
            snapshot: Some(Arc::new(snap)),
            until,
        }),
        Err(e) => {
            detach(state, id, key);
            Err(e)
        }
    }
}

/// Remove a subscriber from the hub; unregister the query in the background if it was the last one here.
/// A subscriber whose move to `id` still waits is detached from the query it is still on.
pub fn detach(state: &AppState, id: QueryId, key: SubKey) {
    if let Some(old) = state.hub.rights.cancel_move(key.conn, key, id) {
        detach(state, old, key);
        return;
    }
    state.hub.rights.detach_sub(key.conn, id, key);
    if state.hub.detach(id, key) {
        let registrar = state.registrar.clone();
        let hub = state.hub.clone();
        tokio::spawn(async move {
            if let Err(e) = registrar.unregister(&hub, id).await {
                tracing::debug!(error = %e, "unregister failed; the worker drops it when this gateway's registrations expire");
            }
        });
    }
}

/// A snapshot row as the projection reads it (the same projection every event goes through): its columns
/// by name, values parsed only when a visibility condition looks at them.
struct SnapshotRow<'a> {
    row: &'a tokio_postgres::Row,
    /// Result column index and kind, by name.
    columns: &'a HashMap<&'a str, (usize, &'a Kind)>,
    parsed: Vec<OnceCell<Datum>>,
}

impl SnapshotRow<'_> {
    /// The datum of column `name`; NULL for a missing column or a value that does not parse (as for
    /// events).
    fn datum(&self, name: &str) -> &Datum {
        static NULL: Datum = Datum::Null;
        let Some(&(i, kind)) = self.columns.get(name) else {
            return &NULL;
        };
        self.parsed[i].get_or_init(|| {
            self.row
                .get::<_, Option<&str>>(i)
                .and_then(|t| common::value::parse_datum(kind, t).ok())
                .unwrap_or(Datum::Null)
        })
    }
}

impl ProjectRow for SnapshotRow<'_> {
    fn cell(&self, field: &str) -> Option<(&Kind, Option<&str>)> {
        let &(i, kind) = self.columns.get(field)?;
        Some((kind, self.row.get(i)))
    }

    fn holds(&self, when: &Filter) -> bool {
        when.matches(&|name: &str| Some(self.datum(name)))
    }
}

/// Run the snapshot query and encode `data` (and `meta`) as Directus would.
async fn read_snapshot(
    state: &AppState,
    client: &tokio_postgres::Transaction<'_>,
    coll: &Collection,
    query: &NormalizedQuery,
    spec: &common::normalize::SnapshotSpec,
) -> Result<(Vec<u8>, Option<Vec<u8>>), RealtimeError> {
    let cap = state.config.limits.init_max_rows;
    let mut spec = spec.clone();
    let unlimited = spec.limit.is_none_or(|l| l > cap);
    if unlimited {
        // One row past the cap tells us the snapshot is too large.
        spec.limit = Some(cap + 1);
    }
    let sql = common::sql::snapshot(coll, query, &spec);
    let params = crate::db::params(&sql);
    let rows = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.query(&sql.text, &params))
        .await
        .map_err(|_| {
            service_error(
                ErrorCode::ServiceUnavailable,
                protocol::MSG_SNAPSHOT_TIMEOUT,
            )
        })?
        .map_err(|e| {
            tracing::warn!(error = %e, collection = %coll.name, "snapshot query failed");
            // A value the filter validation let through but PostgreSQL refused (e.g. out of range).
            query_error(&QueryError::invalid("The database rejected a filter value"))
        })?;
    if unlimited && rows.len() as i64 > cap {
        return Err(query_error(&QueryError::invalid(format!(
            "The initial data exceeds {cap} items; add a \"limit\" or a narrower \"filter\""
        ))));
    }
    let names: Vec<&str> = common::project::read_columns(&query.fields);
    let columns: HashMap<&str, (usize, &Kind)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((*n, (i, &coll.column(n)?.kind))))
        .collect();
    // Related items are marked while the rows are encoded, then read (in this snapshot) and spliced in.
    let mut marks = query.is_relational().then(Marks::new);
    let mut encode_row = |out: &mut Vec<u8>, row: &tokio_postgres::Row| {
        let view = SnapshotRow {
            row,
            columns: &columns,
            parsed: (0..names.len()).map(|_| OnceCell::new()).collect(),
        };
        match marks.as_mut() {
            Some(m) => common::project::write_object_marked(out, &query.fields, &view, m),
            None => common::project::write_object(out, &query.fields, &view),
        }
    };
    let mut data = Vec::with_capacity(64 + rows.len() * 64);
    if query.item.is_some() {
        match rows.first() {
            Some(row) => encode_row(&mut data, row),
            // readOne on an item that is missing or not visible is FORBIDDEN.
            None => return Err(service_error(ErrorCode::Forbidden, protocol::MSG_FORBIDDEN)),
        }
    } else {
        data.push(b'[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            encode_row(&mut data, row);
        }
        data.push(b']');
    }
    if let Some(mut marks) = marks {
        read_related(client, query, &mut marks).await?;
        data = marks.splice(&data);
    }
    let meta = if spec.meta.is_empty() {
        None
    } else {
        let mut out = b"{".to_vec();
        for (i, kind) in spec.meta.iter().enumerate() {
            let (key, filter) = match kind {
                MetaKind::TotalCount => ("total_count", &spec.permission_filter),
                MetaKind::FilterCount => ("filter_count", &query.filter),
            };
            let sql = common::sql::count(coll, filter);
            let params = crate::db::params(&sql);
            let row = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.query_one(&sql.text, &params))
                .await
                .map_err(|_| unavailable())?
                .map_err(|_| unavailable())?;
            let n: String = row.get(0);
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"{key}\":{n}").as_bytes());
        }
        out.push(b'}');
        Some(out)
    };
    Ok((data, meta))
}

/// Read the related items `marks` asks for, level by level (one statement per relation per level),
/// in the snapshot's transaction.
async fn read_related(
    client: &tokio_postgres::Transaction<'_>,
    query: &NormalizedQuery,
    marks: &mut Marks,
) -> Result<(), RealtimeError> {
    loop {
        let wanted = marks.wanted();
        if wanted.is_empty() {
            return Ok(());
        }
        for (rel, keys) in wanted {
            let Some(related) = query.relations.get(rel as usize) else {
                continue;
            };
            let sql = common::sql::related(related, &keys);
            let params = crate::db::params(&sql);
            let rows = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.query(&sql.text, &params))
                .await
                .map_err(|_| service_error(ErrorCode::ServiceUnavailable, protocol::MSG_SNAPSHOT_TIMEOUT))?
                .map_err(|e| {
                    tracing::warn!(error = %e, collection = %related.collection, "related read failed");
                    unavailable()
                })?;
            for row in &rows {
                let cells: Vec<Option<String>> = (0..row.len())
                    .map(|i| row.get::<_, Option<String>>(i))
                    .collect();
                marks.found(rel, related, &cells);
            }
        }
    }
}
