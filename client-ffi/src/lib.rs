//! The Petrel client SDK for Kotlin, Swift and Python: the reconnecting
//! [`petrel_client::Client`] behind a small UniFFI surface.
//!
//! Layout: this file only — [`PetrelClient`] (start, send, next event, network changed,
//! reconnect, close), the records and the event enum the bindings see, and
//! [`FfiError`]. Calls block the calling thread until done (foreign apps call them off
//! their main thread); each client runs its own small Tokio runtime, so the foreign side
//! needs no async glue. `scripts/bindings.sh` generates the Kotlin, Swift and Python
//! sources from the built library.

use std::sync::Arc;
use std::time::Duration;

use petrel_client::{
    ClientOptions, Endpoint, Event, SendOptions, SendResult, To, TransportKind, Trust,
};

uniffi::setup_scaffolding!();

/// Why a call failed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum FfiError {
    /// Bad options (a hash, an address, the state file).
    #[error("configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// The gateway or the client refused (the code as everywhere: `UNAUTHENTICATED`, `DUPLICATE_SEND`…).
    #[error("{code}: {message}")]
    Refused {
        /// Error code name.
        code: String,
        /// Detail.
        message: String,
    },
    /// The client has stopped.
    #[error("closed: {message}")]
    Closed {
        /// Why.
        message: String,
    },
    /// Nothing within the time given.
    #[error("timed out")]
    Timeout,
}

impl From<petrel_client::ClientError> for FfiError {
    fn from(e: petrel_client::ClientError) -> Self {
        use petrel_client::ClientError as E;
        match e {
            E::Config(message) => Self::Config { message },
            E::Refused { code, message } => Self::Refused { code, message },
            other => Self::Closed {
                message: other.to_string(),
            },
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Options {
    /// `host:port` of the gateway's QUIC listener, tried first.
    pub quic_address: Option<String>,
    /// `wss://host:port/ws`, the fallback when UDP is blocked.
    pub websocket_url: Option<String>,
    /// Hex SHA-256 of the gateway's certificate to pin.
    pub cert_sha256: String,
    /// TLS server name (default: the host of the address).
    pub server_name: Option<String>,
    /// The user's token.
    pub token: String,
    /// This device's id.
    pub device: String,
    /// The device's state file (cursors and the outbox survive app restarts).
    pub state_path: Option<String>,
}

/// A delivered message.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Message {
    /// Stored subject, e.g. `msg.private.bob`.
    pub subject: String,
    /// Stream sequence.
    pub seq: u64,
    /// Sender.
    pub from: String,
    /// Recipient (empty for a group message).
    pub to: String,
    /// The group, for a group message.
    pub group: Option<String>,
    /// The sender's message id.
    pub id: String,
    /// Media type.
    pub content_type: String,
    /// Content.
    pub content: Vec<u8>,
}

/// What happened.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum ClientEvent {
    /// Connected (also after each reconnect).
    Connected {
        /// `quic` or `websocket`.
        transport: String,
        /// The gateway's id.
        gateway_id: String,
    },
    /// The connection is gone; the next attempt in `retry_in_ms` (none: stopped).
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt starts.
        retry_in_ms: Option<u64>,
    },
    /// A new message (never one seen before).
    Message {
        /// The message.
        message: Message,
    },
    /// The answer to a send nobody waited for (say, from the outbox after a restart).
    SendResult {
        /// The send's id.
        id: String,
        /// `stored`, `queued` or `rejected`.
        status: String,
        /// Where it was stored (0 unless stored).
        seq: u64,
    },
    /// A send made while offline waits in the outbox.
    SendPending {
        /// The send's id.
        id: String,
    },
    /// Anything else (typing, presence, conversation updates, errors), by kind.
    Other {
        /// What it was.
        kind: String,
    },
}

/// A send's answer.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SendOutcome {
    /// `stored`, `queued` or `rejected`.
    pub status: String,
    /// Stored subject (empty unless stored).
    pub subject: String,
    /// Sequence (0 unless stored).
    pub seq: u64,
    /// The rejection's code name (empty unless rejected).
    pub code: String,
}

fn outcome(r: SendResult) -> SendOutcome {
    match r {
        SendResult::Stored { subject, seq, .. } => SendOutcome {
            status: "stored".into(),
            subject,
            seq,
            code: String::new(),
        },
        SendResult::Queued { .. } => SendOutcome {
            status: "queued".into(),
            subject: String::new(),
            seq: 0,
            code: String::new(),
        },
        SendResult::Rejected { code, .. } => SendOutcome {
            status: "rejected".into(),
            subject: String::new(),
            seq: 0,
            code,
        },
    }
}

fn event(e: Event) -> ClientEvent {
    match e {
        Event::Connected { transport, welcome } => ClientEvent::Connected {
            transport: transport.to_string(),
            gateway_id: welcome.gateway_id,
        },
        Event::Disconnected { reason, retry_in } => ClientEvent::Disconnected {
            reason,
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        },
        Event::Message(m) => ClientEvent::Message {
            message: Message {
                subject: m.subject,
                seq: m.seq,
                from: m.from,
                to: m.to,
                group: m.group,
                id: m.client_msg_id,
                content_type: m.content_type,
                content: m.content.to_vec(),
            },
        },
        Event::SendResult { id, result } => {
            let o = outcome(result);
            ClientEvent::SendResult {
                id,
                status: o.status,
                seq: o.seq,
            }
        }
        Event::SendPending { id } => ClientEvent::SendPending { id },
        Event::Typing { .. } => ClientEvent::Other {
            kind: "typing".into(),
        },
        Event::Presence { .. } => ClientEvent::Other {
            kind: "presence".into(),
        },
        Event::Conversation(_) => ClientEvent::Other {
            kind: "conversation".into(),
        },
        Event::Error { code, .. } => ClientEvent::Other {
            kind: format!("error {code}"),
        },
        Event::Closed { .. } => ClientEvent::Other {
            kind: "closed".into(),
        },
    }
}

/// A reconnecting Petrel client.
#[derive(uniffi::Object)]
pub struct PetrelClient {
    runtime: tokio::runtime::Runtime,
    handle: petrel_client::Handle,
    client: tokio::sync::Mutex<Option<petrel_client::Client>>,
}

#[uniffi::export]
impl PetrelClient {
    /// Starts the client; it connects in the background (see `ClientEvent::Connected`).
    #[uniffi::constructor]
    pub fn new(options: Options) -> Result<Arc<Self>, FfiError> {
        let trust = Trust::from_hex_sha256(&options.cert_sha256)?;
        let endpoint = |transport, address: String| Endpoint {
            transport,
            address,
            trust: trust.clone(),
            server_name: options.server_name.clone(),
            connect_timeout: Duration::from_secs(10),
            local_ip: None,
        };
        let mut endpoints = Vec::new();
        if let Some(a) = &options.quic_address {
            endpoints.push(endpoint(TransportKind::Quic, a.clone()));
        }
        if let Some(a) = &options.websocket_url {
            endpoints.push(endpoint(TransportKind::WebSocket, a.clone()));
        }
        let mut opts = ClientOptions::new(endpoints, options.token, options.device);
        opts.state = options.state_path.map(Into::into);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("petrel-client")
            .enable_all()
            .build()
            .map_err(|e| FfiError::Config {
                message: format!("starting the client's runtime: {e}"),
            })?;
        let client = runtime.block_on(async { petrel_client::Client::start(opts) })?;
        Ok(Arc::new(Self {
            runtime,
            handle: client.handle(),
            client: tokio::sync::Mutex::new(Some(client)),
        }))
    }

    /// Sends text to a user (or, with `group`, to a group) and waits for the answer, at
    /// most `timeout_ms`; offline, the send waits in the outbox and goes once connected.
    pub fn send(
        &self,
        to: String,
        group: bool,
        id: String,
        text: String,
        timeout_ms: u64,
    ) -> Result<SendOutcome, FfiError> {
        self.runtime.block_on(async {
            let target = if group { To::Group(&to) } else { To::User(&to) };
            let pending = self
                .handle
                .start_send(
                    target,
                    &id,
                    text.into_bytes(),
                    "text/plain",
                    SendOptions::default(),
                )
                .await?;
            match tokio::time::timeout(Duration::from_millis(timeout_ms), pending.result()).await {
                Ok(r) => Ok(outcome(r?)),
                Err(_) => Err(FfiError::Timeout),
            }
        })
    }

    /// The next event, waiting at most `timeout_ms`; `None` when nothing came.
    pub fn next_event(&self, timeout_ms: u64) -> Result<Option<ClientEvent>, FfiError> {
        self.runtime.block_on(async {
            let mut guard = self.client.lock().await;
            let Some(c) = guard.as_mut() else {
                return Err(FfiError::Closed {
                    message: "the client was closed".into(),
                });
            };
            match tokio::time::timeout(Duration::from_millis(timeout_ms), c.next_event()).await {
                Ok(Some(e)) => Ok(Some(event(e))),
                Ok(None) => Err(FfiError::Closed {
                    message: "the client stopped".into(),
                }),
                Err(_) => Ok(None),
            }
        })
    }

    /// The device's network changed (Wi-Fi ↔ cellular) or came back.
    pub fn network_changed(&self) -> Result<(), FfiError> {
        Ok(self.runtime.block_on(self.handle.network_changed())?)
    }

    /// Drops the connection and connects again at once.
    pub fn reconnect(&self) -> Result<(), FfiError> {
        Ok(self.runtime.block_on(self.handle.reconnect())?)
    }

    /// Ids of the sends waiting in the outbox.
    pub fn pending_sends(&self) -> Result<Vec<String>, FfiError> {
        Ok(self.runtime.block_on(self.handle.pending_sends())?)
    }

    /// Stops the client (the outbox stays in the state file).
    pub fn close(&self) {
        self.runtime.block_on(async {
            if let Some(c) = self.client.lock().await.take() {
                c.close().await;
            }
        });
    }
}
