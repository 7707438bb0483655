//! Turning a `subscribe` message into a live subscription and its `init` frame.
//!
//! Order of checks follows Directus's subscribe handler: unknown collection (INVALID_COLLECTION for
//! non-admins, FORBIDDEN for admins), the query sanitiser (INVALID_QUERY), permissions (FORBIDDEN), then the
//! snapshot. Errors from the "service" layer carry no uid, as in Directus.

use crate::auth::Accountability;
use crate::state::AppState;
use common::filter::{QueryError, VarContext};
use common::normalize::{NormalizeLimits, Normalized, NormalizedQuery, QueryId, normalize};
use common::protocol::{self, ErrorCode, SubscribeRequest, error_frame};
use common::query::{MetaKind, parse_query};
use common::schema::Collection;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest an `init` snapshot (or a meta count) may run.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection keeps for a live subscription.
#[derive(Debug)]
pub struct ActiveSub {
    pub request: SubscribeRequest,
    pub query: Arc<NormalizedQuery>,
    pub id: QueryId,
}

fn service_error(code: ErrorCode, message: &str) -> Vec<u8> {
    error_frame("subscribe", code, message, None)
}

fn query_error(e: &QueryError) -> Vec<u8> {
    service_error(e.code(), &e.to_string())
}

fn unavailable() -> Vec<u8> {
    service_error(
        ErrorCode::ServiceUnavailable,
        "Service unavailable: the database did not answer. Retry shortly.",
    )
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Look the collection up, reloading the schema once if it is unknown (a table created since).
async fn find_collection(state: &AppState, name: &str) -> Result<Option<Collection>, Vec<u8>> {
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

/// Validate, normalise and snapshot. `uid` is `String(uid)` or the generated uid.
pub async fn subscribe(
    state: &AppState,
    acct: &Accountability,
    req: SubscribeRequest,
    uid: &str,
) -> Result<(ActiveSub, Vec<u8>), Vec<u8>> {
    let collection = req.collection.as_str();
    if collection == "directus_extensions" {
        return Err(service_error(
            ErrorCode::InvalidPayload,
            "Invalid payload. \"directus_extensions\" is currently not supported.",
        ));
    }
    let coll = match find_collection(state, collection).await? {
        Some(c) if !common::schema::is_unsubscribable(collection) => c,
        _ if !acct.admin => {
            return Err(error_frame(
                "subscribe",
                ErrorCode::InvalidCollection,
                protocol::MSG_INVALID_COLLECTION,
                req.uid.as_ref(),
            ));
        }
        _ => return Err(query_error(&QueryError::unknown_collection(collection))),
    };
    if req.item.is_some() && matches!(collection, "directus_fields" | "directus_relations") {
        return Err(service_error(
            ErrorCode::InvalidPayload,
            &format!(
                "Invalid payload. Cannot subscribe to a specific item in the {collection} collection."
            ),
        ));
    }
    let params =
        parse_query(req.query.as_ref(), &state.config.query).map_err(|e| query_error(&e))?;
    let access = state
        .auth
        .read_access(acct, collection)
        .await
        .map_err(|_| unavailable())?;

    let mut refs = Vec::new();
    if let Some(f) = &params.filter {
        refs.extend(common::filter::required_lookups(f));
    }
    if let common::normalize::Access::Rules(rules) = &access {
        for r in rules {
            if let Some(f) = &r.filter {
                refs.extend(common::filter::required_lookups(f));
            }
        }
    }
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
    let Normalized { query, snapshot } = normalize(
        &coll,
        req.event,
        req.item.as_deref(),
        &params,
        &access,
        &vars,
        limits,
    )
    .map_err(|e| query_error(&e))?;

    let init = if req.event.is_some() {
        // With an event filter Directus sends an init without data and runs no query.
        protocol::init_frame(None, None, Some(uid))
    } else {
        let (data, meta) = read_snapshot(state, &coll, &query, &snapshot).await?;
        protocol::init_frame(Some(&data), meta.as_deref(), Some(uid))
    };
    let id = query.id();
    Ok((
        ActiveSub {
            request: req,
            query: Arc::new(query),
            id,
        },
        init,
    ))
}

/// Run the snapshot query and encode `data` (and `meta`) as Directus would.
async fn read_snapshot(
    state: &AppState,
    coll: &Collection,
    query: &NormalizedQuery,
    spec: &common::normalize::SnapshotSpec,
) -> Result<(Vec<u8>, Option<Vec<u8>>), Vec<u8>> {
    let cap = state.config.limits.init_max_rows;
    let mut spec = spec.clone();
    let unlimited = spec.limit.is_none_or(|l| l > cap);
    if unlimited {
        // One row past the cap tells us the snapshot is too large.
        spec.limit = Some(cap + 1);
    }
    let sql = common::sql::snapshot(coll, query, &spec);
    let client = state.pool.get().await.map_err(|_| unavailable())?;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = sql
        .params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.query(&sql.text, &params))
        .await
        .map_err(|_| {
            service_error(
                ErrorCode::ServiceUnavailable,
                "Service unavailable: the snapshot query timed out.",
            )
        })?
        .map_err(|e| {
            tracing::warn!(error = %e, collection = %coll.name, "snapshot query failed");
            // A value the filter validation let through but PostgreSQL refused (e.g. out of range).
            service_error(
                ErrorCode::InvalidQuery,
                "Invalid query. The database rejected a filter value.",
            )
        })?;
    if unlimited && rows.len() as i64 > cap {
        return Err(service_error(
            ErrorCode::InvalidQuery,
            &format!(
                "Invalid query. The initial data exceeds {cap} items; add a \"limit\" or a narrower \"filter\"."
            ),
        ));
    }
    let columns: Vec<&common::schema::Column> = query
        .fields
        .iter()
        .map(|p| coll.column(&p.field).expect("normalised fields exist"))
        .collect();
    let encode_row = |out: &mut Vec<u8>, row: &tokio_postgres::Row| {
        out.push(b'{');
        for (i, col) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            common::value::write_json_string(out, &col.name);
            out.push(b':');
            let text: Option<&str> = row.get(i);
            common::value::write_json_value(out, &col.kind, col.special, text);
        }
        out.push(b'}');
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
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = sql
                .params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
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
