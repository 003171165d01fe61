//! The session core: every decision a long-lived client makes, without I/O.
//!
//! [`Session`] is driven by what happened — a transport opened or failed, a frame from
//! the gateway, the app's send, the clock — and answers with [`Action`]s for the shell
//! to carry out: open a transport on a route, write a frame, close, hand an event to
//! the app, save a change to the device's state. Time is always passed in, so tests
//! drive it with a fake clock and a scripted gateway, and the Rust and TypeScript SDKs
//! check the same rules against the vectors in `proto/conformance/`.
//!
//! What it decides:
//! - **Resume and duplicates**: the highest sequence handed to the app per subject;
//!   Hello carries it, a delivery at or below it is dropped, and a Welcome cursor below
//!   it (a recreated stream) moves it back.
//! - **Sends**: an outbox in the app's order. A send made while offline is answered
//!   `Pending` at once; sends are written after Welcome, at most [`Config::send_window`]
//!   unanswered; a connection lost before the answer re-sends them with the same id
//!   (the hub stores an id once). `Queued` is final for the session (durable at the
//!   edge, whose outbox hands it on), so it is not re-sent.
//! - **Reconnects**: exponential backoff with full jitter (the random draw is passed
//!   in), reset by Welcome and by a network-up signal; `GoAway` reconnects to the
//!   next route after its delay, without an error; a refusal that cannot get better
//!   (bad token, bad id, unsupported version, protocol) stops.
//! - **Transports**: routes in the app's order of preference. A QUIC route that does
//!   not answer within [`Config::quic_timeout`] gives way to the next route at once;
//!   when a WebSocket route then works, QUIC is skipped for
//!   [`Config::remember_fallback`] and tried again after.
//! - **Dead paths**: with nothing heard for [`Config::keepalive`], a Ping probes the
//!   path; no answer within [`Config::probe_timeout`] and the connection is given up,
//!   well before a transport idle timeout would notice a gateway that vanished.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{SendResult, TransportKind};

/// Timers and limits; the defaults suit a phone on a weak network.
#[derive(Debug, Clone)]
pub struct Config {
    /// First reconnect delay ceiling (the delay is drawn between 0 and the ceiling).
    pub backoff_initial: Duration,
    /// Largest reconnect delay ceiling.
    pub backoff_max: Duration,
    /// From opening a transport to Welcome, at most.
    pub connect_timeout: Duration,
    /// A QUIC route that has not reached Welcome by then gives way to the next route.
    pub quic_timeout: Duration,
    /// After QUIC gave way and WebSocket worked, QUIC is skipped for this long.
    pub remember_fallback: Duration,
    /// With nothing heard from the gateway for this long, a Ping probes the path.
    pub keepalive: Duration,
    /// A probe unanswered for this long means the path is dead.
    pub probe_timeout: Duration,
    /// With a send waiting for its answer and nothing heard for this long, a Ping
    /// probes the path (sooner than `keepalive`: an app that sends learns of a dead
    /// path in seconds).
    pub send_probe_after: Duration,
    /// Sends written and not yet answered, at most (the gateway reads 64).
    pub send_window: usize,
    /// Sends kept in the outbox, at most; more are refused `OUTBOX_FULL`.
    pub max_outbox: usize,
    /// Read marks and receipts kept while not connected, at most (the oldest give
    /// way).
    pub max_deferred: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            quic_timeout: Duration::from_secs(3),
            remember_fallback: Duration::from_secs(600),
            keepalive: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(5),
            send_probe_after: Duration::from_secs(3),
            send_window: 48,
            max_outbox: 10_000,
            max_deferred: 1_024,
        }
    }
}

/// One way to reach a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Its transport.
    pub transport: TransportKind,
    /// Which gateway it reaches: routes with the same number are one machine (its
    /// QUIC and WebSocket listeners), so a `GoAway` moves on to another number.
    pub gateway: u32,
}

/// What the app hears about one of its sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// In the outbox: written when connected, re-sent until answered.
    Pending,
    /// The gateway answered.
    Answered(SendResult),
}

/// A frame from the gateway, as far as the session needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The handshake's answer: where delivery resumes per subject.
    Welcome {
        /// Resume points; one below the session's cursor moves it back.
        cursors: Vec<(String, u64)>,
    },
    /// A delivered message, by its place in its subject.
    Message {
        /// Stored subject.
        subject: String,
        /// Stream sequence.
        seq: u64,
    },
    /// The answer to a send.
    SendResult {
        /// The send's id.
        id: String,
        /// The answer.
        answer: SendResult,
    },
    /// The gateway is going away: reconnect elsewhere after the delay.
    GoAway {
        /// Why.
        reason: String,
        /// How long to wait first.
        reconnect_after: Duration,
    },
    /// An error frame; `fatal` ones are followed by a close.
    Error {
        /// Code name.
        code: String,
        /// Message.
        message: String,
        /// The gateway closes after it.
        fatal: bool,
    },
    /// Anything else (a Pong, a typing event…): proof the path is alive.
    Other,
}

/// A frame for the shell to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The handshake, with the resume cursors.
    Hello {
        /// Last sequence handed to the app per subject.
        cursors: Vec<(String, u64)>,
    },
    /// An app send, encoded by the shell when it was made.
    Send {
        /// Its id.
        id: String,
        /// The encoded frame.
        frame: Bytes,
    },
    /// A probe of the path.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// An app frame other than a send (read mark, receipt, typing, ack), as encoded.
    Control(Bytes),
}

/// A change of the device's state, for the shell to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The cursor of a subject is now `seq`.
    Cursor {
        /// Subject.
        subject: String,
        /// Sequence.
        seq: u64,
    },
    /// A send entered the outbox.
    OutboxAdded {
        /// Its id.
        id: String,
        /// The encoded frame.
        frame: Bytes,
    },
    /// A send left the outbox (answered).
    OutboxRemoved {
        /// Its id.
        id: String,
    },
    /// The transport memory: QUIC is skipped until this long from now (zero: not).
    QuicSkipped {
        /// How long from now.
        for_: Duration,
    },
}

/// What the app hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Connected on this route (after Welcome).
    Connected {
        /// Route index.
        route: usize,
        /// Its transport.
        transport: TransportKind,
    },
    /// The connection is gone; the next attempt is at `retry_at` (`None`: no more
    /// attempts, see `reason`).
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt starts.
        retry_at: Option<Instant>,
    },
    /// A delivery the app has not seen: hand it over.
    Deliver {
        /// Subject.
        subject: String,
        /// Sequence.
        seq: u64,
    },
    /// A delivery the app has seen: drop it.
    Duplicate {
        /// Subject.
        subject: String,
        /// Sequence.
        seq: u64,
    },
    /// A send's status changed.
    Send {
        /// Its id.
        id: String,
        /// Now.
        status: SendStatus,
    },
    /// A non-fatal error frame.
    Error {
        /// Code name.
        code: String,
        /// Message.
        message: String,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a transport on `route`; report back with `attempt`.
    Open {
        /// Attempt number, quoted in [`Session::opened`] and [`Session::failed`].
        attempt: u64,
        /// Route index.
        route: usize,
    },
    /// Write a frame on the current connection.
    Write(Outgoing),
    /// Close the current connection (the session has already moved on).
    Close {
        /// Why.
        reason: String,
    },
    /// Tell the app.
    Notify(Notice),
    /// Save a change of the device's state.
    Save(Change),
}

/// Why a send was refused before it entered the outbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefused {
    /// A send with this id is already in the outbox.
    #[error("a send with id {0} is already waiting")]
    DuplicateSend(String),
    /// The outbox holds [`Config::max_outbox`] sends.
    #[error("the outbox is full ({0} sends)")]
    OutboxFull(usize),
    /// The session was closed.
    #[error("the client is closed")]
    Closed,
}

impl SendRefused {
    /// The code name the app sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::DuplicateSend(_) => "DUPLICATE_SEND",
            Self::OutboxFull(_) => "OUTBOX_FULL",
            Self::Closed => "CLOSED",
        }
    }
}

/// Error codes after which reconnecting cannot help: the app must act (new token,
/// valid ids, a newer SDK).
pub const PERMANENT_CODES: &[&str] = &[
    "UNAUTHENTICATED",
    "TOKEN_EXPIRED",
    "INVALID_ID",
    "UNSUPPORTED_VERSION",
    "PROTOCOL",
];

/// Reconnecting is pointless after a close with this code name.
pub fn is_permanent(code: &str) -> bool {
    PERMANENT_CODES.contains(&code)
}

/// The reconnect delay's ceiling before attempt `n` (0-based): the initial ceiling
/// doubled per attempt, capped.
pub fn backoff_ceiling(config: &Config, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX);
    config
        .backoff_initial
        .saturating_mul(factor)
        .min(config.backoff_max)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    id: String,
    frame: Bytes,
}

#[derive(Debug)]
enum State {
    /// Waiting to start an attempt.
    Waiting { at: Instant },
    /// A transport is being opened, or the handshake runs.
    Opening {
        attempt: u64,
        route: usize,
        deadline: Instant,
        /// Routes already tried in this round.
        tried: Vec<usize>,
        hello_written: bool,
    },
    /// After Welcome.
    Connected {
        route: usize,
        last_heard: Instant,
        probe: Option<(u64, Instant)>,
    },
    /// No more attempts.
    Stopped,
}

/// The session core (see the module docs).
pub struct Session {
    config: Config,
    routes: Vec<Route>,
    state: State,
    /// Highest sequence handed to the app, per subject.
    cursors: BTreeMap<String, u64>,
    outbox: VecDeque<Queued>,
    /// Control frames made while not connected, by key, for the next Welcome.
    deferred: VecDeque<(String, Bytes)>,
    /// The first this many of the outbox are written on the current connection and
    /// not answered yet (sends are written in order, so they are a prefix).
    written: usize,
    /// Failed attempts since the last Welcome (the backoff exponent).
    failures: u32,
    next_attempt: u64,
    /// Where the next round starts.
    start_route: usize,
    quic_skipped_until: Option<Instant>,
    nonce: u64,
    actions: VecDeque<Action>,
    /// A uniform draw in [0, 1) per reconnect delay.
    jitter: Box<dyn FnMut() -> f64 + Send>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("cursors", &self.cursors)
            .field("outbox", &self.outbox.len())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session over `routes` (in order of preference), resuming from `cursors` with
    /// the sends still in the outbox (`(id, frame)`, in order). It starts connecting
    /// at `now`. `jitter` draws the random part of each reconnect delay.
    pub fn new(
        config: Config,
        routes: Vec<Route>,
        cursors: impl IntoIterator<Item = (String, u64)>,
        outbox: impl IntoIterator<Item = (String, Bytes)>,
        jitter: Box<dyn FnMut() -> f64 + Send>,
        now: Instant,
    ) -> Self {
        let stopped = routes.is_empty();
        let mut s = Self {
            config,
            routes,
            state: State::Waiting { at: now },
            cursors: cursors.into_iter().collect(),
            outbox: outbox
                .into_iter()
                .map(|(id, frame)| Queued { id, frame })
                .collect(),
            deferred: VecDeque::new(),
            written: 0,
            failures: 0,
            next_attempt: 1,
            start_route: 0,
            quic_skipped_until: None,
            nonce: 0,
            actions: VecDeque::new(),
            jitter,
        };
        if stopped {
            s.stop("no route to a gateway configured".into());
        }
        s
    }

    /// Skips QUIC until `until` (remembered from an earlier run).
    pub fn skip_quic_until(&mut self, until: Instant) {
        self.quic_skipped_until = Some(until);
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { at } => Some(*at),
            State::Opening { deadline, .. } => Some(*deadline),
            State::Connected {
                last_heard, probe, ..
            } => Some(match probe {
                Some((_, sent)) => *sent + self.config.probe_timeout,
                None => *last_heard + self.quiet_before_probe(),
            }),
            State::Stopped => None,
        }
    }

    /// Connected after Welcome, on this route.
    pub fn connected(&self) -> Option<(usize, TransportKind)> {
        match self.state {
            State::Connected { route, .. } => Some((route, self.routes[route].transport)),
            _ => None,
        }
    }

    /// The cursors: the highest sequence handed to the app per subject.
    pub fn cursors(&self) -> &BTreeMap<String, u64> {
        &self.cursors
    }

    /// Ids of the sends in the outbox, in order.
    pub fn outbox(&self) -> impl Iterator<Item = &str> {
        self.outbox.iter().map(|q| q.id.as_str())
    }

    /// The clock moved to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let quiet = self.quiet_before_probe();
        match &mut self.state {
            State::Waiting { at } if now >= *at => self.start_round(now),
            State::Opening {
                deadline, route, ..
            } if now >= *deadline => {
                let why = if self.routes[*route].transport == TransportKind::Quic {
                    "QUIC did not answer in time"
                } else {
                    "no Welcome in time"
                };
                self.actions.push_back(Action::Close { reason: why.into() });
                self.attempt_failed(why.into(), now);
            }
            State::Connected {
                last_heard, probe, ..
            } => match probe {
                Some((_, sent)) if now >= *sent + self.config.probe_timeout => {
                    let reason = "no answer from the gateway".to_string();
                    self.actions.push_back(Action::Close {
                        reason: reason.clone(),
                    });
                    self.lost(reason, now);
                }
                None if now >= *last_heard + quiet => {
                    self.nonce += 1;
                    *probe = Some((self.nonce, now));
                    self.actions
                        .push_back(Action::Write(Outgoing::Ping { nonce: self.nonce }));
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The network came back (or changed): reconnect now, without waiting out the
    /// backoff, and start the backoff over.
    pub fn network_up(&mut self, now: Instant) {
        self.failures = 0;
        if let State::Waiting { at } = &mut self.state {
            *at = now;
            self.start_round(now);
        }
    }

    /// The transport of `attempt` is open: the handshake starts.
    pub fn opened(&mut self, attempt: u64, _now: Instant) {
        if let State::Opening {
            attempt: a,
            hello_written,
            ..
        } = &mut self.state
            && *a == attempt
            && !*hello_written
        {
            *hello_written = true;
            let cursors = self.cursors.iter().map(|(s, q)| (s.clone(), *q)).collect();
            self.actions
                .push_back(Action::Write(Outgoing::Hello { cursors }));
        }
    }

    /// The transport of `attempt` could not be opened, or the connection ended:
    /// `code` is the close's error code name, if it had one.
    pub fn failed(&mut self, attempt: u64, code: Option<&str>, reason: String, now: Instant) {
        let current = match &self.state {
            State::Opening { attempt: a, .. } => *a == attempt,
            State::Connected { .. } => self.next_attempt == attempt + 1,
            _ => false,
        };
        if !current {
            return;
        }
        if let Some(code) = code.filter(|c| is_permanent(c)) {
            self.stop(format!("{code}: {reason}"));
            return;
        }
        match self.state {
            State::Opening { .. } => self.attempt_failed(reason, now),
            _ => self.lost(reason, now),
        }
    }

    /// A frame from the gateway on the connection of `attempt`.
    pub fn received(&mut self, attempt: u64, frame: Incoming, now: Instant) {
        if self.next_attempt != attempt + 1 {
            return; // from a connection already given up
        }
        match &mut self.state {
            State::Connected {
                last_heard, probe, ..
            } => {
                *last_heard = now;
                *probe = None;
            }
            State::Opening { .. } => {}
            _ => return,
        }
        match frame {
            Incoming::Welcome { cursors } => self.welcome(cursors, now),
            Incoming::Message { subject, seq } => self.message(subject, seq),
            Incoming::SendResult { id, answer } => self.answer(id, answer),
            Incoming::GoAway {
                reason,
                reconnect_after,
            } => self.go_away(reason, reconnect_after, now),
            Incoming::Error {
                code,
                message,
                fatal,
            } => {
                if fatal && is_permanent(&code) {
                    self.actions.push_back(Action::Close {
                        reason: message.clone(),
                    });
                    self.stop(format!("{code}: {message}"));
                } else if fatal {
                    let reason = format!("{code}: {message}");
                    self.actions.push_back(Action::Close {
                        reason: reason.clone(),
                    });
                    self.lost_or_failed(reason, now);
                } else {
                    self.notify(Notice::Error { code, message });
                }
            }
            Incoming::Other => {}
        }
    }

    /// The app sends: `frame` is the encoded Send (or Amend) with client message id
    /// `id`. Written at once when connected and the window allows, else kept.
    pub fn send(&mut self, id: String, frame: Bytes) -> Result<(), SendRefused> {
        if matches!(self.state, State::Stopped) {
            return Err(SendRefused::Closed);
        }
        if self.outbox.iter().any(|q| q.id == id) {
            return Err(SendRefused::DuplicateSend(id));
        }
        if self.outbox.len() >= self.config.max_outbox {
            return Err(SendRefused::OutboxFull(self.outbox.len()));
        }
        self.actions.push_back(Action::Save(Change::OutboxAdded {
            id: id.clone(),
            frame: frame.clone(),
        }));
        self.outbox.push_back(Queued {
            id: id.clone(),
            frame,
        });
        if !matches!(self.state, State::Connected { .. }) {
            self.notify(Notice::Send {
                id,
                status: SendStatus::Pending,
            });
        }
        self.write_sends();
        Ok(())
    }

    /// The app's control frame (read mark, receipt, typing, ack): written at once when
    /// connected. While not, one with a `key` waits for the next Welcome, a later one
    /// with the same key taking its place (a read mark moves on); one without a key
    /// is dropped, as typing and acks mean nothing later.
    pub fn control(&mut self, key: Option<String>, frame: Bytes) {
        match self.state {
            State::Connected { .. } => {
                self.actions
                    .push_back(Action::Write(Outgoing::Control(frame)));
            }
            State::Stopped => {}
            _ => {
                let Some(key) = key else { return };
                if let Some(slot) = self.deferred.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = frame;
                    return;
                }
                if self.deferred.len() >= self.config.max_deferred {
                    self.deferred.pop_front();
                }
                self.deferred.push_back((key, frame));
            }
        }
    }

    /// The app closes the client: no more attempts.
    pub fn close(&mut self) {
        if matches!(self.state, State::Opening { .. } | State::Connected { .. }) {
            self.actions.push_back(Action::Close {
                reason: "closed by the app".into(),
            });
        }
        self.state = State::Stopped;
    }

    fn notify(&mut self, n: Notice) {
        self.actions.push_back(Action::Notify(n));
    }

    fn quic_skipped(&self, now: Instant) -> bool {
        self.quic_skipped_until.is_some_and(|t| now < t)
    }

    /// The routes of one round, in order from `start_route`, QUIC left out while it
    /// is remembered as blocked (unless nothing else is left).
    fn round(&self, now: Instant) -> Vec<usize> {
        let n = self.routes.len();
        let all: Vec<usize> = (0..n).map(|i| (self.start_route + i) % n).collect();
        let usable: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&r| {
                !(self.quic_skipped(now) && self.routes[r].transport == TransportKind::Quic)
            })
            .collect();
        if usable.is_empty() { all } else { usable }
    }

    fn start_round(&mut self, now: Instant) {
        let first = self.round(now)[0];
        self.open(first, Vec::new(), now);
    }

    fn open(&mut self, route: usize, mut tried: Vec<usize>, now: Instant) {
        tried.push(route);
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let timeout = match self.routes[route].transport {
            TransportKind::Quic => self.config.quic_timeout.min(self.config.connect_timeout),
            TransportKind::WebSocket => self.config.connect_timeout,
        };
        self.state = State::Opening {
            attempt,
            route,
            deadline: now + timeout,
            tried,
            hello_written: false,
        };
        self.actions.push_back(Action::Open { attempt, route });
    }

    /// The attempt failed before Welcome: the next route of the round at once, or
    /// the backoff when the round is over.
    fn attempt_failed(&mut self, reason: String, now: Instant) {
        let State::Opening { tried, .. } = &self.state else {
            return;
        };
        let tried = tried.clone();
        let next = self.round(now).into_iter().find(|r| !tried.contains(r));
        match next {
            Some(r) => self.open(r, tried, now),
            None => self.wait(reason, now),
        }
    }

    fn lost_or_failed(&mut self, reason: String, now: Instant) {
        match self.state {
            State::Opening { .. } => self.attempt_failed(reason, now),
            _ => self.lost(reason, now),
        }
    }

    /// The connection was lost after Welcome.
    fn lost(&mut self, reason: String, now: Instant) {
        self.written = 0;
        self.wait(reason, now);
    }

    fn wait(&mut self, reason: String, now: Instant) {
        let ceiling = backoff_ceiling(&self.config, self.failures);
        self.failures = self.failures.saturating_add(1);
        let draw = (self.jitter)().clamp(0.0, 1.0);
        let at = now + ceiling.mul_f64(draw);
        self.state = State::Waiting { at };
        self.notify(Notice::Disconnected {
            reason,
            retry_at: Some(at),
        });
    }

    fn stop(&mut self, reason: String) {
        self.state = State::Stopped;
        self.notify(Notice::Disconnected {
            reason,
            retry_at: None,
        });
    }

    fn welcome(&mut self, cursors: Vec<(String, u64)>, now: Instant) {
        let State::Opening { route, tried, .. } = &self.state else {
            return;
        };
        let route = *route;
        // QUIC gave way in this round and this route is not QUIC: remember it.
        let quic_failed = tried
            .iter()
            .any(|&r| r != route && self.routes[r].transport == TransportKind::Quic);
        if quic_failed && self.routes[route].transport != TransportKind::Quic {
            self.quic_skipped_until = Some(now + self.config.remember_fallback);
            self.actions.push_back(Action::Save(Change::QuicSkipped {
                for_: self.config.remember_fallback,
            }));
        } else if self.routes[route].transport == TransportKind::Quic
            && self.quic_skipped_until.take().is_some()
        {
            self.actions.push_back(Action::Save(Change::QuicSkipped {
                for_: Duration::ZERO,
            }));
        }
        for (subject, seq) in cursors {
            // Below ours: the stream was recreated, and what follows `seq` is new.
            if self.cursors.get(&subject).is_some_and(|&c| seq < c) {
                self.cursors.insert(subject.clone(), seq);
                self.actions
                    .push_back(Action::Save(Change::Cursor { subject, seq }));
            }
        }
        self.failures = 0;
        self.state = State::Connected {
            route,
            last_heard: now,
            probe: None,
        };
        self.notify(Notice::Connected {
            route,
            transport: self.routes[route].transport,
        });
        self.write_sends();
        for (_, frame) in std::mem::take(&mut self.deferred) {
            self.actions
                .push_back(Action::Write(Outgoing::Control(frame)));
        }
    }

    fn message(&mut self, subject: String, seq: u64) {
        if !matches!(self.state, State::Connected { .. }) {
            return; // nothing reaches the app before Welcome
        }
        let cur = self.cursors.get(&subject).copied().unwrap_or(0);
        if seq <= cur {
            self.notify(Notice::Duplicate { subject, seq });
            return;
        }
        self.cursors.insert(subject.clone(), seq);
        self.actions.push_back(Action::Save(Change::Cursor {
            subject: subject.clone(),
            seq,
        }));
        self.notify(Notice::Deliver { subject, seq });
    }

    fn answer(&mut self, id: String, answer: SendResult) {
        let written = self.outbox.iter().take(self.written);
        if let Some(i) = written.into_iter().position(|q| q.id == id) {
            self.outbox.remove(i);
            self.written -= 1;
            self.actions
                .push_back(Action::Save(Change::OutboxRemoved { id: id.clone() }));
        }
        // A later answer for a send the session no longer holds (the STORED after a
        // QUEUED) goes to the app as well.
        self.notify(Notice::Send {
            id,
            status: SendStatus::Answered(answer),
        });
        self.write_sends();
    }

    fn go_away(&mut self, reason: String, after: Duration, now: Instant) {
        let State::Connected { route, .. } = self.state else {
            return;
        };
        self.actions.push_back(Action::Close {
            reason: format!("going away: {reason}"),
        });
        self.written = 0;
        // Elsewhere: the next round starts at the next route of another gateway.
        let n = self.routes.len();
        let here = self.routes[route].gateway;
        self.start_route = (1..n)
            .map(|i| (route + i) % n)
            .find(|&r| self.routes[r].gateway != here)
            .unwrap_or(self.start_route);
        let at = now + after;
        self.state = State::Waiting { at };
        self.notify(Notice::Disconnected {
            reason: format!("going away: {reason}"),
            retry_at: Some(at),
        });
    }

    /// Writes unwritten sends in order while the window has room.
    /// How long the path may stay quiet before a probe: shorter while a send waits.
    fn quiet_before_probe(&self) -> Duration {
        if self.written > 0 {
            self.config.send_probe_after.min(self.config.keepalive)
        } else {
            self.config.keepalive
        }
    }

    fn write_sends(&mut self) {
        if !matches!(self.state, State::Connected { .. }) {
            return;
        }
        while self.written < self.config.send_window
            && let Some(q) = self.outbox.get(self.written)
        {
            self.actions.push_back(Action::Write(Outgoing::Send {
                id: q.id.clone(),
                frame: q.frame.clone(),
            }));
            self.written += 1;
        }
    }
}
