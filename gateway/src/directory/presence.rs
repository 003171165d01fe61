//! The presence directory in Redis: which devices of a user are connected, where.
//!
//! `presence:{user}` is a hash: device → `{gateway_id}|{last_seen_ms}`. Each gateway
//! writes its own devices when they connect, removes them when they leave, and
//! re-writes all of them every heartbeat with a fresh time (and a key TTL of three
//! heartbeats), so that a crashed gateway's devices age out and a Redis that lost its
//! data (restart) is rebuilt within one heartbeat. A user is online while any device's
//! entry is fresher than three heartbeats. The first device to connect and the last
//! to leave publish `presence.{user}` (a Presence frame) on core NATS for watchers.
//!
//! Redis down: connections and messages are unaffected; state queries answer UNKNOWN
//! and transitions are not announced until it returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use petrel_core::time::unix_ms as now_ms;
use petrel_core::wire::{PresenceState, encode_presence};
use petrel_core::{UserId, subject};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Directory;
use super::keys::presence_key as key;

/// This gateway's view of the presence directory.
pub struct Presence {
    redis: Directory,
    nats: async_nats::Client,
    gateway_id: String,
    heartbeat: Duration,
    /// Devices connected here, with how many connections each.
    local: Mutex<HashMap<(UserId, String), usize>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence {
    /// Presence on `redis` (the same Redis as groups), announcing on `nats`.
    pub fn new(
        redis: Directory,
        nats: async_nats::Client,
        gateway_id: String,
        heartbeat: Duration,
    ) -> Self {
        Self {
            redis,
            nats,
            gateway_id,
            heartbeat,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self) -> String {
        format!("{}|{}", self.gateway_id, now_ms())
    }

    fn ttl_secs(&self) -> i64 {
        (self.heartbeat.as_secs() as i64 * 3).max(3)
    }

    /// A device connected here.
    pub async fn connected(&self, user: &UserId, device: &str) {
        if let Ok(mut l) = self.local.lock() {
            *l.entry((user.clone(), device.to_string())).or_default() += 1;
        }
        let Some(mut c) = self.redis.connection() else {
            return;
        };
        let r: redis::RedisResult<(u32, bool, u32)> = redis::pipe()
            .atomic()
            .hset(key(user), device, self.entry())
            .expire(key(user), self.ttl_secs())
            .hlen(key(user))
            .query_async(&mut c)
            .await;
        match r {
            // HSET returned 1 (new field) and it is the only one: the user came online.
            Ok((1, _, 1)) => self.announce(user, PresenceState::Online).await,
            Ok(_) => {}
            Err(e) => debug!(%user, error = %e, "presence not recorded (Redis)"),
        }
    }

    /// A device's connection here ended.
    pub async fn disconnected(&self, user: &UserId, device: &str) {
        let last_here = match self.local.lock() {
            Ok(mut l) => {
                let k = (user.clone(), device.to_string());
                match l.get_mut(&k) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        l.remove(&k);
                        true
                    }
                }
            }
            Err(_) => true,
        };
        if !last_here {
            return;
        }
        let Some(mut c) = self.redis.connection() else {
            return;
        };
        let r: redis::RedisResult<(u32, u32)> = redis::pipe()
            .atomic()
            .hdel(key(user), device)
            .hlen(key(user))
            .query_async(&mut c)
            .await;
        match r {
            Ok((1, 0)) => self.announce(user, PresenceState::Offline).await,
            Ok(_) => {}
            Err(e) => debug!(%user, error = %e, "presence not removed (Redis)"),
        }
    }

    /// `user`'s state now.
    pub async fn state(&self, user: &UserId) -> PresenceState {
        let Some(mut c) = self.redis.connection() else {
            return PresenceState::Unknown;
        };
        let read: redis::RedisResult<HashMap<String, String>> =
            tokio::time::timeout(Duration::from_secs(1), c.hgetall(key(user)))
                .await
                .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()));
        match read {
            Ok(entries) => {
                let fresh_after = now_ms().saturating_sub(self.ttl_secs() as u64 * 1000);
                let online = entries.values().any(|v| {
                    v.rsplit('|')
                        .next()
                        .and_then(|t| t.parse::<u64>().ok())
                        .is_some_and(|t| t >= fresh_after)
                });
                if online {
                    PresenceState::Online
                } else {
                    PresenceState::Offline
                }
            }
            Err(e) => {
                debug!(%user, error = %e, "presence unknown (Redis)");
                PresenceState::Unknown
            }
        }
    }

    async fn announce(&self, user: &UserId, state: PresenceState) {
        if let Err(e) = self
            .nats
            .publish(subject::presence_events(user), encode_presence(user, state))
            .await
        {
            debug!(%user, error = %e, "presence event not published");
        }
    }

    /// After a heartbeat wrote `devices` (`created[i]` = 1 where the entry was missing):
    /// a device that disconnected meanwhile is removed again, and users whose entries
    /// had been lost and who are still connected are announced online.
    async fn after_heartbeat(
        &self,
        c: &mut redis::aio::ConnectionManager,
        devices: &[(UserId, String)],
        created: &[u32],
    ) {
        let gone: Vec<&(UserId, String)> = match self.local.lock() {
            Ok(l) => devices.iter().filter(|d| !l.contains_key(*d)).collect(),
            Err(_) => return,
        };
        if !gone.is_empty() {
            let mut pipe = redis::pipe();
            for (user, device) in &gone {
                pipe.hdel(key(user), device).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(c).await {
                debug!(error = %e, "presence: removing entries of devices gone meanwhile");
            }
        }
        let mut back: Vec<&UserId> = devices
            .iter()
            .zip(created)
            .filter(|(d, n)| **n == 1 && !gone.contains(d))
            .map(|((u, _), _)| u)
            .collect();
        back.sort_unstable();
        back.dedup();
        for user in back {
            self.announce(user, PresenceState::Online).await;
        }
    }

    /// Re-writes this gateway's devices every heartbeat until `shutdown` (and so
    /// rebuilds the directory after Redis lost it).
    pub async fn heartbeat(&self, shutdown: CancellationToken) {
        if !self.redis.configured() {
            return;
        }
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let devices: Vec<(UserId, String)> = match self.local.lock() {
                Ok(l) => l.keys().cloned().collect(),
                Err(_) => return,
            };
            let Some(mut c) = self.redis.connection() else {
                return;
            };
            // PING first: the pipeline is never empty (Redis refuses an empty one), and
            // a heartbeat with no device here still tells whether Redis is reachable.
            // Each HSET answers 1 when it had to create the entry: the directory had
            // lost it (Redis restarted empty), so watchers are told the user is online.
            let mut pipe = redis::pipe();
            pipe.cmd("PING").ignore();
            for (user, device) in &devices {
                pipe.hset(key(user), device, self.entry());
                pipe.expire(key(user), self.ttl_secs()).ignore();
            }
            match pipe.query_async::<Vec<u32>>(&mut c).await {
                Ok(created) => {
                    if failing {
                        warn!(
                            devices = devices.len(),
                            "Redis is back; presence directory rebuilt"
                        );
                    }
                    failing = false;
                    self.after_heartbeat(&mut c, &devices, &created).await;
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "presence heartbeat failed (Redis); this gateway's devices are rewritten when it returns");
                    }
                    failing = true;
                }
            }
        }
    }
}

impl Directory {
    /// When each connected device of `user` was last seen (ms since the Unix epoch),
    /// as the gateways last wrote it. A device is online while that is within three
    /// heartbeats.
    pub async fn devices_seen(
        &self,
        user: &UserId,
    ) -> Result<HashMap<String, u64>, super::DirectoryError> {
        let raw: HashMap<String, String> = self.conn()?.hgetall(key(user)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(d, v)| Some((d, v.rsplit('|').next()?.parse().ok()?)))
            .collect())
    }
}
