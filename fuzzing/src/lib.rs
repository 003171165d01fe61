//! Fuzz targets: everything a client (or a damaged disk) can put in front of Petrel's
//! decoders and state machines, as functions of raw bytes.
//!
//! Layout:
//! - this crate (stable) holds each target as a function, [`TARGETS`] names them, and
//!   `tests/corpus.rs` runs every committed corpus input plus a seeded mutation smoke
//!   through each, in the normal test command;
//! - `fuzz/` is the cargo-fuzz crate (nightly, libFuzzer, coverage-guided): one
//!   `fuzz_targets/<name>.rs` per target calling the function here; `corpus/<name>/`
//!   are the inputs worth keeping; `scripts/fuzz.sh` runs them and reports executions
//!   and crashes.
//!
//! A target fails by panicking: on a panic in the code under test, or on a broken
//! invariant it checks (a decoded value that does not encode back the same, a
//! forwarder that lost an entry).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_core::auth::{Authenticator, Claims, KeySet, mint_hs256};
use petrel_core::outbox::{Forwarder, ForwarderConfig, Step};
use petrel_core::session::{Action, Now, PublishOutcome, Session, SessionConfig};
use petrel_core::wire::decode_command;
use petrel_core::{ErrorCode, GroupId};
use petrel_proto::{FrameDecoder, encode_frame, pb};

/// A fuzz target: any bytes in, a panic on failure.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("session", session),
    ("token", token),
    ("storage_values", storage_values),
    ("forwarder", forwarder),
];

/// Reads fuzz input as a stream of small decisions; past the end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    /// A number chosen from edge cases most of the time, any value otherwise.
    fn number(&mut self) -> u64 {
        match self.byte() % 8 {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - 1,
            4 => u64::from(u32::MAX),
            5 => u64::from(self.byte()),
            _ => self.u64(),
        }
    }
    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = (self.byte() as usize).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn text(&mut self) -> String {
        const WORDS: &[&str] = &[
            "alice",
            "bob",
            "team",
            "msg.private.alice",
            "msg.group.team",
            "",
        ];
        match self.byte() % 4 {
            0 => WORDS[self.byte() as usize % WORDS.len()].to_string(),
            _ => String::from_utf8_lossy(self.bytes(80)).into_owned(),
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Length-prefixed framing: bytes pushed in arbitrary pieces, every frame taken out
/// and decoded as a client command, the same frames decoded as server frames (what the
/// SDK reads), and the frames re-encoded must decode to the same commands.
pub fn frames(data: &[u8]) {
    let mut input = Input(data);
    let max = 1 + (input.u16() as usize);
    let mut decoder = FrameDecoder::new(max);
    while !input.is_empty() {
        let piece = input.bytes(255).to_vec();
        decoder.push(&piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max, "a frame over the limit came out");
                    let _ = <pb::ServerFrame as prost::Message>::decode(frame.clone());
                    if let Ok(cmd) = decode_command(frame.clone()) {
                        let again = decode_command(frame).ok();
                        assert_eq!(again.as_ref(), Some(&cmd), "decoding is not a function");
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789";
/// The fake clock's start (wall clock, ms).
const T0_MS: u64 = 1_800_000_000_000;

fn authenticator() -> Arc<Authenticator> {
    static AUTH: OnceLock<Arc<Authenticator>> = OnceLock::new();
    AUTH.get_or_init(|| match Authenticator::new(Some(SECRET), None) {
        Ok(a) => Arc::new(a),
        Err(e) => panic!("the fuzz secret is refused: {e}"),
    })
    .clone()
}

/// Tokens for the usual users (minting one per Hello would slow every run down).
fn usual_token(i: u8) -> String {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    let tokens = TOKENS.get_or_init(|| {
        let exps = [0, T0_MS / 1000 - 1, T0_MS / 1000 + 3600, u64::MAX];
        ["alice", "bob", "a.b", ""]
            .iter()
            .flat_map(|u| exps.iter().map(|e| token_for(u, *e)))
            .collect()
    });
    tokens[usize::from(i) % tokens.len()].clone()
}

fn token_for(user: &str, exp: u64) -> String {
    let claims = Claims {
        sub: user.into(),
        device: None,
        exp,
        iat: None,
        nbf: None,
    };
    mint_hs256(SECRET, &claims).unwrap_or_default()
}

fn client_frame(kind: pb::client_frame::Kind) -> Bytes {
    let frame = encode_frame(&pb::ClientFrame { kind: Some(kind) });
    // The session gets a frame's body, without its length prefix.
    let mut d = FrameDecoder::new(1 << 20);
    d.push(&frame);
    d.next_frame().ok().flatten().unwrap_or_default()
}

/// A structured client frame built from the input (what libFuzzer would need long to
/// find from raw protobuf bytes), or raw bytes.
fn command_frame(input: &mut Input) -> Bytes {
    use pb::client_frame::Kind;
    let kind = match input.byte() % 12 {
        0 => Kind::Hello(pb::Hello {
            token: match input.byte() % 8 {
                0 => token_for(&input.text(), T0_MS / 1000 + input.number() % 100_000),
                1 => input.text(),
                i => usual_token(i),
            },
            device: input.text(),
            cursors: (0..input.byte() % 4)
                .map(|_| pb::Cursor {
                    subject: input.text(),
                    seq: input.number(),
                })
                .collect(),
            protocol_version: u32::from(input.byte() % 3),
            delivery_streams: u32::from(input.byte()),
        }),
        1 => Kind::Send(pb::Send {
            client_msg_id: input.text(),
            to: Some(if input.byte().is_multiple_of(2) {
                pb::send::To::User(input.text())
            } else {
                pb::send::To::Group(input.text())
            }),
            content: input.bytes(255).to_vec().into(),
            content_type: input.text(),
            reply_to: input.byte().is_multiple_of(2).then(|| pb::MessageRef {
                subject: input.text(),
                seq: input.number(),
            }),
            mentions: (0..input.byte() % 40).map(|_| input.text()).collect(),
        }),
        2 => Kind::Sync(pb::Sync {
            with: if input.byte().is_multiple_of(2) {
                input.text()
            } else {
                String::new()
            },
            request_id: input.number(),
            subject: input.text(),
            newest_first: input.byte().is_multiple_of(2),
            before: input.number(),
            after: input.number(),
            limit: input.number() as u32,
        }),
        3 => Kind::Receipt(pb::Receipt {
            kind: i32::from(input.byte() % 4),
            subject: input.text(),
            seq: input.number(),
            sender: input.text(),
            client_msg_id: input.text(),
        }),
        4 => Kind::Watch(pb::Watch {
            users: (0..input.byte()).map(|_| input.text()).collect(),
        }),
        5 => Kind::Typing(pb::Typing {
            to: Some(pb::typing::To::User(input.text())),
            typing: input.byte().is_multiple_of(2),
        }),
        6 => Kind::Ping(pb::Ping {
            nonce: input.number(),
        }),
        7 => Kind::Ack(pb::Ack::default()),
        8 => Kind::Amend(pb::Amend {
            client_msg_id: input.text(),
            target: input.text(),
            recall: input.byte().is_multiple_of(2),
            content: input.bytes(64).to_vec().into(),
            content_type: input.text(),
        }),
        9 => Kind::MarkRead(pb::MarkRead {
            conversation: Some(if input.byte().is_multiple_of(2) {
                pb::mark_read::Conversation::User(input.text())
            } else {
                pb::mark_read::Conversation::Group(input.text())
            }),
            seq: input.number(),
        }),
        10 => Kind::ListConversations(pb::ListConversations {
            request_id: input.number(),
            offset: input.number() as u32,
            limit: input.number() as u32,
            follow: input.byte().is_multiple_of(2),
        }),
        _ => return Bytes::copy_from_slice(input.bytes(255)),
    };
    client_frame(kind)
}

/// One session driven by a script: commands (structured or raw), a clock that jumps,
/// the hub's answers to its publishes, membership changes and shutdown.
pub fn session(data: &[u8]) {
    let mut input = Input(data);
    let cfg = Arc::new(SessionConfig {
        max_inflight_sends: 1 + usize::from(input.byte() % 8),
        send_rate_per_sec: u32::from(input.byte()),
        ..SessionConfig::default()
    });
    let start = Instant::now();
    let mut now = Now {
        mono: start,
        unix_ms: T0_MS,
    };
    let mut s = Session::new("fuzz", cfg, authenticator(), now);
    let mut pending: Vec<u64> = Vec::new();
    // A valid Hello first, most of the time, so the script reaches the joined states.
    if input.byte() % 4 != 0 {
        let hello = client_frame(pb::client_frame::Kind::Hello(pb::Hello {
            token: usual_token(2),
            device: "phone".into(),
            cursors: vec![],
            protocol_version: 1,
            delivery_streams: 0,
        }));
        take(&mut pending, feed(&mut s, hello, now));
        take(&mut pending, s.on_joined(now));
    }
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let out = match input.byte() % 8 {
            0..=2 => {
                let frame = command_frame(&mut input);
                feed(&mut s, frame, now)
            }
            3 => {
                // Far jumps included: Instant cannot hold every u64 of seconds.
                let jump = Duration::from_millis(input.number() % (1 << 40));
                if let Some(mono) = now.mono.checked_add(jump) {
                    now.mono = mono;
                    now.unix_ms = now.unix_ms.saturating_add(jump.as_millis() as u64);
                }
                s.on_timeout(now)
            }
            4 if !pending.is_empty() => {
                let req = pending.remove(input.byte() as usize % pending.len());
                let outcome = match input.byte() % 3 {
                    0 => PublishOutcome::Stored {
                        seq: petrel_core::Seq(input.number()),
                        duplicate: input.byte().is_multiple_of(2),
                    },
                    1 => PublishOutcome::Queued,
                    _ => PublishOutcome::Failed {
                        code: ErrorCode::Unavailable,
                        detail: "hub away".into(),
                    },
                };
                if matches!(outcome, PublishOutcome::Queued) {
                    pending.push(req);
                }
                s.on_published(req, outcome)
            }
            5 => s.on_published(input.number(), PublishOutcome::Queued),
            6 => {
                let groups: HashSet<GroupId> = (0..input.byte() % 4)
                    .filter_map(|_| GroupId::parse(input.text()).ok())
                    .collect();
                let _ = s.set_groups(groups);
                Vec::new()
            }
            _ => {
                if input.byte().is_multiple_of(16) {
                    s.shutdown(ErrorCode::GoingAway, "fuzz")
                } else if input.byte().is_multiple_of(3)
                    && let Some(req) = pending.pop()
                {
                    // An amend's original, as the message service might answer.
                    let found = match input.byte() % 3 {
                        0 => Ok(None),
                        1 => Err((ErrorCode::Unavailable, "service away".into())),
                        _ => Ok(Some(petrel_core::session::Original {
                            to: petrel_core::wire::Recipient::User(
                                petrel_core::UserId::parse("bob")
                                    .unwrap_or_else(|_| unreachable!()),
                            ),
                            time_ms: T0_MS.saturating_sub(input.number() % 3_600_000),
                            recalled: input.byte().is_multiple_of(4),
                        })),
                    };
                    s.on_original(req, found, now)
                } else if let Some(req) = pending.pop() {
                    s.on_receipt_refused(req, ErrorCode::Forbidden, "no such message".into())
                } else {
                    Vec::new()
                }
            }
        };
        take(&mut pending, out);
        let _ = (s.deadline(), s.wants_frames(), s.inflight(), s.is_closed());
    }
}

fn feed(s: &mut Session, frame: Bytes, now: Now) -> Vec<Action> {
    match decode_command(frame) {
        Ok(cmd) => s.on_command(cmd, now),
        Err(e) => s.on_wire_error(e),
    }
}

/// Remembers the publishes the session asked for, to answer them later.
fn take(pending: &mut Vec<u64>, actions: Vec<Action>) {
    for a in actions {
        match a {
            Action::Publish(p) => pending.push(p.req),
            Action::CheckReceipt { publish, .. } => pending.push(publish.req),
            Action::FindOriginal { req, .. } => pending.push(req),
            _ => {}
        }
    }
}

/// Token parsing and verification (an arbitrary string at an arbitrary time), and
/// key-set parsing with a token checked against the parsed set.
pub fn token(data: &[u8]) {
    let mut input = Input(data);
    let now = input.number();
    let split = input.byte() as usize;
    let rest = input.0;
    let (device, token) = rest.split_at(split.min(rest.len()) % 65);
    let token = String::from_utf8_lossy(token);
    let device = String::from_utf8_lossy(device);
    let _ = authenticator().verify(&token, &device, now);
    if let Ok((set, _)) = KeySet::parse(rest)
        && let Ok(with_set) = Authenticator::with_keys(None, None, Some(set))
    {
        let _ = with_set.unknown_kid(&token);
        let _ = with_set.verify(&token, &device, now);
    }
}

/// Edge-cache values as read back from disk: decoding never panics, and what decodes
/// encodes back to the same bytes.
pub fn storage_values(data: &[u8]) {
    use petrel_storage::{OutboxEntry, Recent};
    let mut input = Input(data);
    let key_len = usize::from(input.byte() % 10);
    let rest = input.0;
    let (key, value) = rest.split_at(key_len.min(rest.len()));
    if let Ok(e) = OutboxEntry::decode(key, value) {
        assert_eq!(e.key.to_be_bytes().as_slice(), key);
        match e.encode() {
            Ok(again) => assert_eq!(again, value, "outbox entry does not round-trip"),
            Err(err) => panic!("a decoded outbox entry does not encode: {err}"),
        }
    }
    if let Ok(r) = Recent::decode(key, value) {
        assert_eq!(r.encode(), value, "recent entry does not round-trip");
    }
}

/// The outbox forwarder: entries pushed in order (each in one or two of four lanes),
/// published, stored, failed and retried under a clock that jumps. Nothing pushed is
/// lost: every entry is stored or still held; publishes name only entries it holds;
/// an entry goes on the wire only when no earlier entry of its lanes is unstored.
pub fn forwarder(data: &[u8]) {
    let mut input = Input(data);
    let cfg = ForwarderConfig {
        window: 1 + usize::from(input.byte() % 16),
        queue_after: Duration::from_millis(u64::from(input.u16())),
        retry_min: Duration::from_millis(1 + u64::from(input.byte())),
        retry_max: Duration::from_millis(1 + u64::from(input.u16())),
    };
    let mut f = Forwarder::new(cfg);
    let mut now = Instant::now();
    let mut next_key = 1u64;
    // Held entries (not stored) with their lanes, in key order.
    let mut held: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    let mut published: Vec<u64> = Vec::new();
    let mut told = HashSet::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        match input.byte() % 6 {
            0 | 1 => {
                let b = input.byte();
                let mut lanes = vec![u64::from(b % 4)];
                if b & 0x80 != 0 {
                    lanes.push(u64::from((b >> 2) % 4));
                }
                f.push(next_key, now, lanes.clone());
                held.insert(next_key, lanes);
                next_key += 1;
            }
            2 if !published.is_empty() => {
                let k = published.swap_remove(input.byte() as usize % published.len());
                let _recovered = f.on_stored(k);
                held.remove(&k);
            }
            3 if !published.is_empty() => {
                let k = published.swap_remove(input.byte() as usize % published.len());
                f.on_failed(k, now);
            }
            4 => now += Duration::from_millis(u64::from(input.u16())),
            _ => {}
        }
        for step in f.poll(now) {
            match step {
                Step::Publish(k) => {
                    let Some(lanes) = held.get(&k) else {
                        panic!("published {k}, which it does not hold");
                    };
                    assert!(!published.contains(&k), "{k} published twice at once");
                    let ahead = held
                        .range(..k)
                        .find(|(_, l)| l.iter().any(|x| lanes.contains(x)));
                    assert!(
                        ahead.is_none(),
                        "published {k} while {:?} of its lane is not stored",
                        ahead.map(|(e, _)| e)
                    );
                    published.push(k);
                }
                Step::TellQueued(k) => {
                    assert!(held.contains_key(&k), "queued {k}, not held");
                    assert!(told.insert(k), "told {k} QUEUED twice");
                }
            }
        }
        assert_eq!(
            f.len(),
            held.len(),
            "the forwarder lost or invented an entry"
        );
        if let Some(w) = f.next_wakeup() {
            let _ = w.saturating_duration_since(now);
        }
    }
}
