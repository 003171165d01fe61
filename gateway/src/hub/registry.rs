//! The push registry: the stream `PUSH_TARGETS` on the hub, a key-value store in
//! JetStream's sense (one value per subject `push.target.{user}`, the newest kept,
//! replicated, read by direct get), holding each user's devices
//! ([`petrel_core::push::Devices`]). Not a `$KV` bucket: a `$KV.…` subject published on
//! a leaf node does not reach the hub's bucket (docs/decisions.md).
//!
//! Gateways write it (a device registers or removes its target); the push service
//! reads it and prunes targets a provider says are dead. Every change is a
//! compare-and-set on the value's revision, retried when another writer got there
//! first, so two devices of one user registering at once both land.

use std::time::Duration;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use bytes::Bytes;
use petrel_core::push::{Devices, PushTarget, Registration};
use petrel_core::subject::{PUSH_TARGET_STREAM, push_registry};
use petrel_core::{DeviceId, UserId};
use tokio::sync::OnceCell;

/// Compare-and-set attempts before a change gives up (each lost race re-reads).
const CAS_ATTEMPTS: usize = 8;

/// Why the registry could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bucket could not be reached (hub away, not provisioned).
    #[error("the push registry is unavailable: {0}")]
    Unavailable(String),
    /// Writers kept racing.
    #[error("the push registry value of {0} kept changing; try again")]
    Contended(String),
    /// No answer in time.
    #[error("the push registry did not answer in time")]
    Timeout,
}

/// The push registry through one NATS connection.
pub struct PushRegistry {
    js: jetstream::Context,
    stream: OnceCell<jetstream::stream::Stream<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for PushRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushRegistry").finish_non_exhaustive()
    }
}

impl PushRegistry {
    /// The registry in JetStream domain `domain` through `client`; each call bounded
    /// by `timeout`.
    pub fn new(client: async_nats::Client, domain: &str, timeout: Duration) -> Self {
        Self {
            js: jetstream::with_domain(client, domain),
            stream: OnceCell::new(),
            timeout,
        }
    }

    async fn stream(&self) -> Result<&jetstream::stream::Stream<()>, RegistryError> {
        self.stream
            .get_or_try_init(|| async {
                self.js
                    .get_stream_no_info(PUSH_TARGET_STREAM)
                    .await
                    .map_err(|e| RegistryError::Unavailable(e.to_string()))
            })
            .await
    }

    /// `user`'s devices and the value's revision (0: none yet).
    async fn read(&self, user: &UserId) -> Result<(Devices, u64), RegistryError> {
        match self
            .stream()
            .await?
            .direct_get_last_for_subject(push_registry(user))
            .await
        {
            Ok(m) => Ok((Devices::decode(&m.payload).unwrap_or_default(), m.sequence)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((Devices::default(), 0)),
            Err(e) => Err(RegistryError::Unavailable(e.to_string())),
        }
    }

    /// `user`'s registered devices (none when the user never registered one).
    pub async fn devices(&self, user: &UserId) -> Result<Devices, RegistryError> {
        tokio::time::timeout(self.timeout, self.read(user))
            .await
            .map_err(|_| RegistryError::Timeout)?
            .map(|(d, _)| d)
    }

    /// Sets (or with `None` removes) `device`'s registration.
    pub async fn set(
        &self,
        user: &UserId,
        device: &DeviceId,
        reg: Option<Registration>,
    ) -> Result<(), RegistryError> {
        self.change(user, |d| d.set(device, reg.clone())).await
    }

    /// Removes `device`'s registration if it still has `target` (a provider said the
    /// target is dead). Returns whether it was removed.
    pub async fn prune(
        &self,
        user: &UserId,
        device: &str,
        target: &PushTarget,
    ) -> Result<bool, RegistryError> {
        let mut removed = false;
        self.change(user, |d| {
            removed = d.prune(device, target);
            removed
        })
        .await?;
        Ok(removed)
    }

    /// Writes `user`'s value if its last revision is still `revision` (0: none yet);
    /// false when another writer changed it first.
    async fn write(
        &self,
        user: &UserId,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<bool, RegistryError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(push_registry(user), headers, Bytes::from(value))
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        match ack.await {
            Ok(_) => Ok(true),
            // The server says so with 10071, or with 10164 when the subject's last
            // sequence changed under the expectation (async-nats maps only the first).
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
                    || e.to_string().contains("wrong last sequence") =>
            {
                Ok(false)
            }
            Err(e) => Err(RegistryError::Unavailable(e.to_string())),
        }
    }

    /// Reads `user`'s value, applies `edit` (which says whether it changed anything)
    /// and writes it back if the revision is still the one read.
    async fn change(
        &self,
        user: &UserId,
        mut edit: impl FnMut(&mut Devices) -> bool,
    ) -> Result<(), RegistryError> {
        let work = async {
            for _ in 0..CAS_ATTEMPTS {
                let (mut devices, revision) = self.read(user).await?;
                if !edit(&mut devices) {
                    return Ok(());
                }
                if self.write(user, devices.encode(), revision).await? {
                    return Ok(());
                }
            }
            Err(RegistryError::Contended(user.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| RegistryError::Timeout)?
    }
}
