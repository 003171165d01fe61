//! Carrying out what the session asked for: one function per [`Action`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_core::auth::Identity;
use petrel_core::session::{Action, Now, PublishOutcome};
use petrel_core::wire::{PresenceState, Reply, encode_reply};
use petrel_core::{ErrorCode, Seq, UserId};
use tracing::{debug, warn};

use super::delivery::write_on;
use super::transport::{FrameReader, FrameWriter};
use super::{Driver, End, Joined};
use crate::hub::{LiveHandle, LiveKey};

/// How soon to read a user's groups again after the directory failed.
const GROUPS_RETRY: Duration = Duration::from_secs(5);

/// Longest a resume waits to check the Hello cursors against the hub (all at once).
const CURSOR_CHECK: Duration = Duration::from_secs(1);

impl<R: FrameReader, W: FrameWriter> Driver<R, W> {
    /// Carries out the pending actions in order, and those they lead to; stops at the
    /// first that ends the connection.
    pub(super) async fn carry_out(&mut self) -> Result<(), End> {
        while !self.actions.is_empty() {
            for action in std::mem::take(&mut self.actions) {
                self.act(action).await?;
            }
        }
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<(), End> {
        match action {
            Action::Reply(reply) => self.reply(reply).await,
            Action::Publish(req) => {
                if let Some(j) = &self.joined
                    && !self.shared.users.take_send(&j.user)
                {
                    let limit = self.shared.users.limits().send_rate;
                    let out = self.session.on_published(
                        req.req,
                        PublishOutcome::Failed {
                            code: ErrorCode::RateLimited,
                            detail: format!(
                                "more than {limit} sends per second from this user's connections; slow down and retry with the same id"
                            ),
                        },
                    );
                    self.actions.extend(out);
                    return Ok(());
                }
                // Durable at the edge, then forwarded in order; the outcomes come
                // back on `outcomes`.
                let outcomes = self.outcomes_tx.clone();
                self.shared.outbox.submit(req, outcomes).await;
                Ok(())
            }
            Action::Join(identity) => Box::pin(self.join(identity)).await,
            Action::Signal { subject, frame, to } => {
                let allowed = match &to {
                    Some(u) => self.visible_users(std::slice::from_ref(u), false).await[0],
                    None => true,
                };
                if allowed {
                    self.shared.live.signal(subject, frame).await;
                }
                Ok(())
            }
            Action::Watch(users) => Box::pin(self.watch(users)).await,
            Action::Sync(req) => self.sync(req).await,
            Action::CheckReceipt { receipt, publish } => {
                self.check_receipt(receipt, publish);
                Ok(())
            }
            Action::Acknowledged {
                user,
                device,
                cursors,
            } => {
                self.shared.acks.note(&user, &device, &cursors);
                Ok(())
            }
            Action::RegisterPush {
                request_id,
                user,
                device,
                registration,
            } => {
                let error = match self.shared.registry.set(&user, &device, registration).await {
                    Ok(()) => None,
                    Err(e) => {
                        debug!(%user, error = %e, "push registration not stored");
                        Some((ErrorCode::Unavailable, e.to_string()))
                    }
                };
                self.reply(Reply::PushRegistered { request_id, error })
                    .await
            }
            Action::FindOriginal { req, user, target } => {
                self.find_original(req, user, target);
                Ok(())
            }
            Action::ListConversations {
                request,
                user,
                groups,
            } => self.list_conversations(request, user, groups).await,
            Action::SetConversation {
                request_id,
                user,
                groups,
                settings,
            } => {
                let q = petrel_core::conversation::api::SettingsQuery {
                    user,
                    groups,
                    settings,
                };
                self.set_conversation(request_id, q).await
            }
            Action::Close(code, why) => Box::pin(self.close(code, why)).await,
        }
    }

    async fn reply(&mut self, reply: Reply) -> Result<(), End> {
        count_reply(&self.shared.metrics, &reply);
        self.write(encode_reply(&reply)).await
    }

    /// The token was accepted: register for live delivery (the user's inbox, its
    /// groups), record presence, grant delivery streams, check the Hello cursors, and
    /// resume each subject from its cursor before live traffic.
    async fn join(&mut self, identity: Identity) -> Result<(), End> {
        if let Some(pending) = self.pending.take() {
            match pending.authenticate() {
                Ok(slot) => self.slot = Some(slot),
                Err(refusal) => {
                    self.shared.count_refused(refusal);
                    let why = "the gateway is full; try again later or another edge";
                    let out = self.session.shutdown(ErrorCode::RateLimited, why);
                    self.actions.extend(out);
                    return Ok(());
                }
            }
        }
        if self.user_slot.is_none() {
            match self.shared.users.join(&identity.user) {
                Ok(slot) => self.user_slot = Some(slot),
                Err(refusal) => {
                    self.shared.count_refused(refusal);
                    let why = format!(
                        "this user has the most connections allowed on this gateway ({})",
                        self.shared.users.limits().max_connections
                    );
                    let out = self.session.shutdown(ErrorCode::RateLimited, &why);
                    self.actions.extend(out);
                    return Ok(());
                }
            }
        }
        if let Some(tx) = self.live.tx.take() {
            let handle = LiveHandle {
                tx,
                lost: self.live.lost.clone(),
                groups_changed: self.live.groups_changed.clone(),
                queued: self.live.queued.clone(),
                max_bytes: self.shared.send_queue_bytes,
            };
            let user = identity.user.clone();
            self.shared
                .live
                .join(&LiveKey::User(user.clone()), self.id, handle.clone())
                .await;
            let device = identity.device.to_string();
            self.shared.presence.connected(&user, &device).await;
            self.joined = Some(Joined {
                user,
                device,
                handle,
            });
            self.groups_retry = self.refresh_groups().await;
            let granted = self
                .writer
                .grant_delivery_streams(self.session.delivery_streams());
            self.session.grant_delivery_streams(granted);
        }
        self.check_cursors().await;
        self.actions.extend(self.session.on_joined(Now::system()));
        for (subject, seq) in self.session.cursors() {
            let f = self.deliveries.order.resume(subject, seq);
            self.deliveries
                .fetch(&self.shared.catchup, f, Duration::ZERO);
        }
        Ok(())
    }

    /// A cursor above everything stored on its subject comes from another incarnation
    /// of the stream: resume from what exists. All cursors are checked at once, and
    /// the check is bounded so that a hub that is away does not hold up Welcome.
    async fn check_cursors(&mut self) {
        let claimed: Vec<(String, Seq)> = self
            .session
            .cursors()
            .map(|(s, q)| (s.to_string(), q))
            .collect();
        let jetstream = &self.shared.jetstream;
        let checks =
            futures::future::join_all(claimed.iter().map(|(subject, _)| {
                tokio::time::timeout(CURSOR_CHECK, jetstream.last_seq(subject))
            }))
            .await;
        for ((subject, seq), checked) in claimed.into_iter().zip(checks) {
            match checked {
                Ok(Ok(last)) if seq.0 > last => {
                    warn!(%subject, cursor = %seq, last, "cursor beyond the stream; resuming from its end");
                    self.session.reset_cursor(&subject, Seq(last));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(%subject, error = %e, "could not check the cursor against the stream")
                }
                Err(_) => debug!(%subject, "checking the cursor against the stream timed out"),
            }
        }
    }

    /// Reads the user's groups from the directory and brings the session and the live
    /// subscriptions in line: joins groups added (delivery from now on; a Hello cursor,
    /// if any, was resumed), leaves groups removed. Returns when to try again if the
    /// directory could not be read.
    pub(super) async fn refresh_groups(&mut self) -> Option<Instant> {
        let Some(Joined { user, handle, .. }) = &self.joined else {
            return None;
        };
        if !self.shared.groups.configured() {
            return None;
        }
        let read =
            tokio::time::timeout(Duration::from_secs(1), self.shared.groups.user_groups(user))
                .await;
        let groups = match read {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                warn!(%user, error = %e, "cannot read the user's groups; trying again in 5 s");
                return Some(Instant::now() + GROUPS_RETRY);
            }
            Err(_) => {
                warn!(%user, "reading the user's groups timed out; trying again in 5 s");
                return Some(Instant::now() + GROUPS_RETRY);
            }
        };
        let (added, removed) = self.session.set_groups(groups);
        for g in removed {
            debug!(group = %g, "no longer a member; leaving the group");
            self.shared.live.leave(&LiveKey::Group(g), self.id);
        }
        for g in added {
            debug!(group = %g, "member; joining the group");
            self.shared
                .live
                .join(&LiveKey::Group(g), self.id, handle.clone())
                .await;
        }
        None
    }

    /// For each of `users`, whether this connection's user may see them: remembered
    /// answers (unless `fresh`), then the directory (bounded; unreadable: nobody).
    async fn visible_users(&mut self, users: &[UserId], fresh: bool) -> Vec<bool> {
        let Some(Joined { user, .. }) = &self.joined else {
            return vec![false; users.len()];
        };
        let now = Instant::now();
        let mut out: Vec<Option<bool>> = users
            .iter()
            .map(|u| {
                if fresh {
                    None
                } else {
                    self.visible.get(u, now)
                }
            })
            .collect();
        let ask: Vec<UserId> = users
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none())
            .map(|(u, _)| u.clone())
            .collect();
        if !ask.is_empty() {
            let read = tokio::time::timeout(
                Duration::from_secs(1),
                self.shared.groups.visible(user, &ask),
            )
            .await;
            match read {
                Ok(Ok(answers)) => {
                    for (u, v) in ask.into_iter().zip(answers) {
                        self.visible.put(u, v, now);
                    }
                }
                Ok(Err(e)) => debug!(error = %e, "cannot read visibility; showing nobody"),
                Err(_) => debug!("reading visibility timed out; showing nobody"),
            }
            for (u, v) in users.iter().zip(out.iter_mut()) {
                if v.is_none() {
                    *v = self.visible.get(u, now);
                }
            }
            // (An unreadable directory leaves them `None`: not visible, not remembered.)
        }
        out.into_iter().map(|v| v.unwrap_or(false)).collect()
    }

    /// After a membership change: stops following watched users no longer visible,
    /// telling the client they are now `unknown`.
    pub(super) async fn recheck_watched(&mut self) -> Result<(), End> {
        if self.watched.is_empty() {
            return Ok(());
        }
        let watched: Vec<UserId> = self.watched.iter().cloned().collect();
        let visible = self.visible_users(&watched, true).await;
        let mut frames = BytesMut::new();
        let mut count = 0;
        for (u, v) in watched.into_iter().zip(visible) {
            if !v {
                self.shared
                    .live
                    .leave(&LiveKey::Presence(u.clone()), self.id);
                frames.extend_from_slice(&petrel_core::wire::encode_presence(
                    &u,
                    PresenceState::Unknown,
                ));
                self.watched.remove(&u);
                count += 1;
            }
        }
        if count == 0 {
            return Ok(());
        }
        Ok(write_on(&mut self.writer, None, frames.freeze(), count, &self.wcfg).await?)
    }

    /// Follows exactly `users`' presence from now on — those this user may see — then
    /// writes every state now (subscribed first: no change falls between); users it may
    /// not see are answered `unknown` and not followed.
    async fn watch(&mut self, users: Vec<UserId>) -> Result<(), End> {
        if self.joined.is_none() {
            return Ok(());
        }
        // Fresh: contacts change without an announcement, and watch lists are few.
        let visible = self.visible_users(&users, true).await;
        let Some(Joined { handle, .. }) = &self.joined else {
            return Ok(());
        };
        let wanted: HashSet<UserId> = users
            .iter()
            .zip(&visible)
            .filter(|(_, v)| **v)
            .map(|(u, _)| u.clone())
            .collect();
        for u in self.watched.difference(&wanted) {
            self.shared
                .live
                .leave(&LiveKey::Presence(u.clone()), self.id);
        }
        for u in wanted.difference(&self.watched) {
            self.shared
                .live
                .join(&LiveKey::Presence(u.clone()), self.id, handle.clone())
                .await;
        }
        self.watched = wanted;
        let presence = &self.shared.presence;
        let states =
            futures::future::join_all(users.iter().zip(&visible).map(|(u, v)| async move {
                if *v {
                    presence.state(u).await
                } else {
                    PresenceState::Unknown
                }
            }))
            .await;
        let mut frames = BytesMut::new();
        for (u, state) in users.iter().zip(states) {
            frames.extend_from_slice(&petrel_core::wire::encode_presence(u, state));
        }
        if frames.is_empty() {
            return Ok(());
        }
        let count = users.len() as u64;
        Ok(write_on(&mut self.writer, None, frames.freeze(), count, &self.wcfg).await?)
    }

    /// Closes with `code`; failed logins are counted by their code.
    async fn close(&mut self, code: ErrorCode, why: String) -> Result<(), End> {
        if self.joined.is_none()
            && matches!(
                code,
                ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::InvalidId
            )
        {
            self.shared
                .metrics
                .auth_failures
                .get_or_create(&crate::metrics::CodeLabel {
                    code: code.as_str(),
                })
                .inc();
        }
        self.writer.close(code, &why).await;
        Err(End::Closed(code, why))
    }
}

/// Counts a SendResult by its outcome.
fn count_reply(m: &crate::metrics::Metrics, reply: &Reply) {
    use petrel_core::wire::SendStatus;
    let Reply::SendResult { status, .. } = reply else {
        return;
    };
    let (result, reason) = match status {
        SendStatus::Stored { .. } => ("stored", ""),
        SendStatus::Queued { .. } => ("queued", ""),
        SendStatus::Rejected { code, .. } => ("rejected", code.as_str()),
    };
    m.sends
        .get_or_create(&crate::metrics::SendLabels { result, reason })
        .inc();
}
