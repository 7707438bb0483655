//! Every Redis key and channel name the cluster uses, built in one place.
//!
//! Keys that must live on the same Redis Cluster node share a hash tag (`{...}`).

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
