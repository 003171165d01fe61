//! Who may see whom. Presence and typing are private: a user may watch the presence of,
//! and send typing to, itself, its contacts (the set `contacts:{u}` the application
//! writes, docs/groups.md) and the members of any group it is in. Everyone else is
//! answered `unknown` (never online or offline) and gets none of its typing.
//!
//! Without a readable directory nobody is visible: presence is then unknown anyway,
//! and typing is dropped rather than sent to strangers.

use petrel_core::UserId;
use redis::AsyncCommands;

use super::keys::{contacts_key, groups_key};
use super::{Directory, DirectoryError};

impl Directory {
    /// For each of `others`, whether `user` may see them, in one or two round trips:
    /// contacts first, then a shared group for the rest.
    pub async fn visible(
        &self,
        user: &UserId,
        others: &[UserId],
    ) -> Result<Vec<bool>, DirectoryError> {
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        for o in others {
            pipe.sismember(contacts_key(user), o.as_str());
        }
        let mut seen: Vec<bool> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        for (o, s) in others.iter().zip(seen.iter_mut()) {
            *s |= o == user;
        }
        let rest: Vec<usize> = (0..others.len()).filter(|i| !seen[*i]).collect();
        if rest.is_empty() {
            return Ok(seen);
        }
        let mut pipe = redis::pipe();
        for i in &rest {
            pipe.sinter(&[groups_key(user), groups_key(&others[*i])]);
        }
        let shared: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        for (i, groups) in rest.into_iter().zip(shared) {
            seen[i] = !groups.is_empty();
        }
        Ok(seen)
    }

    /// Makes `a` and `b` contacts of each other (both sets); what an application's
    /// contact service does, and `petrel admin contact add` for development.
    pub async fn add_contacts(&self, a: &UserId, b: &UserId) -> Result<(), DirectoryError> {
        redis::pipe()
            .atomic()
            .sadd(contacts_key(a), b.as_str())
            .ignore()
            .sadd(contacts_key(b), a.as_str())
            .ignore()
            .query_async::<()>(&mut self.conn()?)
            .await?;
        Ok(())
    }

    /// Removes `a` and `b` from each other's contacts.
    pub async fn remove_contacts(&self, a: &UserId, b: &UserId) -> Result<(), DirectoryError> {
        redis::pipe()
            .atomic()
            .srem(contacts_key(a), b.as_str())
            .ignore()
            .srem(contacts_key(b), a.as_str())
            .ignore()
            .query_async::<()>(&mut self.conn()?)
            .await?;
        Ok(())
    }

    /// `user`'s contacts (invalid entries skipped).
    pub async fn contacts(&self, user: &UserId) -> Result<Vec<UserId>, DirectoryError> {
        let raw: Vec<String> = self.conn()?.smembers(contacts_key(user)).await?;
        let mut out: Vec<UserId> = raw
            .into_iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }
}
