//! Coalescing per device, shared by every worker through Redis.
//!
//! Every stored message a device should hear of is *noted* ([`Coalescer::note`]):
//! added to the device's undelivered set (the badge), counted, and remembered as the
//! latest. The first note while nobody holds the device's `due` key takes it and
//! becomes the *owner*: that worker keeps its JetStream message unacknowledged,
//! waits out the grace (and what is left of the coalescing window since the last
//! push), then *takes* the count ([`Coalescer::take`], which also frees `due`) and
//! sends one push for everything counted. Notes that find `due` held only count.
//!
//! So a burst to one device makes one push per window, and a worker killed while it
//! owns a device loses nothing: its message is redelivered after the ack wait, finds
//! the count still there and `due` expired, and becomes the owner again. A
//! redelivered message whose push already went (count taken) is dropped, so it is
//! not pushed twice.

use std::collections::HashMap;
use std::time::Duration;

use petrel_core::UserId;
use petrel_core::push::Latest;
use petrel_gateway::directory::Directory;
use petrel_gateway::directory::keys::{parse_pending_member, pending_member, push_device_keys};

/// The most undelivered messages counted per device (the badge stops there).
pub const PENDING_CAP: usize = 999;

/// How long a device's coalescing state outlives its last message.
const KEEP_SECS: u64 = 8 * 24 * 3600;

/// What a note made of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Send the device's next push; the last one went at this time (ms, 0: never).
    Owner {
        /// When the last push to the device went.
        last_push_ms: u64,
    },
    /// Another worker will (or the message was already pushed).
    Covered,
}

/// The Redis side of coalescing.
#[derive(Debug, Clone)]
pub struct Coalescer {
    redis: Directory,
    /// How long `due` is held before another worker may take over.
    due_ttl: Duration,
}

const NOTE: &str = r"
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[6])
if added == 1 then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[6])
elseif tonumber(redis.call('GET', KEYS[2]) or '0') == 0 then
  return {0, 0}
end
local owner = redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[4])
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
if owner then return {1, last} end
return {0, last}
";

const TAKE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
if n > 0 then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[2]) end
return {n, redis.call('GET', KEYS[3])}
";

/// Why the coalescing state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("push coalescing state (Redis): {0}")]
pub struct CoalesceError(String);

impl From<redis::RedisError> for CoalesceError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

impl Coalescer {
    /// Coalescing on `redis`; an owner that has not taken the count within `due_ttl`
    /// is presumed dead.
    pub fn new(redis: Directory, due_ttl: Duration) -> Self {
        Self { redis, due_ttl }
    }

    fn conn(&self) -> Result<redis::aio::ConnectionManager, CoalesceError> {
        self.redis
            .connection()
            .ok_or_else(|| CoalesceError("no Redis configured".into()))
    }

    /// Notes `latest` for `device` of `user`.
    pub async fn note(
        &self,
        user: &UserId,
        device: &str,
        latest: &Latest,
    ) -> Result<Noted, CoalesceError> {
        let k = push_device_keys(user, device);
        let json = serde_json::to_string(latest).map_err(|e| CoalesceError(e.to_string()))?;
        let (owner, last): (u32, u64) = redis::Script::new(NOTE)
            .key(&k.pending)
            .key(&k.count)
            .key(&k.due)
            .key(&k.latest)
            .key(&k.last)
            .arg(pending_member(&latest.subject, latest.seq))
            .arg(latest.time_ms)
            .arg(json)
            .arg(self.due_ttl.as_millis() as u64)
            .arg(PENDING_CAP)
            .arg(KEEP_SECS)
            .invoke_async(&mut self.conn()?)
            .await?;
        Ok(if owner == 1 {
            Noted::Owner { last_push_ms: last }
        } else {
            Noted::Covered
        })
    }

    /// Takes what the next push covers: the count since the last push and the latest
    /// message, and frees `due` for the next owner. The window starts now (`now_ms`),
    /// in the same step: an owner noted while this push is still being composed or
    /// sent waits out the window instead of pushing right behind it.
    pub async fn take(
        &self,
        user: &UserId,
        device: &str,
        now_ms: u64,
    ) -> Result<(u32, Option<Latest>), CoalesceError> {
        let k = push_device_keys(user, device);
        let (n, latest): (u32, Option<String>) = redis::Script::new(TAKE)
            .key(&k.count)
            .key(&k.due)
            .key(&k.latest)
            .key(&k.last)
            .arg(now_ms)
            .arg(KEEP_SECS)
            .invoke_async(&mut self.conn()?)
            .await?;
        Ok((n, latest.and_then(|j| serde_json::from_str(&j).ok())))
    }

    /// The device's undelivered messages, after forgetting those it acknowledged
    /// (`acked`: subject → cursor).
    pub async fn undelivered(
        &self,
        user: &UserId,
        device: &str,
        acked: &HashMap<String, u64>,
    ) -> Result<u32, CoalesceError> {
        use redis::AsyncCommands;
        let k = push_device_keys(user, device);
        let mut c = self.conn()?;
        let members: Vec<String> = c.zrange(&k.pending, 0, -1).await?;
        let done: Vec<&String> = members
            .iter()
            .filter(|m| {
                parse_pending_member(m)
                    .is_some_and(|(s, seq)| acked.get(s).is_some_and(|a| *a >= seq))
            })
            .collect();
        if !done.is_empty() {
            let _: u32 = c.zrem(&k.pending, &done).await?;
        }
        Ok((members.len() - done.len()) as u32)
    }

    /// Records that a push to the device went at `now_ms` (after retries, later than
    /// the window's start set by [`Coalescer::take`]).
    pub async fn pushed(
        &self,
        user: &UserId,
        device: &str,
        now_ms: u64,
    ) -> Result<(), CoalesceError> {
        use redis::AsyncCommands;
        let k = push_device_keys(user, device);
        let _: () = self.conn()?.set_ex(&k.last, now_ms, KEEP_SECS).await?;
        Ok(())
    }
}
