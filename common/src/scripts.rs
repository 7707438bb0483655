//! Lua scripts both gateways and workers run on Redis, next to the keys they touch ([`crate::keys`]).
//!
//! Each script's keys share one shard's hash tag, so it runs on a single Redis Cluster node. Telling
//! the workers about a registration change is a separate `XADD` to the ctl stream, made after the
//! script: a worker loading a shard reads the ctl position first and the shard's hashes second, so an
//! entry it has not read yet can only repeat what it loaded (applying it again changes nothing).

/// Register a gateway for a query in its shard.
/// KEYS: defs, reg, refs. ARGV: query id, gateway id, canonical query JSON, replay request (`<LSN>@<token>`
/// or `-` when no replay is needed). Returns 1 when the (query, gateway) registration is new.
pub const REGISTER: &str = r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
local field = ARGV[1] .. '|' .. ARGV[2]
local isnew = redis.call('HSET', KEYS[2], field, ARGV[4])
if isnew == 1 then redis.call('HINCRBY', KEYS[3], ARGV[1], 1) end
return isnew
"#;

/// Remove a gateway's registration of a query; the query's definition goes with its last gateway.
/// KEYS: defs, reg, refs. ARGV: query id, gateway id. Returns 1 if removed.
pub const UNREGISTER: &str = r#"
local removed = redis.call('HDEL', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
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

/// Renew a lease. KEYS: owner key. ARGV: worker id, lease in ms. Returns 1 if held afterwards, 0 if
/// someone else holds it. A lease that vanished (its Redis node restarted empty) is taken back: nobody
/// else held it, and dropping the shard meanwhile would skip its changes.
pub const RENEW: &str = r#"
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

/// Mark a registration's replay as done, unless the gateway re-registered with a new request meanwhile.
/// KEYS: reg hash. ARGV: field, the replay request that was served.
pub const REPLAYED: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], '-')
  return 1
end
return 0
"#;

/// Approximate length kept of the ctl stream: workers follow it continuously, and a shard's new owner
/// loads the shard's hashes, so old entries are not needed.
pub const CTL_MAXLEN: usize = 100_000;

/// The ctl stream entry that tells the workers about a registration (`reg`, with its replay request and
/// canonical definition) or its removal (`None`: `unreg`). Sent after the script that changed the shard's
/// hashes (see the module docs for why that order is safe).
pub fn ctl_entry(
    keys: &crate::keys::Keys,
    query: crate::normalize::QueryId,
    gateway: &str,
    registration: Option<(&str, &str)>,
) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(keys.ctl())
        .arg("MAXLEN")
        .arg("~")
        .arg(CTL_MAXLEN)
        .arg("*")
        .arg("op")
        .arg(if registration.is_some() {
            "reg"
        } else {
            "unreg"
        })
        .arg("q")
        .arg(query.to_string())
        .arg("g")
        .arg(gateway);
    if let Some((request, def_json)) = registration {
        c.arg("f").arg(request).arg("d").arg(def_json);
    }
    c
}

/// A gateway's request to replay the change stream from commit LSN `lsn` for one registration. The
/// token tells the gateway which request a replay's end answers (see `common::delivery::EntryKind`).
pub fn replay_request(lsn: u64, token: u64) -> String {
    format!("{lsn}@{token}")
}

/// The LSN of a replay request (`None` for `-` or anything unreadable).
pub fn replay_request_lsn(request: &str) -> Option<u64> {
    request.split_once('@')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_requests_round_trip() {
        let r = replay_request(123456, 7);
        assert_eq!(r, "123456@7");
        assert_eq!(replay_request_lsn(&r), Some(123456));
        assert_eq!(replay_request_lsn("-"), None);
        assert_eq!(replay_request_lsn("12"), None);
        assert_eq!(replay_request_lsn("x@1"), None);
    }
}
