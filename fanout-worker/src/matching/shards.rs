//! Shard ownership: which worker matches which of the virtual shards.
//!
//! Workers announce themselves in a sorted set with a heartbeat time; the live ones are those seen within
//! the lease period. Each shard's intended owner is chosen by rendezvous hashing over the live workers, so
//! a worker joining or leaving moves only the shards it gains or loses. Ownership itself is a lease key
//! (`SET NX PX`), renewed every tick by its holder: a dead worker's leases expire and the intended new
//! owners take the shards within about one lease period. A worker that is no longer the intended owner
//! writes its checkpoint and releases the lease so the new owner can take over at once.

use common::keys::Keys;
use common_io::redis::{Conn, Lua};
use std::collections::BTreeSet;
use std::time::Duration;

/// Rendezvous (highest random weight) hash: the intended owner of `shard` among `workers`.
pub fn intended_owner(shard: u32, workers: &[String]) -> Option<&str> {
    workers
        .iter()
        .max_by_key(|w| {
            (
                xxhash_rust::xxh3::xxh3_64(format!("{shard}:{w}").as_bytes()),
                w.as_str(),
            )
        })
        .map(String::as_str)
}

/// What a tick changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub acquired: Vec<u32>,
    /// Leases found taken by someone else (we stalled past the lease): drop at once, no checkpoint.
    pub lost: Vec<u32>,
    /// Shards to hand over: checkpoint, then [`Membership::release`].
    pub to_release: Vec<u32>,
}

pub struct Membership {
    pub me: String,
    total: u32,
    lease: Duration,
    keys: Keys,
    pub owned: BTreeSet<u32>,
    /// Takes a free lease or renews ours: acquiring and renewing are the same script.
    lease_script: Lua,
    release: Lua,
}

use common_io::clock::unix_millis as now_ms;

impl Membership {
    pub fn new(me: &str, total: u32, lease: Duration, keys: Keys) -> Membership {
        Membership {
            me: me.to_owned(),
            total,
            lease,
            keys,
            owned: BTreeSet::new(),
            lease_script: Lua::new(common_io::scripts::LEASE),
            release: Lua::new(common_io::scripts::RELEASE),
        }
    }

    /// Heartbeat, renew what we own, and work out what to acquire and hand over. Renewals and
    /// acquisitions are one script call per shard (each shard's keys live in their own hash slot), sent
    /// together.
    pub async fn tick(&mut self, con: &mut Conn) -> redis::RedisResult<Changes> {
        let now = now_ms();
        let lease_ms = self.lease.as_millis() as u64;
        let (_, _, mut live): ((), (), Vec<String>) = redis::pipe()
            .cmd("ZADD")
            .arg(self.keys.workers())
            .arg(now)
            .arg(&self.me)
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.workers())
            .arg("-inf")
            .arg(now.saturating_sub(lease_ms))
            .cmd("ZRANGE")
            .arg(self.keys.workers())
            .arg(0)
            .arg(-1)
            .query_async(con)
            .await?;
        live.sort();
        let mut changes = Changes::default();
        let owned: Vec<u32> = self.owned.iter().copied().collect();
        let held = self.each(con, &self.lease_script, &owned, lease_ms).await?;
        for (n, ok) in owned.iter().zip(held) {
            if !ok {
                self.owned.remove(n);
                changes.lost.push(*n);
            }
        }
        let mut wanted = Vec::new();
        for n in 0..self.total {
            let intended = intended_owner(n, &live) == Some(self.me.as_str());
            let owned = self.owned.contains(&n);
            if owned && !intended {
                changes.to_release.push(n);
            } else if intended && !owned {
                wanted.push(n);
            }
        }
        let got = self
            .each(con, &self.lease_script, &wanted, lease_ms)
            .await?;
        for (n, ok) in wanted.iter().zip(got) {
            if ok {
                self.owned.insert(*n);
                changes.acquired.push(*n);
            }
        }
        Ok(changes)
    }

    /// Run a lease script (KEYS: owner; ARGV: me, lease) for each shard; true where it returned 1.
    async fn each(
        &self,
        con: &mut Conn,
        script: &Lua,
        shards: &[u32],
        lease_ms: u64,
    ) -> redis::RedisResult<Vec<bool>> {
        let calls: Vec<(Vec<String>, Vec<String>)> = shards
            .iter()
            .map(|n| {
                (
                    vec![self.keys.shard_owner(*n)],
                    vec![self.me.clone(), lease_ms.to_string()],
                )
            })
            .collect();
        let replies = script.eval_each(con, &calls).await?;
        Ok(replies
            .iter()
            .map(|v| matches!(v, redis::Value::Int(1)))
            .collect())
    }

    /// Give up a shard (after its checkpoint was written).
    pub async fn release(&mut self, con: &mut Conn, n: u32) -> redis::RedisResult<()> {
        self.owned.remove(&n);
        let _: i64 = self
            .release
            .prepare()
            .key(self.keys.shard_owner(n))
            .arg(&self.me)
            .invoke_async(con)
            .await?;
        Ok(())
    }

    /// Leave the cluster: release every shard and the membership entry.
    pub async fn leave(&mut self, con: &mut Conn) {
        for n in self.owned.clone() {
            let _ = self.release(con, n).await;
        }
        let _: redis::RedisResult<()> = redis::cmd("ZREM")
            .arg(self.keys.workers())
            .arg(&self.me)
            .query_async(con)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_joiners_share() {
        let two: Vec<String> = vec!["a".into(), "b".into()];
        let three: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let mut moved = 0;
        let mut to_c = 0;
        for n in 0..256 {
            let before = intended_owner(n, &two).unwrap();
            let after = intended_owner(n, &three).unwrap();
            if before != after {
                moved += 1;
                assert_eq!(after, "c", "a shard only ever moves to the new worker");
            }
            if after == "c" {
                to_c += 1;
            }
        }
        assert_eq!(moved, to_c);
        assert!((50..120).contains(&to_c), "about a third moves: {to_c}");
        assert_eq!(intended_owner(5, &[]), None);
    }
}
