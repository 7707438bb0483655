//! Gateway configuration from environment variables.
//!
//! Directus's variable names wherever Directus has one (an existing Directus `.env` works); our own
//! settings use the `REALTIME_` prefix. [`Config::from_vars`] takes a map rather than reading the process
//! environment, so tests pass exactly what they mean; it validates everything at once and reports every
//! invalid variable by name. The README's configuration table documents each one.

use common::env::{ConfigError, EnvReader};
use common::filter::Limits as FilterLimits;
use common::query::QueryConfig;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Public,
    Handshake,
    Strict,
}

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub enabled: bool,
    pub rest_enabled: bool,
    pub rest_path: String,
    pub rest_auth: AuthMode,
    pub rest_auth_timeout: Duration,
    pub rest_conn_limit: Option<usize>,
    pub graphql_enabled: bool,
    pub graphql_path: String,
    pub graphql_auth: AuthMode,
    pub graphql_auth_timeout: Duration,
    pub graphql_conn_limit: Option<usize>,
    pub heartbeat_enabled: bool,
    pub heartbeat_period: Duration,
}

/// Per-connection and per-query bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest inbound message (after reassembly); larger closes the socket with 1009.
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    pub filter: FilterLimits,
    /// Bytes queued for one connection before it is closed as a slow consumer (close code 4008).
    pub send_buffer_bytes: usize,
    /// Largest `init` snapshot, in rows, when the query asks for everything (`limit: -1`).
    pub init_max_rows: i64,
}

#[derive(Debug, Clone)]
pub struct RateLimit {
    pub points: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub public_url: Option<String>,
    /// JWT signing secret. Generated per process (with a warning) when unset, as Directus does.
    pub secret: String,
    pub secret_generated: bool,
    /// libpq-style connection string or URL built from `DB_*`.
    pub db_url: String,
    pub db_schema: String,
    pub db_pool_size: usize,
    pub redis: common_io::redis::RedisSettings,
    pub redis_prefix: String,
    /// Readable part of this gateway's id in Redis and logs (`REALTIME_GATEWAY_ID`, else `$HOSTNAME`).
    pub gateway_name: String,
    /// Virtual shards queries are spread over (must match the workers').
    pub shards: u32,
    /// How far before the LSN read ahead of a snapshot a new registration's replay starts (covers
    /// transactions whose commit record was written just before the snapshot but were not yet visible).
    pub replay_lookback: u64,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub session_cookie_ttl: Duration,
    pub session_cookie_name: String,
    pub refresh_token_cookie_name: String,
    pub login_stall: Duration,
    pub admin_email: Option<String>,
    pub admin_password: Option<String>,
    pub admin_token: Option<String>,
    pub ws: WsConfig,
    pub query: QueryConfig,
    pub limits: Limits,
    pub rate_limit: Option<RateLimit>,
    pub telemetry: common_io::telemetry::TelemetrySettings,
    /// Separate listener for `/metrics`, `/healthz` and `/readyz` (`REALTIME_ADMIN_PORT`); when unset
    /// they are served on the main port.
    pub admin_port: Option<u16>,
    pub drain: DrainConfig,
}

/// Staged shutdown on SIGTERM (see `server::Gateway::run`).
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Readiness is false but the gateway keeps serving and accepting, so load balancers stop sending
    /// new clients before it stops listening.
    pub delay: Duration,
    /// Connections are closed with 1012 at random moments over this window, so their clients do not
    /// all reconnect at once.
    pub spread: Duration,
    /// Hard stop, counted from the signal.
    pub timeout: Duration,
}

fn auth_mode(r: &mut EnvReader, name: &str, default: AuthMode) -> AuthMode {
    match r.raw(name).map(str::to_ascii_lowercase).as_deref() {
        None => default,
        Some("public") => AuthMode::Public,
        Some("handshake") => AuthMode::Handshake,
        Some("strict") => AuthMode::Strict,
        Some(other) => {
            let other = other.to_owned();
            r.err(
                name,
                format!("expected public, handshake or strict, got {other:?}"),
            );
            default
        }
    }
}

impl Config {
    /// The part of the configuration authentication reads.
    pub fn auth_settings(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            secret: self.secret.clone(),
            access_ttl: self.access_token_ttl,
            refresh_ttl: self.refresh_token_ttl,
            stall: self.login_stall,
        }
    }
}

impl Config {
    /// Read the process environment.
    pub fn from_env() -> Result<Config, Vec<ConfigError>> {
        Config::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, Vec<ConfigError>> {
        let mut r = EnvReader::new(vars);

        let host = r.string("HOST", "0.0.0.0");
        let port = r.number::<u16>("PORT", 8055, 0);
        let public_url = r.opt("PUBLIC_URL");
        let (secret, secret_generated) = match r.opt("SECRET") {
            Some(s) => (s, false),
            None => (crate::auth::random_token(32), true),
        };

        let db_url = common::env::db_url(&mut r);
        if db_url.parse::<tokio_postgres::Config>().is_err() {
            let var = if vars.contains_key("DB_CONNECTION_STRING") {
                "DB_CONNECTION_STRING"
            } else {
                "DB_HOST"
            };
            r.err(var, "does not form a valid PostgreSQL connection string");
        }
        let db_schema = r.string("DB_SEARCH_PATH", "public");
        let db_pool_size = r.number::<usize>("REALTIME_DB_POOL_SIZE", 16, 1);

        let redis = common_io::redis::RedisSettings::from_env(
            &mut r,
            "gateways receive changes from the workers through Redis",
        );
        let redis_prefix = r.string("REALTIME_REDIS_PREFIX", "rt");
        let gateway_name = r
            .opt("REALTIME_GATEWAY_ID")
            .or_else(|| r.opt("HOSTNAME"))
            .unwrap_or_else(|| "gw".into());
        if !gateway_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            r.err(
                "REALTIME_GATEWAY_ID",
                "may contain only letters, digits, '-', '_' and '.'",
            );
        }
        let shards = r.number::<u32>("REALTIME_SHARDS", common::shard::DEFAULT_SHARDS, 1);
        let replay_lookback = r.number::<u64>("REALTIME_REPLAY_LOOKBACK_BYTES", 16 << 20, 0);

        let access_token_ttl = r.ms_duration("ACCESS_TOKEN_TTL", "15m");
        let refresh_token_ttl = r.ms_duration("REFRESH_TOKEN_TTL", "7d");
        let session_cookie_ttl = r.ms_duration("SESSION_COOKIE_TTL", "1d");
        let session_cookie_name = r.string("SESSION_COOKIE_NAME", "directus_session_token");
        let refresh_token_cookie_name =
            r.string("REFRESH_TOKEN_COOKIE_NAME", "directus_refresh_token");
        let login_stall = Duration::from_millis(r.number::<u64>("LOGIN_STALL_TIME", 500, 0));
        let admin_email = r.opt("ADMIN_EMAIL");
        if let Some(e) = &admin_email
            && !common::protocol::is_valid_email(e)
        {
            r.err("ADMIN_EMAIL", "is not a valid email address");
        }
        let admin_password = r.opt("ADMIN_PASSWORD");
        let admin_token = r.opt("ADMIN_TOKEN");

        let ws = WsConfig {
            enabled: r.bool("WEBSOCKETS_ENABLED", true),
            rest_enabled: r.bool("WEBSOCKETS_REST_ENABLED", true),
            rest_path: r.path("WEBSOCKETS_REST_PATH", "/websocket"),
            rest_auth: auth_mode(&mut r, "WEBSOCKETS_REST_AUTH", AuthMode::Handshake),
            rest_auth_timeout: r.seconds("WEBSOCKETS_REST_AUTH_TIMEOUT", 10),
            rest_conn_limit: r
                .opt_number("WEBSOCKETS_REST_CONN_LIMIT", 0)
                .map(|n| n as usize),
            graphql_enabled: r.bool("WEBSOCKETS_GRAPHQL_ENABLED", true),
            graphql_path: r.path("WEBSOCKETS_GRAPHQL_PATH", "/graphql"),
            graphql_auth: auth_mode(&mut r, "WEBSOCKETS_GRAPHQL_AUTH", AuthMode::Handshake),
            graphql_auth_timeout: r.seconds("WEBSOCKETS_GRAPHQL_AUTH_TIMEOUT", 10),
            graphql_conn_limit: r
                .opt_number("WEBSOCKETS_GRAPHQL_CONN_LIMIT", 0)
                .map(|n| n as usize),
            heartbeat_enabled: r.bool("WEBSOCKETS_HEARTBEAT_ENABLED", true),
            heartbeat_period: r.seconds("WEBSOCKETS_HEARTBEAT_PERIOD", 30),
        };
        // Accepted for .env compatibility; the admin log stream is served by Directus itself.
        r.bool("WEBSOCKETS_LOGS_ENABLED", true);
        r.path("WEBSOCKETS_LOGS_PATH", "/websocket/logs");
        r.opt_number("WEBSOCKETS_LOGS_CONN_LIMIT", 0);
        if ws.rest_path == ws.graphql_path {
            r.err(
                "WEBSOCKETS_GRAPHQL_PATH",
                "must differ from WEBSOCKETS_REST_PATH",
            );
        }

        let query = QueryConfig {
            limit_default: r.number::<i64>("QUERY_LIMIT_DEFAULT", 100, 0),
            limit_max: r.opt_number("QUERY_LIMIT_MAX", -1).filter(|&m| m >= 0),
            max_relational_depth: r.number::<usize>("MAX_RELATIONAL_DEPTH", 10, 2),
        };
        let limits = Limits {
            max_message_bytes: r.number::<usize>("REALTIME_MAX_MESSAGE_BYTES", 1 << 20, 1024),
            max_subscriptions_per_connection: r.number::<usize>(
                "REALTIME_MAX_SUBSCRIPTIONS_PER_CONNECTION",
                1000,
                1,
            ),
            filter: FilterLimits {
                max_depth: r.number::<usize>("REALTIME_MAX_FILTER_DEPTH", 16, 1),
                max_nodes: r.number::<usize>("REALTIME_MAX_FILTER_NODES", 1000, 1),
            },
            send_buffer_bytes: r.number::<usize>("REALTIME_SEND_BUFFER_BYTES", 8 << 20, 64 * 1024),
            init_max_rows: r.number::<i64>("REALTIME_INIT_MAX_ROWS", 100_000, 1),
        };
        let rate_limit = if r.bool("RATE_LIMITER_ENABLED", false) {
            Some(RateLimit {
                points: r.number::<u32>("RATE_LIMITER_POINTS", 50, 1),
                duration: r.seconds("RATE_LIMITER_DURATION", 1),
            })
        } else {
            None
        };
        let telemetry =
            common_io::telemetry::TelemetrySettings::from_env(&mut r, "realtime-gateway");
        let admin_port = r
            .is_set("REALTIME_ADMIN_PORT")
            .then(|| r.number::<u16>("REALTIME_ADMIN_PORT", 0, 0));
        let drain = DrainConfig {
            delay: r.ms_duration_or_zero("REALTIME_DRAIN_DELAY", "5s"),
            spread: r.ms_duration_or_zero("REALTIME_DRAIN_SPREAD", "10s"),
            timeout: r.ms_duration("REALTIME_SHUTDOWN_TIMEOUT", "30s"),
        };
        if drain.timeout < drain.delay + drain.spread {
            r.err(
                "REALTIME_SHUTDOWN_TIMEOUT",
                "must be at least REALTIME_DRAIN_DELAY + REALTIME_DRAIN_SPREAD",
            );
        }

        if !r.errors.is_empty() {
            return Err(r.errors);
        }
        Ok(Config {
            host,
            port,
            public_url,
            secret,
            secret_generated,
            db_url,
            db_schema,
            db_pool_size,
            redis,
            redis_prefix,
            gateway_name,
            shards,
            replay_lookback,
            access_token_ttl,
            refresh_token_ttl,
            session_cookie_ttl,
            session_cookie_name,
            refresh_token_cookie_name,
            login_stall,
            admin_email,
            admin_password,
            admin_token,
            ws,
            query,
            limits,
            rate_limit,
            telemetry,
            admin_port,
            drain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_directus() {
        let c =
            Config::from_vars(&vars(&[("SECRET", "s"), ("REDIS", "redis://127.0.0.1")])).unwrap();
        assert_eq!(c.port, 8055);
        assert_eq!(c.ws.rest_path, "/websocket");
        assert_eq!(c.ws.rest_auth, AuthMode::Handshake);
        assert_eq!(c.ws.rest_auth_timeout, Duration::from_secs(10));
        assert_eq!(c.ws.heartbeat_period, Duration::from_secs(30));
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(c.login_stall, Duration::from_millis(500));
        assert_eq!(c.query.limit_default, 100);
        assert!(!c.secret_generated);
    }

    #[test]
    fn every_invalid_variable_is_named() {
        let errs = Config::from_vars(&vars(&[
            ("PORT", "eighty"),
            ("WEBSOCKETS_REST_AUTH", "open"),
            ("WEBSOCKETS_HEARTBEAT_ENABLED", "yes please"),
            ("ACCESS_TOKEN_TTL", "soon"),
            ("DB_CLIENT", "mysql"),
            ("WEBSOCKETS_REST_PATH", "ws"),
            ("REDIS", "not a url"),
        ]))
        .unwrap_err();
        let named: Vec<&str> = errs.iter().map(|e| e.var.as_str()).collect();
        for var in [
            "PORT",
            "WEBSOCKETS_REST_AUTH",
            "WEBSOCKETS_HEARTBEAT_ENABLED",
            "ACCESS_TOKEN_TTL",
            "DB_CLIENT",
            "WEBSOCKETS_REST_PATH",
            "REDIS",
        ] {
            assert!(named.contains(&var), "{var} not reported in {errs:?}");
        }
    }

    #[test]
    fn db_url_from_parts_or_connection_string() {
        let c = Config::from_vars(&vars(&[
            ("DB_HOST", "db"),
            ("DB_PORT", "6543"),
            ("DB_DATABASE", "x y"),
            ("DB_USER", "u"),
            ("DB_PASSWORD", "p@ss"),
            ("REDIS", "redis://127.0.0.1"),
        ]))
        .unwrap();
        assert_eq!(c.db_url, "postgres://u:p%40ss@db:6543/x%20y");
        let c = Config::from_vars(&vars(&[
            ("DB_CONNECTION_STRING", "host=/tmp dbname=d"),
            ("REDIS", "redis://127.0.0.1"),
        ]))
        .unwrap();
        assert_eq!(c.db_url, "host=/tmp dbname=d");
        assert!(c.secret_generated);
    }
}
