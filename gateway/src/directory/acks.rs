//! What each device has acknowledged, for the push service: a device that acked a
//! message (got it live, or on resume) is not woken for it.
//!
//! `acked:{user}:{device}` is a hash: stored subject → the device's cursor there.
//! Acks arrive often (one per delivered batch), so a connection only notes the newest
//! cursor in memory ([`Acks::note`]) and one task writes what was noted every
//! [`FLUSH`] in one pipeline ([`Acks::run`]). The push service waits longer than that
//! (its grace) before it decides, so it sees the acks of a device that was online.
//! The key expires with the longest a message is kept, so a device gone for good
//! leaves nothing behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use petrel_core::{DeviceId, Seq, UserId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::keys::acked_key;
use super::{Directory, DirectoryError};

/// How often noted acks are written.
pub const FLUSH: Duration = Duration::from_millis(250);

/// How long an acked cursor is kept (a little longer than USER_MESSAGES keeps a
/// message).
const KEEP_SECS: i64 = 8 * 24 * 3600;

/// The most distinct (device, subject) cursors waiting for a flush; more are dropped
/// (the push service then may wake a device for a message it has: harmless).
const MAX_NOTED: usize = 100_000;

type Noted = HashMap<(UserId, DeviceId, String), Seq>;

/// This gateway's acks on their way to Redis.
pub struct Acks {
    redis: Directory,
    noted: Mutex<Noted>,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks").finish_non_exhaustive()
    }
}

impl Acks {
    /// Acks written to `redis`.
    pub fn new(redis: Directory) -> Self {
        Self {
            redis,
            noted: Mutex::new(HashMap::new()),
        }
    }

    /// `device` of `user` acknowledged up to these cursors.
    pub fn note(&self, user: &UserId, device: &DeviceId, cursors: &[(String, Seq)]) {
        if !self.redis.configured() {
            return;
        }
        let Ok(mut noted) = self.noted.lock() else {
            return;
        };
        for (subject, seq) in cursors {
            let key = (user.clone(), device.clone(), subject.clone());
            if noted.len() >= MAX_NOTED && !noted.contains_key(&key) {
                continue;
            }
            let cur = noted.entry(key).or_default();
            *cur = (*cur).max(*seq);
        }
    }

    /// Writes what was noted every [`FLUSH`] until `shutdown`, and once more then.
    pub async fn run(&self, shutdown: CancellationToken) {
        if !self.redis.configured() {
            return;
        }
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            match self.flush().await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    warn!(error = %e, "acks not recorded for the push service (Redis); retrying");
                    failing = true;
                }
                Err(e) => debug!(error = %e, "acks still not recorded"),
            }
            if stop {
                return;
            }
        }
    }

    async fn flush(&self) -> Result<(), DirectoryError> {
        let batch: Noted = match self.noted.lock() {
            Ok(mut n) => std::mem::take(&mut *n),
            Err(_) => return Ok(()),
        };
        if batch.is_empty() {
            return Ok(());
        }
        // A cursor only moves forward: the script keeps the larger of the two, so a
        // second gateway's older ack never moves it back.
        let script = redis::Script::new(
            "for i = 1, #KEYS do \
               local cur = tonumber(redis.call('HGET', KEYS[i], ARGV[2*i-1]) or '0') \
               if tonumber(ARGV[2*i]) > cur then redis.call('HSET', KEYS[i], ARGV[2*i-1], ARGV[2*i]) end \
               redis.call('EXPIRE', KEYS[i], ARGV[#ARGV]) \
             end return 0",
        );
        let mut inv = script.prepare_invoke();
        for ((user, device, subject), seq) in &batch {
            inv.key(acked_key(user, device.as_str()))
                .arg(subject)
                .arg(seq.0);
        }
        inv.arg(KEEP_SECS);
        let result: Result<i64, _> = inv.invoke_async(&mut self.redis.conn()?).await;
        if let Err(e) = result {
            // Put them back (unless newer ones arrived) for the next flush.
            if let Ok(mut n) = self.noted.lock() {
                for (k, v) in batch {
                    let cur = n.entry(k).or_default();
                    *cur = (*cur).max(v);
                }
            }
            return Err(e.into());
        }
        Ok(())
    }
}

impl Directory {
    /// What `device` of `user` has acknowledged: subject → cursor.
    pub async fn acked(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<HashMap<String, u64>, DirectoryError> {
        use redis::AsyncCommands;
        let key = acked_key(user, device);
        Ok(self.conn()?.hgetall(key).await?)
    }
}
