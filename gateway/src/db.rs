//! PostgreSQL access: the connection pool, standalone bootstrap of the Directus system tables, and loading
//! the schema from the catalog.
//!
//! Every pooled connection runs with `DateStyle=ISO, TimeZone=UTC`: the snapshot reader selects columns as
//! text and [`common::value`] parses exactly that format.

use common::schema::{Collection, Column, Schema};
use common::value::{Kind, Special};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// Session settings every connection needs (see module docs).
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=1";

/// How long a request waits for a pooled connection before it fails with SERVICE_UNAVAILABLE.
const POOL_WAIT: Duration = Duration::from_secs(10);

pub fn pool(url: &str, size: usize, app_name: &str) -> anyhow::Result<Pool> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.options(SESSION_OPTIONS);
    cfg.application_name(app_name);
    cfg.connect_timeout(Duration::from_secs(10));
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// The id Directus gives its public policy (migration 20240806A).
pub const PUBLIC_POLICY_ID: &str = "abf8a154-5b1c-4a46-ac9c-7300570f4f17";

/// Advisory lock key serialising concurrent bootstraps from several gateways.
const BOOTSTRAP_LOCK: i64 = 0x7274_626f_6f74; // "rtboot"

/// What [`bootstrap`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The Directus system tables already existed (a Directus database): nothing was changed.
    Existing,
    /// Standalone mode: system tables and an admin were created. `generated_password` is set when
    /// `ADMIN_PASSWORD` was not given.
    Created {
        admin_email: String,
        generated_password: Option<String>,
    },
}

/// DDL for the Directus v11 system tables this server needs, column for column as Directus creates them,
/// so Directus can later adopt the database.
const SYSTEM_DDL: &str = r#"
CREATE TABLE directus_roles (
    id uuid PRIMARY KEY,
    name varchar(100) NOT NULL,
    icon varchar(64) NOT NULL DEFAULT 'supervised_user_circle',
    description text,
    parent uuid REFERENCES directus_roles(id)
);
CREATE TABLE directus_policies (
    id uuid PRIMARY KEY,
    name varchar(100) NOT NULL,
    icon varchar(64) NOT NULL DEFAULT 'badge',
    description text,
    ip_access text,
    enforce_tfa boolean NOT NULL DEFAULT false,
    admin_access boolean NOT NULL DEFAULT false,
    app_access boolean NOT NULL DEFAULT false
);
CREATE TABLE directus_users (
    id uuid PRIMARY KEY,
    first_name varchar(50),
    last_name varchar(50),
    email varchar(128) UNIQUE,
    password varchar(255),
    location varchar(255),
    title varchar(50),
    description text,
    tags json,
    avatar uuid,
    language varchar(255) DEFAULT NULL,
    tfa_secret varchar(255),
    status varchar(16) NOT NULL DEFAULT 'active',
    role uuid REFERENCES directus_roles(id) ON DELETE SET NULL,
    token varchar(255) UNIQUE,
    last_access timestamptz,
    last_page varchar(255),
    provider varchar(128) NOT NULL DEFAULT 'default',
    external_identifier varchar(255) UNIQUE,
    auth_data json,
    email_notifications boolean DEFAULT true,
    appearance varchar(255),
    theme_dark varchar(255),
    theme_light varchar(255),
    theme_light_overrides json,
    theme_dark_overrides json,
    text_direction varchar(255) NOT NULL DEFAULT 'auto'
);
CREATE TABLE directus_access (
    id uuid PRIMARY KEY,
    role uuid REFERENCES directus_roles(id) ON DELETE CASCADE,
    "user" uuid REFERENCES directus_users(id) ON DELETE CASCADE,
    policy uuid NOT NULL REFERENCES directus_policies(id) ON DELETE CASCADE,
    sort integer
);
CREATE TABLE directus_permissions (
    id serial PRIMARY KEY,
    collection varchar(64) NOT NULL,
    action varchar(10) NOT NULL,
    permissions json,
    validation json,
    presets json,
    fields text,
    policy uuid NOT NULL REFERENCES directus_policies(id) ON DELETE CASCADE
);
CREATE TABLE directus_sessions (
    token varchar(64) PRIMARY KEY,
    "user" uuid REFERENCES directus_users(id) ON DELETE CASCADE,
    expires timestamptz NOT NULL,
    ip varchar(255),
    user_agent text,
    share uuid,
    origin varchar(255),
    next_token varchar(64)
);
CREATE TABLE directus_notifications (
    id serial PRIMARY KEY,
    timestamp timestamptz DEFAULT CURRENT_TIMESTAMP,
    status varchar(255) DEFAULT 'inbox',
    recipient uuid NOT NULL REFERENCES directus_users(id) ON DELETE CASCADE,
    sender uuid REFERENCES directus_users(id),
    subject varchar(255) NOT NULL,
    message text,
    collection varchar(64),
    item varchar(255)
);
CREATE TABLE directus_activity (
    id serial PRIMARY KEY,
    action varchar(45) NOT NULL,
    "user" uuid,
    timestamp timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ip varchar(50),
    user_agent text,
    collection varchar(64) NOT NULL,
    item varchar(255) NOT NULL,
    origin varchar(255)
);
"#;

/// Standalone mode: when `directus_users` does not exist in `schema`, create the system tables, the public
/// policy and an administrator. With existing tables (a Directus database) change nothing.
pub async fn bootstrap(
    pool: &Pool,
    schema: &str,
    admin_email: Option<&str>,
    admin_password: Option<&str>,
    admin_token: Option<&str>,
) -> anyhow::Result<Bootstrap> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
        .await?;
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO {}",
        common::sql::ident(schema)
    ))
    .await?;
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass(format('%I.directus_users', $1::text)) IS NOT NULL",
            &[&schema],
        )
        .await?
        .get(0);
    if exists {
        return Ok(Bootstrap::Existing);
    }
    tx.batch_execute(SYSTEM_DDL).await?;
    tx.execute(
        "INSERT INTO directus_policies (id, name, icon, description, app_access) VALUES ($1::text::uuid, '$t:public_label', 'public', '$t:public_description', false)",
        &[&PUBLIC_POLICY_ID],
    )
    .await?;
    tx.execute(
        "INSERT INTO directus_access (id, role, \"user\", policy, sort) VALUES ($1::text::uuid, NULL, NULL, $2::text::uuid, 1)",
        &[&uuid::Uuid::new_v4().to_string(), &PUBLIC_POLICY_ID],
    )
    .await?;
    let role = uuid::Uuid::new_v4().to_string();
    let policy = uuid::Uuid::new_v4().to_string();
    tx.execute(
        "INSERT INTO directus_roles (id, name, icon, description) VALUES ($1::text::uuid, 'Administrator', 'verified', '$t:admin_description')",
        &[&role],
    )
    .await?;
    tx.execute(
        "INSERT INTO directus_policies (id, name, icon, description, admin_access, app_access) VALUES ($1::text::uuid, 'Administrator', 'verified', '$t:admin_description', true, true)",
        &[&policy],
    )
    .await?;
    tx.execute(
        "INSERT INTO directus_access (id, role, \"user\", policy) VALUES ($1::text::uuid, $2::text::uuid, NULL, $3::text::uuid)",
        &[&uuid::Uuid::new_v4().to_string(), &role, &policy],
    )
    .await?;
    let email = admin_email.unwrap_or("admin@example.com").to_owned();
    let (password, generated) = match admin_password {
        Some(p) => (p.to_owned(), None),
        None => {
            let p = crate::auth::random_token(12);
            (p.clone(), Some(p))
        }
    };
    let hash = crate::auth::hash_password(password).await?;
    tx.execute(
        "INSERT INTO directus_users (id, first_name, last_name, email, password, status, role, token) VALUES ($1::text::uuid, 'Admin', 'User', $2, $3, 'active', $4::text::uuid, $5)",
        &[&uuid::Uuid::new_v4().to_string(), &email, &hash, &role, &admin_token],
    )
    .await?;
    tx.commit().await?;
    Ok(Bootstrap::Created {
        admin_email: email,
        generated_password: generated,
    })
}

/// Fields of system collections whose values Directus never returns (`conceal`).
fn system_special(collection: &str, field: &str) -> Special {
    let conceal = matches!(
        (collection, field),
        ("directus_users", "password" | "token" | "tfa_secret")
            | ("directus_sessions", "token" | "next_token")
    );
    Special {
        conceal,
        ..Special::default()
    }
}

/// A statement's text parameters as `tokio_postgres` takes them.
pub fn params(sql: &common::sql::Sql) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    sql.params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Read the tables of `schema` (with a single-column primary key) from the catalog, with Directus's field
/// specials and collection sort fields where the Directus tables exist.
pub async fn load_schema(pool: &Pool, schema: &str) -> anyhow::Result<Schema> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text,
                    CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END::text,
                    CASE WHEN t.typtype = 'd' THEN bt.typtype ELSE t.typtype END::text
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .await?;
    let pks = client
        .query(
            "SELECT c.relname::text, a.attname::text
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
             WHERE i.indisprimary AND i.indnatts = 1 AND n.nspname = $1",
            &[&schema],
        )
        .await?;
    let pk: HashMap<String, String> = pks.iter().map(|r| (r.get(0), r.get(1))).collect();

    let has = |name: &str| rows.iter().any(|r| r.get::<_, String>(0) == name);
    let mut specials: HashMap<(String, String), Special> = HashMap::new();
    if has("directus_fields") {
        for r in client
            .query(
                &format!("SELECT collection::text, field::text, special::text FROM {}.directus_fields WHERE special IS NOT NULL", common::sql::ident(schema)),
                &[],
            )
            .await?
        {
            specials.insert((r.get(0), r.get(1)), Special::from_csv(r.get::<_, &str>(2)));
        }
    }
    let mut sort_fields: HashMap<String, String> = HashMap::new();
    if has("directus_collections") {
        for r in client
            .query(
                &format!("SELECT collection::text, sort_field::text FROM {}.directus_collections WHERE sort_field IS NOT NULL", common::sql::ident(schema)),
                &[],
            )
            .await?
        {
            sort_fields.insert(r.get(0), r.get(1));
        }
    }

    let mut columns: Vec<(String, Vec<Column>)> = Vec::new();
    for r in &rows {
        let table: String = r.get(0);
        let name: String = r.get(1);
        let typname: String = r.get(2);
        let typtype: String = r.get(3);
        let kind = Kind::from_catalog(&typname, &typtype);
        let mut special = specials
            .get(&(table.clone(), name.clone()))
            .copied()
            .unwrap_or_default();
        let sys = system_special(&table, &name);
        special.conceal |= sys.conceal;
        if columns.last().map(|(t, _)| t != &table).unwrap_or(true) {
            columns.push((table.clone(), Vec::new()));
        }
        columns.last_mut().expect("pushed").1.push(Column {
            name,
            kind,
            special,
        });
    }
    // Many-to-one relations: single-column foreign keys onto a table's primary key, then Directus's
    // own `directus_relations` rows (which also describe relations without a constraint) over them.
    let mut m2o: HashMap<String, std::collections::BTreeMap<String, String>> = HashMap::new();
    for r in client
        .query(
            "SELECT c.relname::text, a.attname::text, fc.relname::text
             FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_class fc ON fc.oid = k.confrelid
             JOIN pg_namespace fn ON fn.oid = fc.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1]
             WHERE k.contype = 'f' AND array_length(k.conkey, 1) = 1 AND n.nspname = $1 AND fn.nspname = $1",
            &[&schema],
        )
        .await?
    {
        m2o.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
    }
    let mut o2m: HashMap<String, std::collections::BTreeMap<String, common::schema::O2m>> =
        HashMap::new();
    if has("directus_relations") {
        for r in client
            .query(
                &format!("SELECT many_collection::text, many_field::text, one_collection::text, one_field::text, sort_field::text FROM {}.directus_relations WHERE one_collection IS NOT NULL", common::sql::ident(schema)),
                &[],
            )
            .await?
        {
            let (many, field, one): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            if let Some(alias) = r.get::<_, Option<String>>(3) {
                o2m.entry(one.clone()).or_default().insert(
                    alias,
                    common::schema::O2m {
                        collection: many.clone(),
                        foreign_key: field.clone(),
                        sort_field: r.get(4),
                    },
                );
            }
            m2o.entry(many).or_default().insert(field, one);
        }
    }
    // Directus's own relations between system collections live in its code, not in the database.
    for (many, field, one) in common::schema::SYSTEM_M2O {
        m2o.entry((*many).to_owned())
            .or_default()
            .entry((*field).to_owned())
            .or_insert_with(|| (*one).to_owned());
    }
    let column_of = |table: &str, name: &str| {
        rows.iter()
            .any(|r| r.get::<_, String>(0) == table && r.get::<_, String>(1) == name)
    };
    let collections = columns.into_iter().filter_map(|(table, cols)| {
        let key = pk.get(&table)?;
        let mut c = Collection::new(&table, schema, key, cols);
        c.sort_field = sort_fields.get(&table).cloned();
        if let Some(aliases) = o2m.remove(&table) {
            // An alias that is not a column here, onto a column of a table with a primary key.
            c.o2m = aliases
                .into_iter()
                .filter(|(alias, r)| {
                    c.column(alias).is_none()
                        && pk.contains_key(&r.collection)
                        && column_of(&r.collection, &r.foreign_key)
                })
                .collect();
        }
        if let Some(rels) = m2o.remove(&table) {
            // Only relations of a column this table has, onto a table with a primary key.
            c.m2o = rels
                .into_iter()
                .filter(|(field, target)| c.column(field).is_some() && pk.contains_key(target))
                .collect();
        }
        Some(c)
    });
    Ok(Schema::new(collections))
}

/// The current schema, reloaded on demand (a subscribe names an unknown collection). Concurrent misses
/// share one reload: a caller only reloads if no reload finished after it asked.
pub struct SchemaCache {
    current: RwLock<Arc<Schema>>,
    loaded_at: Mutex<Instant>,
    reload: tokio::sync::Mutex<()>,
}

impl SchemaCache {
    pub fn new(schema: Schema) -> SchemaCache {
        SchemaCache {
            current: RwLock::new(Arc::new(schema)),
            loaded_at: Mutex::new(Instant::now()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Arc<Schema> {
        self.current.read().clone()
    }

    /// [`SchemaCache::refresh`], unless the schema was loaded less than `min_age` ago: for misses a
    /// client can repeat at will (a field that does not exist), so they cannot keep the catalog busy.
    pub async fn refresh_if_older(
        &self,
        pool: &Pool,
        schema: &str,
        min_age: Duration,
    ) -> anyhow::Result<Arc<Schema>> {
        if self.loaded_at.lock().elapsed() < min_age {
            return Ok(self.get());
        }
        self.refresh(pool, schema).await
    }

    pub async fn refresh(&self, pool: &Pool, schema: &str) -> anyhow::Result<Arc<Schema>> {
        let asked = Instant::now();
        let _guard = self.reload.lock().await;
        if *self.loaded_at.lock() >= asked {
            return Ok(self.get());
        }
        let started = Instant::now();
        let fresh = Arc::new(load_schema(pool, schema).await?);
        *self.current.write() = fresh.clone();
        *self.loaded_at.lock() = started;
        Ok(fresh)
    }
}
