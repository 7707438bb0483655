//! Every Redis key and channel name the cluster uses, built in one place.
//!
//! Keys that a Lua script touches together share a hash tag (`{...}`) so they live on one Redis Cluster
//! node.

/// Prefix of every key; lets several clusters share one Redis.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The change stream: one entry per transaction (or chunk), id `<commit LSN>-<chunk>`.
    pub fn changes(&self) -> String {
        format!("{}:{{changes}}:stream", self.prefix)
    }

    /// Random value created with the stream; when it disappears, Redis lost its data.
    pub fn epoch(&self) -> String {
        format!("{}:{{changes}}:epoch", self.prefix)
    }

    /// Hash: consumer (shard) → last stream id whose results were published. Capture confirms the slot no
    /// further than the slowest consumer, so PostgreSQL keeps what Redis might lose.
    pub fn consumers(&self) -> String {
        format!("{}:{{changes}}:consumers", self.prefix)
    }

    /// Which worker currently captures (informational; the replication slot is the real lock).
    pub fn capture_owner(&self) -> String {
        format!("{}:capture:owner", self.prefix)
    }

    /// Liveness key of a gateway (expires when it stops heartbeating).
    pub fn gateway_alive(&self, gateway: &str) -> String {
        format!("{}:gw:{gateway}:alive", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new("rt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_share_a_hash_tag() {
        let k = Keys::new("rt");
        assert_eq!(k.changes(), "rt:{changes}:stream");
        assert_eq!(k.epoch(), "rt:{changes}:epoch");
        assert_eq!(k.consumers(), "rt:{changes}:consumers");
    }
}
