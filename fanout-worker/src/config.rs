//! fanout-worker configuration from environment variables (same rules and names as the gateway's; see
//! the README's configuration table).

use common::env::{ConfigError, EnvReader};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Run the capture role (one worker holds the slot, the others stand by).
    pub enabled: bool,
    pub slot: String,
    pub publication: String,
    /// Set `REPLICA IDENTITY FULL` on published tables that lack it.
    pub replica_identity_full: bool,
    /// Approximate cap on stream entries (`XADD MAXLEN ~`); 0 = none.
    pub stream_maxlen: usize,
    /// Entries older than this are trimmed (never past what consumers still need).
    pub stream_max_age: Duration,
    pub chunk_rows: usize,
    pub chunk_bytes: usize,
    /// Tables never captured.
    pub exclude: Vec<String>,
    /// Most entries appended per Redis round trip.
    pub batch_max: usize,
    /// Standby status interval towards PostgreSQL.
    pub status_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub host: String,
    pub port: u16,
    pub db_url: String,
    pub db_schema: String,
    pub redis: common_io::redis::RedisSettings,
    pub redis_prefix: String,
    /// This worker's name (logs, `application_name`, ownership keys).
    pub worker_id: String,
    pub capture: CaptureConfig,
    /// Run the matching role (shard owner).
    pub matching_enabled: bool,
    /// Virtual shards (must match the gateways').
    pub shards: u32,
    /// Shard lease: a dead worker's shards move after at most this long.
    pub shard_lease: Duration,
    /// Change stream entries read per round.
    pub match_batch: usize,
    pub telemetry: common_io::telemetry::TelemetrySettings,
    /// Hard stop after SIGTERM (leases and the slot are released first).
    pub shutdown_timeout: Duration,
}

fn identifier(r: &mut EnvReader, name: &str, default: &str) -> String {
    let v = r.string(name, default);
    if v.is_empty()
        || v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        r.err(name, "must be 1-63 characters of a-z, 0-9 and _");
    }
    v
}

impl WorkerConfig {
    pub fn from_env() -> Result<WorkerConfig, Vec<ConfigError>> {
        WorkerConfig::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(vars: &HashMap<String, String>) -> Result<WorkerConfig, Vec<ConfigError>> {
        let mut r = EnvReader::new(vars);
        let host = r.string("HOST", "0.0.0.0");
        let port = r.number::<u16>("PORT", 8056, 0);
        let db_url = common::env::db_url(&mut r);
        if db_url.parse::<tokio_postgres::Config>().is_err() {
            r.err(
                if r.is_set("DB_CONNECTION_STRING") {
                    "DB_CONNECTION_STRING"
                } else {
                    "DB_HOST"
                },
                "does not form a valid PostgreSQL connection string",
            );
        }
        let db_schema = r.string("DB_SEARCH_PATH", "public");
        let redis = common_io::redis::RedisSettings::from_env(
            &mut r,
            "workers exchange changes and subscriptions through Redis",
        );
        let redis_prefix = r.string("REALTIME_REDIS_PREFIX", "rt");
        let worker_id = r
            .opt("REALTIME_WORKER_ID")
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("worker-{:08x}", rand::random::<u32>()));
        let exclude: Vec<String> = r
            .string("REALTIME_CAPTURE_EXCLUDE", "directus_migrations")
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let capture = CaptureConfig {
            enabled: r.bool("REALTIME_CAPTURE_ENABLED", true),
            slot: identifier(&mut r, "REALTIME_SLOT", "realtime"),
            publication: identifier(&mut r, "REALTIME_PUBLICATION", "realtime"),
            replica_identity_full: r.bool("REALTIME_REPLICA_IDENTITY_FULL", true),
            stream_maxlen: r.number::<usize>("REALTIME_STREAM_MAXLEN", 1_000_000, 0),
            stream_max_age: r.ms_duration("REALTIME_STREAM_MAX_AGE", "24h"),
            chunk_rows: r.number::<usize>("REALTIME_CHUNK_ROWS", 1000, 1),
            chunk_bytes: r.number::<usize>("REALTIME_CHUNK_BYTES", 1 << 20, 1024),
            exclude,
            batch_max: r.number::<usize>("REALTIME_CAPTURE_BATCH", 512, 1),
            status_interval: r.ms_duration("REALTIME_STATUS_INTERVAL", "1s"),
        };
        let matching_enabled = r.bool("REALTIME_MATCHING_ENABLED", true);
        let shards = r.number::<u32>("REALTIME_SHARDS", common::shard::DEFAULT_SHARDS, 1);
        let shard_lease = r.ms_duration("REALTIME_SHARD_LEASE", "5s");
        let match_batch = r.number::<usize>("REALTIME_MATCH_BATCH", 256, 1);
        let telemetry =
            common_io::telemetry::TelemetrySettings::from_env(&mut r, "realtime-fanout-worker");
        let shutdown_timeout = r.ms_duration("REALTIME_SHUTDOWN_TIMEOUT", "30s");
        if !r.errors.is_empty() {
            return Err(r.errors);
        }
        Ok(WorkerConfig {
            host,
            port,
            db_url,
            db_schema,
            redis,
            redis_prefix,
            worker_id,
            capture,
            matching_enabled,
            shards,
            shard_lease,
            match_batch,
            telemetry,
            shutdown_timeout,
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
    fn defaults_and_errors() {
        let c = WorkerConfig::from_vars(&vars(&[("REDIS", "redis://127.0.0.1:6379")])).unwrap();
        assert_eq!(c.capture.slot, "realtime");
        assert_eq!(c.capture.stream_max_age, Duration::from_secs(86400));
        assert!(
            c.capture
                .exclude
                .contains(&"directus_migrations".to_string())
        );
        let errs = WorkerConfig::from_vars(&vars(&[
            ("REALTIME_SLOT", "Bad-Name"),
            ("REALTIME_CHUNK_ROWS", "0"),
        ]))
        .unwrap_err();
        let named: Vec<&str> = errs.iter().map(|e| e.var.as_str()).collect();
        assert!(
            named.contains(&"REDIS")
                && named.contains(&"REALTIME_SLOT")
                && named.contains(&"REALTIME_CHUNK_ROWS"),
            "{named:?}"
        );
    }
}
