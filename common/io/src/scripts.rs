//! Lua scripts both gateways and workers run on Redis, next to the keys they touch ([`common::keys`]).
//!
//! Each script's keys share one shard's hash tag, so it runs on a single Redis Cluster node. Telling
//! the workers about a registration change is a separate `XADD` to the ctl stream, made after the
//! script: a worker loading a shard reads the ctl position first and the shard's hashes second, so an
//! entry it has not read yet can only repeat what it loaded (applying it again changes nothing).

/// Register a gateway for a query in its shard.
/// KEYS: defs, reg, refs. ARGV: query id, the registration's field ([`common::ctl::RegField`]), canonical
/// query JSON, replay ([`common::ctl::Replay`]). Returns 1 when the (query, gateway) registration is new.
pub const REGISTER: &str = r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
local isnew = redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
if isnew == 1 then redis.call('HINCRBY', KEYS[3], ARGV[1], 1) end
return isnew
"#;

/// Remove a gateway's registration of a query; the query's definition goes with its last gateway.
/// KEYS: defs, reg, refs. ARGV: query id, the registration's field. Returns 1 if removed.
pub const UNREGISTER: &str = r#"
local removed = redis.call('HDEL', KEYS[2], ARGV[2])
if removed == 1 then
  local n = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
return removed
"#;

/// Read a shard's registrations atomically. KEYS: defs, reg. Returns {defs (flat field/value list), reg
/// (flat)}.
pub const LOAD_SHARD: &str = r#"
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"#;

/// Take a lease if free, or renew it if we hold it (also after a reconnect). KEYS: owner key. ARGV: worker
/// id, lease in ms. Returns 1 if held afterwards, 0 if someone else holds it. A held lease that vanished
/// (its Redis node restarted empty) is taken back the same way: nobody else held it, and dropping the
/// shard meanwhile would skip its changes.
pub const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Release a lease if we hold it. KEYS: owner key. ARGV: worker id.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Write a shard's checkpoint, but only while we hold its lease (a worker that lost the lease must not
/// move a checkpoint the new owner relies on). KEYS: owner key, checkpoint key. ARGV: worker id, stream
/// id. Returns 1 if written.
pub const CHECKPOINT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"#;

/// Mark a registration's replay as done, unless the gateway re-registered with a new request meanwhile.
/// KEYS: reg hash. ARGV: the registration's field, the replay that was served, what a served replay
/// becomes ([`common::ctl::Replay::served`]).
pub const REPLAYED: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#;

/// Approximate length kept of the ctl stream: workers follow it continuously, and a shard's new owner
/// loads the shard's hashes, so old entries are not needed.
pub const CTL_MAXLEN: usize = 100_000;

/// The `XADD` of a ctl stream entry, sent after the script that changed the shard's hashes (see the module
/// docs for why that order is safe).
pub fn ctl_entry(keys: &common::keys::Keys, entry: &common::ctl::CtlEntry) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(keys.ctl())
        .arg("MAXLEN")
        .arg("~")
        .arg(CTL_MAXLEN)
        .arg("*");
    for (k, v) in entry.fields() {
        c.arg(k).arg(v);
    }
    c
}
