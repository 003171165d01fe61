//! Group membership, as the application's group service keeps it in Redis.
//!
//! The contract (docs/groups.md): a set `group:{g}:members` of user ids and a set
//! `user:{u}:groups` of group ids, changed together, and a core NATS message on
//! `group.changed.{g}` after every change. The gateway only reads: a connection reads
//! its user's groups when it joins and again whenever a change of one of them (or of a
//! group the user was added to) is announced. `petrel admin group` writes the same
//! way the group service does, for operators and development.
//!
//! Without Redis (unset or unreachable) direct messages are unaffected; a user's
//! groups are then unknown: group sends are refused UNAVAILABLE, and connections try
//! again every few seconds.

use std::collections::HashSet;

use petrel_core::{GroupId, UserId, subject};
use redis::AsyncCommands;
use tracing::warn;

use super::keys::{groups_key, members_key};
use super::{Directory, DirectoryError};

impl Directory {
    /// The groups `user` is a member of. Entries that are not valid ids are skipped
    /// (and logged): they could not name a subject.
    pub async fn user_groups(&self, user: &UserId) -> Result<HashSet<GroupId>, DirectoryError> {
        let raw: Vec<String> = self.conn()?.smembers(groups_key(user)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|g| match GroupId::parse(g.clone()) {
                Ok(g) => Some(g),
                Err(e) => {
                    warn!(%user, group = %g, error = %e, "skipping an invalid group id in Redis");
                    None
                }
            })
            .collect())
    }

    /// The members of `group` (invalid entries skipped).
    pub async fn members(&self, group: &GroupId) -> Result<HashSet<UserId>, DirectoryError> {
        let raw: Vec<String> = self.conn()?.smembers(members_key(group)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect())
    }

    /// Adds `user` to `group` (both sets in one transaction); true if it was not
    /// a member. Announce it with [`announce`].
    pub async fn add(&self, group: &GroupId, user: &UserId) -> Result<bool, DirectoryError> {
        let (added, _): (u32, u32) = redis::pipe()
            .atomic()
            .sadd(members_key(group), user.as_str())
            .sadd(groups_key(user), group.as_str())
            .query_async(&mut self.conn()?)
            .await?;
        Ok(added > 0)
    }

    /// Removes `user` from `group`; true if it was a member.
    pub async fn remove(&self, group: &GroupId, user: &UserId) -> Result<bool, DirectoryError> {
        let (removed, _): (u32, u32) = redis::pipe()
            .atomic()
            .srem(members_key(group), user.as_str())
            .srem(groups_key(user), group.as_str())
            .query_async(&mut self.conn()?)
            .await?;
        Ok(removed > 0)
    }
}

/// Announces a membership change of `group` on `group.changed.{group}` (what the group
/// service does after each change) and waits until the server has it.
pub async fn announce(nats: &async_nats::Client, group: &GroupId) -> anyhow::Result<()> {
    nats.publish(subject::group_changed(group), bytes::Bytes::new())
        .await?;
    nats.flush().await?;
    Ok(())
}
