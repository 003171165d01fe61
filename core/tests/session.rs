//! The session state machine driven by a simulated peer and a fake clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_core::auth::{Authenticator, Claims, mint_hs256};
use petrel_core::session::{Action, Now, PublishOutcome, Session, SessionConfig};
use petrel_core::wire::{Command, Recipient, Reply, SendCommand, SendStatus, StoredMessage};
use petrel_core::{ClientMsgId, ErrorCode, Seq, UserId};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

struct Clock(Instant, u64);
impl Clock {
    fn now(&self) -> Now {
        Now {
            mono: self.0,
            unix_ms: self.1,
        }
    }
    fn advance(&mut self, d: Duration) {
        self.0 += d;
        self.1 += d.as_millis() as u64;
    }
}

/// The fake clock's Unix time at the start of every test (ms); tokens are valid for
/// 300 s from it.
const T0: u64 = 1_800_000_000_000;

fn token(user: &str) -> String {
    let exp = T0 / 1000 + 300;
    mint_hs256(
        SECRET,
        &Claims {
            sub: user.into(),
            device: None,
            exp,
            iat: None,
            nbf: None,
        },
    )
    .unwrap()
}

fn session(clock: &Clock) -> Session {
    let cfg = Arc::new(SessionConfig {
        max_inflight_sends: 2,
        ..SessionConfig::default()
    });
    let auth = Arc::new(Authenticator::new(Some(SECRET), None).unwrap());
    Session::new("c1", cfg, auth, clock.now())
}

fn hello(user: &str) -> Command {
    Command::Hello {
        token: token(user),
        device: "phone".into(),
        cursors: vec![],
        delivery_streams: 0,
        protocol_version: 1,
    }
}

fn send(id: &str, to: &str) -> Command {
    Command::Send(SendCommand {
        id: ClientMsgId::parse(id).unwrap(),
        to: Recipient::User(UserId::parse(to).unwrap()),
        content: Bytes::from_static(b"hi"),
        content_type: "text/plain".into(),
        reply_to: None,
        mentions: Vec::new(),
    })
}

fn closed_with(actions: &[Action]) -> Option<ErrorCode> {
    actions.iter().find_map(|a| match a {
        Action::Close(code, _) => Some(*code),
        _ => None,
    })
}

#[test]
fn hello_joins_then_welcomes() {
    let clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    let out = s.on_command(hello("alice"), clock.now());
    assert!(matches!(&out[..], [Action::Join(id)] if id.user.as_str() == "alice"));
    let out = s.on_joined(clock.now());
    assert!(matches!(&out[..], [Action::Reply(Reply::Welcome { user, .. })] if user == "alice"));
    // After Hello the only deadline left is the token's expiry (300 s here), not the
    // 10 s handshake timeout.
    assert!(
        s.deadline()
            .is_some_and(|d| d > clock.0 + Duration::from_secs(60))
    );
}

#[test]
fn delivery_streams_are_capped_then_granted_by_the_transport() {
    let clock = Clock(Instant::now(), T0);
    let ask = |n: u32| Command::Hello {
        token: token("alice"),
        device: "phone".into(),
        cursors: vec![],
        delivery_streams: n,
        protocol_version: 1,
    };
    let welcome_streams = |out: &[Action]| match out {
        [
            Action::Reply(Reply::Welcome {
                delivery_streams, ..
            }),
        ] => *delivery_streams,
        other => panic!("expected Welcome, got {other:?}"),
    };
    // Asked for more than the cap: capped; the transport grants all of that.
    let mut s = session(&clock);
    s.on_command(ask(1000), clock.now());
    assert_eq!(
        s.delivery_streams(),
        petrel_core::wire::MAX_DELIVERY_STREAMS
    );
    s.grant_delivery_streams(u32::MAX);
    assert_eq!(
        welcome_streams(&s.on_joined(clock.now())),
        petrel_core::wire::MAX_DELIVERY_STREAMS
    );
    // WebSocket grants none, whatever was asked.
    let mut s = session(&clock);
    s.on_command(ask(8), clock.now());
    assert_eq!(s.delivery_streams(), 8);
    s.grant_delivery_streams(0);
    assert_eq!(welcome_streams(&s.on_joined(clock.now())), 0);
}

#[test]
fn handshake_timeout_closes() {
    let mut clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    assert!(
        s.on_timeout(clock.now()).is_empty(),
        "fired before the deadline"
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        closed_with(&s.on_timeout(clock.now())),
        Some(ErrorCode::HandshakeTimeout)
    );
    assert!(s.is_closed());
}

#[test]
fn frames_before_hello_and_second_hello_are_protocol_errors() {
    let clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    assert_eq!(
        closed_with(&s.on_command(send("m1", "bob"), clock.now())),
        Some(ErrorCode::Protocol)
    );
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    assert_eq!(
        closed_with(&s.on_command(hello("alice"), clock.now())),
        Some(ErrorCode::Protocol)
    );
}

#[test]
fn bad_tokens_are_refused_with_their_codes() {
    let clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    let out = s.on_command(
        Command::Hello {
            token: "x.y.z".into(),
            device: "d".into(),
            cursors: vec![],
            delivery_streams: 0,
            protocol_version: 1,
        },
        clock.now(),
    );
    assert_eq!(closed_with(&out), Some(ErrorCode::Unauthenticated));
    let mut s = session(&clock);
    let out = s.on_command(
        Command::Hello {
            token: token("alice"),
            device: "a.b".into(),
            cursors: vec![],
            delivery_streams: 0,
            protocol_version: 1,
        },
        clock.now(),
    );
    assert_eq!(closed_with(&out), Some(ErrorCode::InvalidId));
}

#[test]
fn send_publishes_two_copies_and_reports_the_recipient_sequence() {
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    let out = s.on_command(send("m1", "bob"), clock.now());
    let [Action::Publish(p)] = &out[..] else {
        panic!("{out:?}")
    };
    let subjects: Vec<_> = p.copies.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["msg.private.bob", "msg.private.alice"]);
    assert_ne!(p.copies[0].msg_id, p.copies[1].msg_id);
    let stored = StoredMessage::decode(p.payload.clone()).unwrap();
    assert_eq!(
        (
            stored.from.as_str(),
            stored.to.user().unwrap().as_str(),
            stored.time_ms
        ),
        ("alice", "bob", T0 + 42)
    );
    let out = s.on_published(
        p.req,
        PublishOutcome::Stored {
            seq: Seq(7),
            duplicate: false,
        },
    );
    let [
        Action::Reply(Reply::SendResult {
            client_msg_id,
            status: SendStatus::Stored { subject, seq, .. },
        }),
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (client_msg_id.as_str(), subject.as_str(), *seq),
        ("m1", "msg.private.bob", Seq(7))
    );
}

#[test]
fn note_to_self_is_one_copy() {
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    let out = s.on_command(send("m1", "alice"), clock.now());
    assert!(matches!(&out[..], [Action::Publish(p)] if p.copies.len() == 1));
}

#[test]
fn inflight_budget_applies_backpressure() {
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    assert!(s.wants_frames());
    let mut reqs = vec![];
    for id in ["a", "b"] {
        if let [Action::Publish(p)] = &s.on_command(send(id, "bob"), clock.now())[..] {
            reqs.push(p.req);
        }
    }
    assert!(!s.wants_frames(), "budget of 2 used up but still reading");
    s.on_published(
        reqs[0],
        PublishOutcome::Failed {
            code: ErrorCode::Unavailable,
            detail: "x".into(),
        },
    );
    assert!(s.wants_frames());
}

#[test]
fn queued_frees_the_budget_and_the_final_result_follows() {
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    let mut reqs = vec![];
    for id in ["a", "b"] {
        if let [Action::Publish(p)] = &s.on_command(send(id, "bob"), clock.now())[..] {
            reqs.push(p.req);
        }
    }
    assert!(!s.wants_frames());
    let out = s.on_published(reqs[0], PublishOutcome::Queued);
    let [
        Action::Reply(Reply::SendResult {
            client_msg_id,
            status: SendStatus::Queued { subject, msg_id },
        }),
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (client_msg_id.as_str(), subject.as_str(), msg_id.as_str()),
        ("a", "msg.private.bob", "dm:alice:a")
    );
    assert!(
        s.wants_frames(),
        "a queued send is durable: it leaves the budget"
    );
    assert_eq!(s.inflight(), 1);
    // A second QUEUED for the same send is not repeated.
    assert!(s.on_published(reqs[0], PublishOutcome::Queued).is_empty());
    let out = s.on_published(
        reqs[0],
        PublishOutcome::Stored {
            seq: Seq(9),
            duplicate: false,
        },
    );
    assert!(
        matches!(&out[..], [Action::Reply(Reply::SendResult { client_msg_id, status: SendStatus::Stored { seq: Seq(9), .. } })] if client_msg_id == "a"),
        "{out:?}"
    );
    assert!(
        s.on_published(
            reqs[0],
            PublishOutcome::Stored {
                seq: Seq(9),
                duplicate: false
            }
        )
        .is_empty(),
        "answered once"
    );
}

#[test]
fn content_limits_and_acks() {
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    let empty = Command::Send(SendCommand {
        id: ClientMsgId::parse("e").unwrap(),
        to: Recipient::User(UserId::parse("bob").unwrap()),
        reply_to: None,
        mentions: Vec::new(),
        content: Bytes::new(),
        content_type: String::new(),
    });
    let out = s.on_command(empty, clock.now());
    assert!(matches!(
        &out[..],
        [Action::Reply(Reply::SendResult {
            status: SendStatus::Rejected {
                code: ErrorCode::InvalidMessage,
                ..
            },
            ..
        })]
    ));
    let out = s.on_command(
        Command::Ack(vec![("msg.private.alice".into(), Seq(5))]),
        clock.now(),
    );
    // No answer to the client; the push service is told what this device has.
    assert!(
        matches!(&out[..], [Action::Acknowledged { cursors, .. }] if cursors == &[("msg.private.alice".to_string(), Seq(5))]),
        "an ack is answered by nothing: {out:?}"
    );
    let cursor = |s: &Session| {
        s.cursors()
            .find(|(subject, _)| *subject == "msg.private.alice")
            .map(|(_, seq)| seq)
    };
    assert_eq!(cursor(&s), Some(Seq(5)), "the ack moved the cursor");
    // Cumulative: an older ack does not move the cursor back (and tells nobody).
    assert!(
        s.on_command(
            Command::Ack(vec![("msg.private.alice".into(), Seq(3))]),
            clock.now()
        )
        .is_empty()
    );
    assert_eq!(cursor(&s), Some(Seq(5)), "an older ack kept the cursor");
    // Someone else's subject is refused without closing.
    let out = s.on_command(
        Command::Ack(vec![("msg.private.bob".into(), Seq(3))]),
        clock.now(),
    );
    assert!(matches!(
        &out[..],
        [Action::Reply(Reply::Error { fatal: false, .. })]
    ));
    assert!(!s.is_closed());
}

#[test]
fn connection_closes_when_the_token_expires() {
    let mut clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now()); // token valid 300 s
    s.on_joined(clock.now());
    let deadline = s.deadline().expect("an expiry deadline");
    assert!(deadline >= clock.0 + Duration::from_secs(290));
    clock.advance(Duration::from_secs(200));
    assert!(s.on_timeout(clock.now()).is_empty());
    clock.advance(Duration::from_secs(101));
    assert_eq!(
        closed_with(&s.on_timeout(clock.now())),
        Some(ErrorCode::TokenExpired)
    );
}

#[test]
fn send_rate_is_limited_per_connection() {
    let mut clock = Clock(Instant::now(), T0 + 42);
    let cfg = Arc::new(SessionConfig {
        max_inflight_sends: 1000,
        send_rate_per_sec: 10,
        send_burst: 3,
        ..SessionConfig::default()
    });
    let auth = Arc::new(Authenticator::new(Some(SECRET), None).unwrap());
    let mut s = Session::new("c1", cfg, auth, clock.now());
    s.on_command(hello("alice"), clock.now());
    let outcome = |s: &mut Session, id: &str, clock: &Clock| match &s
        .on_command(send(id, "bob"), clock.now())[..]
    {
        [Action::Publish(_)] => "published",
        [
            Action::Reply(Reply::SendResult {
                status:
                    SendStatus::Rejected {
                        code: ErrorCode::RateLimited,
                        ..
                    },
                ..
            }),
        ] => "limited",
        other => panic!("{other:?}"),
    };
    // A burst of 3, then refused until time refills the bucket at 10/s.
    let burst: Vec<_> = (0..4)
        .map(|i| outcome(&mut s, &format!("b{i}"), &clock))
        .collect();
    assert_eq!(burst, ["published", "published", "published", "limited"]);
    clock.advance(Duration::from_millis(50));
    assert_eq!(outcome(&mut s, "c0", &clock), "limited");
    clock.advance(Duration::from_millis(60));
    assert_eq!(outcome(&mut s, "c1", &clock), "published");
    assert!(
        !s.is_closed(),
        "rate limiting rejects sends, it does not close"
    );
}

#[test]
fn a_token_that_expires_beyond_what_an_instant_holds_does_not_panic() {
    let clock = Clock(Instant::now(), T0);
    let auth = Authenticator::new(Some(SECRET), None).unwrap().with_policy(
        petrel_core::auth::TokenPolicy {
            leeway_secs: 5,
            max_lifetime_secs: u64::MAX,
        },
    );
    let mut s = Session::new(
        "c1",
        Arc::new(SessionConfig::default()),
        Arc::new(auth),
        clock.now(),
    );
    let forever = mint_hs256(
        SECRET,
        &Claims {
            sub: "alice".into(),
            device: None,
            exp: u64::MAX,
            iat: None,
            nbf: None,
        },
    )
    .unwrap();
    let out = s.on_command(
        Command::Hello {
            token: forever,
            device: "phone".into(),
            cursors: vec![],
            delivery_streams: 0,
            protocol_version: 1,
        },
        clock.now(),
    );
    assert!(matches!(&out[..], [Action::Join(_)]), "{out:?}");
    let out = s.on_joined(clock.now());
    assert!(closed_with(&out).is_none(), "{out:?}");
}

#[test]
fn content_type_history_pages_and_watch_lists_are_bounded() {
    let mut clock = Clock(Instant::now(), T0);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    s.on_joined(clock.now());
    // A content_type is a MIME type, not a second payload.
    let long = Command::Send(SendCommand {
        reply_to: None,
        mentions: Vec::new(),
        id: ClientMsgId::parse("ct").unwrap(),
        to: Recipient::User(UserId::parse("bob").unwrap()),
        content: Bytes::from_static(b"hi"),
        content_type: "x".repeat(129),
    });
    let out = s.on_command(long, clock.now());
    assert!(
        matches!(
            &out[..],
            [Action::Reply(Reply::SendResult {
                status: SendStatus::Rejected {
                    code: ErrorCode::InvalidMessage,
                    ..
                },
                ..
            })]
        ),
        "{out:?}"
    );
    // History: a burst of 20 pages, then RATE_LIMITED answers, then pages again.
    let sync = |n: u64| {
        Command::Sync(petrel_core::wire::SyncRequest {
            request_id: n,
            subject: "msg.private.alice".into(),
            newest_first: true,
            before: Seq(0),
            after: Seq(0),
            limit: 10,
            with: None,
        })
    };
    for n in 0..20 {
        let out = s.on_command(sync(n), clock.now());
        assert!(matches!(&out[..], [Action::Sync(_)]), "page {n}: {out:?}");
    }
    let out = s.on_command(sync(20), clock.now());
    assert!(
        matches!(
            &out[..],
            [Action::Reply(Reply::SyncBatch {
                error: Some((ErrorCode::RateLimited, _)),
                ..
            })]
        ),
        "{out:?}"
    );
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        &s.on_command(sync(21), clock.now())[..],
        [Action::Sync(_)]
    ));
    // Watch lists: a burst of 5 replacements, then refused without closing.
    let bob = || Command::Watch(vec![UserId::parse("bob").unwrap()]);
    for n in 0..5 {
        let out = s.on_command(bob(), clock.now());
        assert!(matches!(&out[..], [Action::Watch(_)]), "watch {n}: {out:?}");
    }
    let out = s.on_command(bob(), clock.now());
    assert!(
        matches!(
            &out[..],
            [Action::Reply(Reply::Error {
                code: ErrorCode::RateLimited,
                fatal: false,
                ..
            })]
        ),
        "{out:?}"
    );
    assert!(!s.is_closed());
    clock.advance(Duration::from_secs(6));
    assert!(matches!(
        &s.on_command(bob(), clock.now())[..],
        [Action::Watch(_)]
    ));
}

#[test]
fn push_registrations_are_checked_then_stored_for_this_device() {
    use petrel_core::push::{Preview, PushTarget};
    use petrel_core::wire::PushRequest;
    let clock = Clock(Instant::now(), T0 + 42);
    let mut s = session(&clock);
    s.on_command(hello("alice"), clock.now());
    let request = |id, token: &str| {
        Command::RegisterPush(PushRequest {
            request_id: id,
            target: Some(PushTarget::Apns {
                token: token.into(),
                topic: "com.example.app".into(),
                sandbox: true,
            }),
            locale: "en-GB".into(),
            preview: Preview::Hide,
        })
    };
    let out = s.on_command(request(7, "00ff"), clock.now());
    match &out[..] {
        [
            Action::RegisterPush {
                request_id: 7,
                user,
                registration: Some(r),
                ..
            },
        ] => {
            assert_eq!(user.as_str(), "alice");
            assert_eq!(r.preview, Preview::Hide);
            assert_eq!(r.registered_ms, clock.now().unix_ms);
        }
        other => panic!("{other:?}"),
    }
    // A malformed token is answered at once, never stored.
    let out = s.on_command(request(8, "not hex"), clock.now());
    assert!(matches!(
        &out[..],
        [Action::Reply(Reply::PushRegistered {
            request_id: 8,
            error: Some((ErrorCode::InvalidMessage, _))
        })]
    ));
    // No target: unregister.
    let out = s.on_command(
        Command::RegisterPush(PushRequest {
            request_id: 9,
            target: None,
            locale: String::new(),
            preview: Preview::Default,
        }),
        clock.now(),
    );
    assert!(matches!(
        &out[..],
        [Action::RegisterPush {
            request_id: 9,
            registration: None,
            ..
        }]
    ));
}

fn joined(clock: &Clock, user: &str) -> Session {
    let mut s = session(clock);
    s.on_command(hello(user), clock.now());
    s.on_joined(clock.now());
    s
}

fn amend(id: &str, target: &str, content: Option<&'static [u8]>) -> Command {
    Command::Amend(petrel_core::wire::AmendCommand {
        id: ClientMsgId::parse(id).unwrap(),
        amendment: petrel_core::wire::Amendment {
            target: ClientMsgId::parse(target).unwrap(),
            recall: content.is_none(),
        },
        content: content.map(Bytes::from_static).unwrap_or_default(),
        content_type: "text/plain".into(),
    })
}

fn rejected(out: &[Action]) -> Option<(ErrorCode, String)> {
    out.iter().find_map(|a| match a {
        Action::Reply(Reply::SendResult {
            status: SendStatus::Rejected { code, detail },
            ..
        }) => Some((*code, detail.clone())),
        _ => None,
    })
}

#[test]
fn an_amend_is_published_to_its_originals_conversation_within_the_window_only() {
    use petrel_core::session::Original;
    let mut clock = Clock(Instant::now(), T0);
    let mut s = joined(&clock, "alice");
    let bob = Recipient::User(UserId::parse("bob").unwrap());
    let original = |age_ms: u64, recalled| Original {
        to: bob.clone(),
        time_ms: T0 - age_ms,
        recalled,
    };
    // Inside the window (15 minutes by default): both copies, like the original's.
    let out = s.on_command(amend("e1", "m1", Some(b"hello")), clock.now());
    let [Action::FindOriginal { req, user, target }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((user.as_str(), target.as_str()), ("alice", "m1"));
    let out = s.on_original(*req, Ok(Some(original(60_000, false))), clock.now());
    let [Action::Publish(p)] = &out[..] else {
        panic!("{out:?}")
    };
    let subjects: Vec<&str> = p.copies.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["msg.private.bob", "msg.private.alice"]);
    let stored = StoredMessage::decode(p.payload.clone()).unwrap();
    let a = stored.meta.amends.unwrap();
    assert_eq!((a.target.as_str(), a.recall), ("m1", false));
    assert_eq!(&stored.content[..], b"hello");
    // Past the window, not found, recalled, the service away: refused, each clearly.
    clock.advance(Duration::from_secs(1));
    for (found, code, says) in [
        (
            Ok(Some(original(16 * 60_000, false))),
            ErrorCode::Forbidden,
            "can no longer",
        ),
        (Ok(None), ErrorCode::Forbidden, "no message of alice"),
        (
            Ok(Some(original(1000, true))),
            ErrorCode::Forbidden,
            "recalled",
        ),
        (
            Err((ErrorCode::Unavailable, "away".to_string())),
            ErrorCode::Unavailable,
            "away",
        ),
    ] {
        let out = s.on_command(amend("e2", "m1", None), clock.now());
        let [Action::FindOriginal { req, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        let out = s.on_original(*req, found, clock.now());
        let (c, detail) = rejected(&out).unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(c, code);
        assert!(detail.contains(says), "{detail}");
    }
    // A recall carries no content; an edit needs some.
    assert!(rejected(&s.on_command(amend("e3", "m1", Some(b"")), clock.now())).is_some());
    let mut with_content = amend("e4", "m1", None);
    if let Command::Amend(a) = &mut with_content {
        a.content = Bytes::from_static(b"x");
    }
    assert!(rejected(&s.on_command(with_content, clock.now())).is_some());
}

#[test]
fn a_read_mark_goes_to_the_users_own_inbox_and_a_group_one_needs_membership() {
    let clock = Clock(Instant::now(), T0);
    let mut s = joined(&clock, "bob");
    let mark = |conversation| {
        Command::MarkRead(petrel_core::wire::ReadMark {
            conversation,
            seq: Seq(7),
        })
    };
    let out = s.on_command(
        mark(Recipient::User(UserId::parse("alice").unwrap())),
        clock.now(),
    );
    let [Action::Publish(p)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(p.copies.len(), 1);
    assert_eq!(p.copies[0].subject, "msg.private.bob");
    let stored = StoredMessage::decode(p.payload.clone()).unwrap();
    assert_eq!(stored.meta.read.map(|r| r.seq), Some(Seq(7)));
    // Not answered: its outcome makes no reply.
    let done = s.on_published(
        p.req,
        PublishOutcome::Stored {
            seq: Seq(9),
            duplicate: false,
        },
    );
    assert!(done.is_empty(), "{done:?}");
    let team = petrel_core::GroupId::parse("team").unwrap();
    let out = s.on_command(mark(Recipient::Group(team.clone())), clock.now());
    assert!(
        matches!(
            &out[..],
            [Action::Reply(Reply::Error {
                code: ErrorCode::Forbidden,
                ..
            })]
        ),
        "{out:?}"
    );
    s.set_groups([team.clone()].into_iter().collect());
    let out = s.on_command(mark(Recipient::Group(team)), clock.now());
    assert!(matches!(&out[..], [Action::Publish(_)]), "{out:?}");
}

#[test]
fn a_conversation_setting_is_checked_then_asked_for_and_a_group_one_needs_membership() {
    use petrel_proto::pb;
    let clock = Clock(Instant::now(), T0);
    let mut s = joined(&clock, "bob");
    let set = |conversation, pinned, muted| {
        let frame = pb::ClientFrame {
            kind: Some(pb::client_frame::Kind::SetConversation(
                pb::SetConversation {
                    request_id: 5,
                    conversation,
                    pinned,
                    muted,
                },
            )),
        };
        petrel_core::wire::decode_command(prost::Message::encode_to_vec(&frame).into()).unwrap()
    };
    let refused = |out: &[Action]| match out {
        [
            Action::Reply(Reply::Conversations {
                request_id: 5,
                page: Err((code, why)),
            }),
        ] => Some((*code, why.clone())),
        _ => None,
    };
    let alice = || Some(pb::set_conversation::Conversation::User("alice".into()));
    let team = || Some(pb::set_conversation::Conversation::Group("team".into()));
    // Nothing to change, no conversation, a bad id: refused on the request id.
    let out = s.on_command(set(alice(), None, None), clock.now());
    let (code, why) = refused(&out).unwrap();
    assert_eq!(code, ErrorCode::InvalidMessage);
    assert!(why.contains("set pinned or muted"), "{why}");
    let out = s.on_command(set(None, Some(true), None), clock.now());
    assert_eq!(refused(&out).map(|r| r.0), Some(ErrorCode::InvalidMessage));
    let bad = Some(pb::set_conversation::Conversation::User("no spaces".into()));
    let out = s.on_command(set(bad, Some(true), None), clock.now());
    assert_eq!(refused(&out).map(|r| r.0), Some(ErrorCode::InvalidId));
    // A direct one goes to the service with only what was set.
    let out = s.on_command(set(alice(), Some(true), None), clock.now());
    let [
        Action::SetConversation {
            request_id: 5,
            user,
            settings,
            ..
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(user.as_str(), "bob");
    assert_eq!(settings.pinned, Some(true));
    assert_eq!(settings.muted, None);
    // A group needs membership.
    let out = s.on_command(set(team(), None, Some(true)), clock.now());
    let (code, why) = refused(&out).unwrap();
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(why.contains("not a member of group team"), "{why}");
    let g = petrel_core::GroupId::parse("team").unwrap();
    s.set_groups([g.clone()].into_iter().collect());
    let out = s.on_command(set(team(), None, Some(true)), clock.now());
    assert!(
        matches!(&out[..], [Action::SetConversation { groups, .. }] if groups == &vec![g]),
        "{out:?}"
    );
}
