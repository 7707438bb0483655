//! Lua scripts both gateways and workers run on Redis, next to the keys they touch ([`crate::keys`]).
//!
//! Each script's keys share one shard's hash tag, so it runs on a single Redis Cluster node.

/// Register a gateway for a query in its shard, and tell the shard's owner.
/// KEYS: defs, reg, refs, ctl. ARGV: query id, gateway id, canonical query JSON, from position (LSN, or
/// `-` when no replay is needed), ctl stream max length.
/// Returns 1 when the (query, gateway) registration is new.
pub const REGISTER: &str = r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
local field = ARGV[1] .. '|' .. ARGV[2]
local isnew = redis.call('HSET', KEYS[2], field, ARGV[4])
if isnew == 1 then redis.call('HINCRBY', KEYS[3], ARGV[1], 1) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'op', 'reg', 'q', ARGV[1], 'g', ARGV[2], 'f', ARGV[4], 'd', ARGV[3])
return isnew
"#;

/// Remove a gateway's registration of a query; the query's definition goes with its last gateway.
/// KEYS: defs, reg, refs, ctl. ARGV: query id, gateway id, ctl stream max length. Returns 1 if removed.
pub const UNREGISTER: &str = r#"
local removed = redis.call('HDEL', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
if removed == 1 then
  local n = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'op', 'unreg', 'q', ARGV[1], 'g', ARGV[2])
return removed
"#;

/// Read a shard's registrations and the ctl stream position they correspond to, atomically.
/// KEYS: defs, reg, ctl. Returns {defs (flat field/value list), reg (flat), last ctl id}.
pub const LOAD_SHARD: &str = r#"
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), id}
"#;

/// Renew leases. KEYS: owner keys. ARGV: worker id, lease in ms. Returns 1/0 per key (0 = lost).
pub const RENEW: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// Release a lease if we hold it. KEYS: owner key. ARGV: worker id.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Write shard checkpoints, but only for shards whose lease we still hold (a worker that lost a lease
/// must not move a checkpoint the new owner relies on).
/// KEYS: consumers hash, then owner keys. ARGV: worker id, position, then one consumer field per owner key.
pub const CHECKPOINT: &str = r#"
local written = 0
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[2])
    written = written + 1
  end
end
return written
"#;

/// Take a lease if free, or keep it if we already hold it (after a reconnect).
/// KEYS: owner key. ARGV: worker id, lease in ms. Returns 1 if held afterwards.
pub const ACQUIRE: &str = r#"
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

/// Mark a registration's replay as done, unless the gateway re-registered with a new position meanwhile.
/// KEYS: reg hash. ARGV: field, the position that was replayed.
pub const REPLAYED: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], '-')
  return 1
end
return 0
"#;
