//! Every Redis key and channel name the cluster uses, built in one place.
//!
//! Keys that a Lua script or a multi-key command touches together share a hash tag (`{...}`) so they live
//! on one Redis Cluster node: the change stream, its epoch and the ctl stream (`{changes}`); each shard's
//! registrations, lease and checkpoint (`{sN}`); a gateway's channel and liveness key (`{gw:ID}`).

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

    /// Stream of registration changes (every shard's), followed by every worker. In the change stream's
    /// hash slot so one blocking `XREAD` covers both on a Redis Cluster.
    pub fn ctl(&self) -> String {
        format!("{}:{{changes}}:ctl", self.prefix)
    }

    /// Number of virtual shards the cluster was started with (first process writes it).
    pub fn shard_count(&self) -> String {
        format!("{}:shards", self.prefix)
    }

    /// Which worker currently captures (informational; the replication slot is the real lock).
    pub fn capture_owner(&self) -> String {
        format!("{}:capture:owner", self.prefix)
    }

    /// Hash: query id → canonical query JSON, for the queries registered in shard `n`.
    pub fn shard_defs(&self, n: u32) -> String {
        format!("{}:{{s{n}}}:defs", self.prefix)
    }

    /// Hash: `<query id>|<gateway id>` → position the gateway needs events from (`-` once covered).
    pub fn shard_reg(&self, n: u32) -> String {
        format!("{}:{{s{n}}}:reg", self.prefix)
    }

    /// Hash: query id → number of gateways registered for it.
    pub fn shard_refs(&self, n: u32) -> String {
        format!("{}:{{s{n}}}:refs", self.prefix)
    }

    /// Lease on shard `n`: the owning worker's id, with an expiry.
    pub fn shard_owner(&self, n: u32) -> String {
        format!("{}:{{s{n}}}:owner", self.prefix)
    }

    /// Shard `n`'s checkpoint: the last change stream id whose results were published. Written only
    /// by the lease holder; capture confirms the slot no further than the slowest checkpoint, so
    /// PostgreSQL keeps what Redis might lose.
    pub fn shard_checkpoint(&self, n: u32) -> String {
        format!("{}:{{s{n}}}:ckpt", self.prefix)
    }

    /// Sorted set: worker id → last heartbeat (ms since the epoch).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Set of gateway ids that have registered queries (for dead-gateway cleanup).
    pub fn gateways(&self) -> String {
        format!("{}:gateways", self.prefix)
    }

    /// Pub/sub channel on which workers publish a gateway's events.
    pub fn gateway_channel(&self, gateway: &str) -> String {
        format!("{}:{{gw:{gateway}}}:events", self.prefix)
    }

    /// Liveness key of a gateway (expires when it stops heartbeating). In its channel's hash slot: on a
    /// Redis Cluster the heartbeat then goes to the node serving the channel, so a failed node is noticed
    /// (and the subscription moved) within a heartbeat.
    pub fn gateway_alive(&self, gateway: &str) -> String {
        format!("{}:{{gw:{gateway}}}:alive", self.prefix)
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
    fn keys_that_travel_together_share_a_hash_tag() {
        let k = Keys::new("rt");
        assert_eq!(k.changes(), "rt:{changes}:stream");
        assert_eq!(k.epoch(), "rt:{changes}:epoch");
        assert_eq!(k.ctl(), "rt:{changes}:ctl");
        assert_eq!(k.shard_owner(3), "rt:{s3}:owner");
        assert_eq!(k.shard_checkpoint(3), "rt:{s3}:ckpt");
        assert_eq!(k.gateway_channel("g1"), "rt:{gw:g1}:events");
        assert_eq!(k.gateway_alive("g1"), "rt:{gw:g1}:alive");
    }
}
