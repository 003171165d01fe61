//! The gateway's side of NATS; everything goes through the local leaf node.
//!
//! - [`jetstream`] — the hub's JetStream API: publishing a send's copies, reading a
//!   subject's stored messages page by page, the lookups of the outbox and resumes;
//!   failures are a typed [`HubError`].
//! - [`catchup`] — what a connection missed (resume, a hole, a slow reader, history):
//!   the edge cache first, the hub for the rest.
//! - [`login`] — connecting with the login in the URL (services, tools).
//! - [`messages`] — the message service's requests (conversation lists, archived
//!   history, an amend's original).
//! - [`registry`] — the push registry (one value per user, stream `PUSH_TARGETS`): each device's push target.
//! - [`live`] — live subscriptions (per user, group, watched user), shared by every
//!   connection here, each message cached and encoded once.

pub mod catchup;
pub mod jetstream;
pub mod live;
pub mod login;
pub mod messages;
pub mod registry;

pub use catchup::CatchUp;
pub use jetstream::{HubError, JetStream};
pub use live::{Live, LiveHandle, LiveItem, LiveKey, Signal};
pub use messages::MessageService;
pub use registry::{PushRegistry, RegistryError};
