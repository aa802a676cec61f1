//! The ingest leader lease in Redis, with a fencing token: acquire-or-renew,
//! release, and a fenced `XADD` that a deposed leader cannot get through.
//!
//! Owns the three Lua scripts and their reply decoding. Never sends
//! anything and never reads a clock: the lease's time is Redis's (`PX`).
//!
//! The lease key holds `FENCE|OWNER` with a `PX` expiry. Whoever finds it
//! absent takes it with a NEW fence (`INCR` of a counter key that never
//! expires), so fences only grow across owners. The holder renews by calling
//! the same script before the expiry. A write carries `(owner, fence)` and
//! is refused (`FENCED …` error reply) unless the lease still holds exactly
//! that value — so after an expiry, or once a standby has taken over, a late
//! batch from the old leader is refused atomically, inside Redis.

use super::conn::{Command, RedisError, Reply, Value};

/// KEYS[1] lease, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl ms.
/// Returns {held (1/0), fence, owner, pttl}.
const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if not sep then return redis.error_reply('LEASE malformed lease value') end
  local fence = tonumber(string.sub(cur, 1, sep - 1))
  local owner = string.sub(cur, sep + 1)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, fence, owner, redis.call('PTTL', KEYS[1])}
  end
  return {0, fence, owner, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. '|' .. ARGV[1], 'PX', ARGV[2])
return {1, fence, ARGV[1], tonumber(ARGV[2])}
"#;

/// KEYS[1] lease; ARGV[1] owner, ARGV[2] fence. Returns 1 when released.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[2] .. '|' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS[1] lease, KEYS[2] stream; ARGV[1] owner, ARGV[2] fence, ARGV[3]
/// MAXLEN (~), ARGV[4..] field/value pairs. Returns the entry id.
const FENCED_XADD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[2] .. '|' .. ARGV[1] then
  return redis.error_reply('FENCED lease not held by ' .. ARGV[1] .. ' with fence ' .. ARGV[2])
end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*'}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"#;

/// The keys of one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseKeys {
    pub lease: String,
    pub fence: String,
}

impl LeaseKeys {
    /// `{prefix}leader` and `{prefix}leader:fence`.
    pub fn new(prefix: &str) -> Self {
        LeaseKeys { lease: format!("{prefix}leader"), fence: format!("{prefix}leader:fence") }
    }
}

/// What acquire-or-renew found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// This node holds the lease now.
    pub held: bool,
    /// The holder's fencing token.
    pub fence: u64,
    pub owner: String,
    /// Remaining lease time in ms as Redis counts it.
    pub ttl_ms: i64,
}

fn eval(script: &str, keys: &[&str], args: &[&[u8]]) -> Command {
    let mut c = Command::new("EVAL").arg(script).arg(keys.len().to_string());
    for k in keys {
        c = c.arg(k);
    }
    for a in args {
        c = c.arg(a);
    }
    c
}

/// Takes the lease when free, renews it when `owner` holds it, else reports the holder.
pub fn acquire_or_renew(keys: &LeaseKeys, owner: &str, ttl_ms: u64) -> Command {
    eval(ACQUIRE, &[&keys.lease, &keys.fence], &[owner.as_bytes(), ttl_ms.to_string().as_bytes()])
}

pub fn release(keys: &LeaseKeys, owner: &str, fence: u64) -> Command {
    eval(RELEASE, &[&keys.lease], &[owner.as_bytes(), fence.to_string().as_bytes()])
}

/// `XADD stream MAXLEN ~ max_len * fields…`, only while `(owner, fence)` holds the lease.
pub fn fenced_xadd(keys: &LeaseKeys, owner: &str, fence: u64, stream: &str, max_len: u64, fields: &[(&str, &[u8])]) -> Command {
    let fence = fence.to_string();
    let max_len = max_len.to_string();
    let mut args: Vec<&[u8]> = vec![owner.as_bytes(), fence.as_bytes(), max_len.as_bytes()];
    for (k, v) in fields {
        args.push(k.as_bytes());
        args.push(v);
    }
    eval(FENCED_XADD, &[&keys.lease, stream], &args)
}

pub fn decode_lease(reply: Reply) -> Result<LeaseState, RedisError> {
    let v = reply?;
    let bad = |v: &Value| RedisError::unexpected("[held, fence, owner, pttl]", v);
    let list = v.clone().into_list().ok_or_else(|| bad(&v))?;
    match list.as_slice() {
        [held, fence, owner, ttl] => Ok(LeaseState {
            held: held.as_int().ok_or_else(|| bad(&v))? == 1,
            fence: fence.as_int().filter(|n| *n >= 0).ok_or_else(|| bad(&v))? as u64,
            owner: owner.as_str().ok_or_else(|| bad(&v))?.to_string(),
            ttl_ms: ttl.as_int().ok_or_else(|| bad(&v))?,
        }),
        _ => Err(bad(&v)),
    }
}

/// True when the lease was released by this call.
pub fn decode_released(reply: Reply) -> Result<bool, RedisError> {
    let v = reply?;
    v.as_int().map(|n| n == 1).ok_or_else(|| RedisError::unexpected("0 or 1", &v))
}

/// A fenced write was refused because the lease moved on.
pub fn is_fenced(e: &RedisError) -> bool {
    e.kind == "FENCED"
}
