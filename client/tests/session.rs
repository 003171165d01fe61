//! The session core against a scripted gateway and a fake clock: drops mid-send,
//! duplicates across a reconnect, GoAway, a cursor moved back in Welcome, backoff
//! with pinned jitter, the QUIC → WebSocket fallback and dead-path probes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_client::session::{
    Action, Change, Config, Incoming, Notice, Outgoing, Route, SendStatus, Session,
};
use petrel_client::{SendResult, TransportKind};

/// A session with a fake clock, a pinned jitter draw and the actions it asked for.
struct Script {
    s: Session,
    now: Instant,
    attempt: u64,
}

const QUIC: Route = Route {
    transport: TransportKind::Quic,
    gateway: 0,
};
const WS: Route = Route {
    transport: TransportKind::WebSocket,
    gateway: 0,
};

fn stored(seq: u64) -> SendResult {
    SendResult::Stored {
        subject: "msg.private.bob".into(),
        seq,
        msg_id: format!("m{seq}"),
        duplicate: false,
    }
}

impl Script {
    fn new(routes: Vec<Route>, cursors: Vec<(&str, u64)>) -> Self {
        Self::with(Config::default(), routes, cursors, 0.5)
    }

    fn with(config: Config, routes: Vec<Route>, cursors: Vec<(&str, u64)>, draw: f64) -> Self {
        let now = Instant::now();
        let cursors = cursors.into_iter().map(|(s, q)| (s.to_string(), q));
        let s = Session::new(
            config,
            routes,
            cursors,
            Vec::new(),
            Box::new(move || draw),
            now,
        );
        let mut sc = Self { s, now, attempt: 0 };
        sc.tick(Duration::ZERO);
        sc
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.s.handle_timeout(self.now);
    }

    /// Runs the clock to the session's next timer.
    fn run_to_timer(&mut self) {
        let at = self.s.poll_timeout().expect("a timer");
        self.now = self.now.max(at);
        self.s.handle_timeout(self.now);
    }

    fn actions(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.s.poll_action() {
            if let Action::Open { attempt, .. } = a {
                self.attempt = attempt;
            }
            out.push(a);
        }
        out
    }

    /// The route of the `Open` among the actions so far.
    fn opened_route(&mut self) -> usize {
        let a = self.actions();
        a.iter()
            .rev()
            .find_map(|a| match a {
                Action::Open { route, .. } => Some(*route),
                _ => None,
            })
            .expect("an Open")
    }

    /// Opens the transport and answers the Hello with Welcome.
    fn connect(&mut self, welcome: Vec<(&str, u64)>) -> Vec<Action> {
        self.actions();
        self.s.opened(self.attempt, self.now);
        let mut a = self.actions();
        self.recv(Incoming::Welcome {
            cursors: welcome
                .into_iter()
                .map(|(s, q)| (s.to_string(), q))
                .collect(),
        });
        a.extend(self.actions());
        a
    }

    fn recv(&mut self, f: Incoming) {
        self.s.received(self.attempt, f, self.now);
    }

    fn drop_connection(&mut self, reason: &str) -> Vec<Action> {
        self.s
            .failed(self.attempt, None, reason.to_string(), self.now);
        self.actions()
    }

    fn deliver(&mut self, subject: &str, seq: u64) -> Vec<Notice> {
        self.recv(Incoming::Message {
            subject: subject.into(),
            seq,
        });
        notices(self.actions())
    }

    fn send(&mut self, id: &str) {
        self.s
            .send(id.into(), Bytes::from(format!("frame-{id}")))
            .expect("accepted");
    }
}

fn notices(a: Vec<Action>) -> Vec<Notice> {
    a.into_iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn sends_written(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Write(Outgoing::Send { id, .. }) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn hello(a: &[Action]) -> Vec<(String, u64)> {
    a.iter()
        .find_map(|a| match a {
            Action::Write(Outgoing::Hello { cursors }) => Some(cursors.clone()),
            _ => None,
        })
        .expect("a Hello")
}

fn retry_at(a: &[Action]) -> Option<Instant> {
    a.iter()
        .find_map(|a| match a {
            Action::Notify(Notice::Disconnected { retry_at, .. }) => Some(*retry_at),
            _ => None,
        })
        .expect("a Disconnected")
}

#[test]
fn sends_cut_off_mid_flight_are_resent_in_order_with_their_ids_after_the_reconnect() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    let a = sc.connect(vec![]);
    assert!(a.contains(&Action::Notify(Notice::Connected {
        route: 0,
        transport: TransportKind::Quic
    })));
    for id in ["m1", "m2", "m3"] {
        sc.send(id);
    }
    assert_eq!(sends_written(&sc.actions()), ["m1", "m2", "m3"]);
    sc.recv(Incoming::SendResult {
        id: "m1".into(),
        answer: stored(1),
    });
    let a = sc.actions();
    assert!(a.contains(&Action::Save(Change::OutboxRemoved { id: "m1".into() })));
    // The connection drops with m2 and m3 unanswered; m4 is sent while offline.
    sc.drop_connection("reset");
    sc.send("m4");
    let a = notices(sc.actions());
    assert!(a.contains(&Notice::Send {
        id: "m4".into(),
        status: SendStatus::Pending
    }));
    sc.run_to_timer();
    let a = sc.connect(vec![]);
    assert_eq!(sends_written(&a), ["m2", "m3", "m4"]);
    assert_eq!(sc.s.outbox().collect::<Vec<_>>(), ["m2", "m3", "m4"]);
    // QUEUED is final: not resent after another drop.
    sc.recv(Incoming::SendResult {
        id: "m2".into(),
        answer: SendResult::Queued {
            msg_id: "m2".into(),
        },
    });
    sc.drop_connection("reset");
    sc.run_to_timer();
    assert_eq!(sends_written(&sc.connect(vec![])), ["m3", "m4"]);
}

#[test]
fn a_second_send_with_a_waiting_id_is_refused_and_the_window_is_kept() {
    let config = Config {
        send_window: 2,
        ..Config::default()
    };
    let mut sc = Script::with(config, vec![WS], vec![], 0.5);
    sc.connect(vec![]);
    sc.send("a");
    let err = sc.s.send("a".into(), Bytes::new()).unwrap_err();
    assert_eq!(err.code(), "DUPLICATE_SEND");
    sc.send("b");
    sc.send("c");
    assert_eq!(sends_written(&sc.actions()), ["a", "b"]);
    // An answer out of order opens the window for the next one.
    sc.recv(Incoming::SendResult {
        id: "b".into(),
        answer: stored(2),
    });
    assert_eq!(sends_written(&sc.actions()), ["c"]);
    assert_eq!(sc.s.outbox().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn a_delivery_seen_before_a_reconnect_is_dropped_and_the_next_hello_resumes_after_it() {
    let mut sc = Script::new(vec![QUIC], vec![("msg.private.bob", 4)]);
    let a = sc.connect(vec![]);
    assert_eq!(hello(&a), [("msg.private.bob".to_string(), 4)]);
    assert_eq!(
        sc.deliver("msg.private.bob", 5),
        [Notice::Deliver {
            subject: "msg.private.bob".into(),
            seq: 5
        }]
    );
    sc.deliver("msg.group.g", 9);
    sc.drop_connection("reset");
    sc.run_to_timer();
    let a = sc.connect(vec![]);
    assert_eq!(
        hello(&a),
        [
            ("msg.group.g".to_string(), 9),
            ("msg.private.bob".to_string(), 5)
        ]
    );
    // The gateway repeats 5 (say the cursor crossed an ack in flight): dropped.
    assert_eq!(
        sc.deliver("msg.private.bob", 5),
        [Notice::Duplicate {
            subject: "msg.private.bob".into(),
            seq: 5
        }]
    );
    assert!(matches!(
        sc.deliver("msg.private.bob", 6)[..],
        [Notice::Deliver { seq: 6, .. }]
    ));
}

#[test]
fn a_welcome_cursor_below_the_devices_moves_it_back_and_what_follows_is_delivered() {
    let mut sc = Script::new(vec![QUIC], vec![("msg.private.bob", 40)]);
    let a = sc.connect(vec![("msg.private.bob", 3)]);
    assert!(a.contains(&Action::Save(Change::Cursor {
        subject: "msg.private.bob".into(),
        seq: 3
    })));
    assert!(matches!(
        sc.deliver("msg.private.bob", 4)[..],
        [Notice::Deliver { seq: 4, .. }]
    ));
    // A Welcome cursor above the device's is not a reason to skip anything.
    let mut sc = Script::new(vec![QUIC], vec![("msg.private.bob", 4)]);
    sc.connect(vec![("msg.private.bob", 9)]);
    assert!(matches!(
        sc.deliver("msg.private.bob", 5)[..],
        [Notice::Deliver { seq: 5, .. }]
    ));
}

#[test]
fn nothing_reaches_the_app_before_welcome() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    sc.actions();
    sc.s.opened(sc.attempt, sc.now);
    assert!(sc.deliver("msg.private.bob", 1).is_empty());
}

#[test]
fn reconnect_delays_double_with_full_jitter_up_to_the_cap_and_welcome_resets_them() {
    let config = Config {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
        ..Config::default()
    };
    // A draw of 0.5: each delay is half its ceiling.
    let mut sc = Script::with(config, vec![WS], vec![], 0.5);
    let mut delays = Vec::new();
    for _ in 0..6 {
        sc.actions();
        let a = sc.drop_connection("refused");
        let at = retry_at(&a).expect("retrying");
        delays.push((at - sc.now).as_millis());
        sc.run_to_timer();
    }
    assert_eq!(delays, [50, 100, 200, 400, 500, 500]);
    sc.connect(vec![]);
    let a = sc.drop_connection("reset");
    assert_eq!((retry_at(&a).expect("retrying") - sc.now).as_millis(), 50);
}

#[test]
fn network_up_reconnects_at_once_and_starts_the_backoff_over() {
    let mut sc = Script::new(vec![WS], vec![]);
    for _ in 0..5 {
        sc.actions();
        sc.drop_connection("unreachable");
        sc.run_to_timer();
    }
    sc.actions();
    let a = sc.drop_connection("unreachable");
    assert!(retry_at(&a).expect("retrying") > sc.now + Duration::from_secs(1));
    sc.s.network_up(sc.now);
    assert!(matches!(sc.actions()[..], [Action::Open { .. }]));
    let a = sc.drop_connection("unreachable");
    assert_eq!(
        retry_at(&a).expect("retrying") - sc.now,
        Duration::from_millis(125)
    );
}

#[test]
fn go_away_reconnects_to_another_gateway_after_its_delay_and_resends() {
    let other = Route {
        transport: TransportKind::Quic,
        gateway: 1,
    };
    let mut sc = Script::new(vec![QUIC, WS, other], vec![]);
    assert_eq!(sc.opened_route(), 0);
    sc.connect(vec![]);
    sc.send("m1");
    sc.actions();
    sc.recv(Incoming::GoAway {
        reason: "draining".into(),
        reconnect_after: Duration::from_millis(700),
    });
    let a = sc.actions();
    assert!(matches!(a[0], Action::Close { .. }));
    let at = retry_at(&a).expect("retrying");
    assert_eq!(at - sc.now, Duration::from_millis(700));
    // Not an error for the app: no Error notice.
    assert!(!notices(a).iter().any(|n| matches!(n, Notice::Error { .. })));
    sc.tick(Duration::from_millis(699));
    assert!(sc.actions().is_empty());
    sc.tick(Duration::from_millis(1));
    assert_eq!(sc.opened_route(), 2);
    assert_eq!(sends_written(&sc.connect(vec![])), ["m1"]);
}

#[test]
fn quic_that_does_not_answer_gives_way_to_websocket_which_is_remembered_then_retried() {
    let config = Config::default();
    let remember = config.remember_fallback;
    let mut sc = Script::with(config, vec![QUIC, WS], vec![], 0.5);
    assert_eq!(sc.opened_route(), 0);
    // UDP is blocked: nothing comes back within the QUIC timeout.
    sc.tick(Duration::from_secs(3));
    let a = sc.actions();
    assert!(matches!(a[0], Action::Close { .. }));
    assert!(matches!(a[1], Action::Open { route: 1, .. }));
    let a = sc.connect(vec![]);
    assert!(a.contains(&Action::Save(Change::QuicSkipped { for_: remember })));
    assert_eq!(sc.s.connected(), Some((1, TransportKind::WebSocket)));
    // While remembered, a reconnect goes straight to WebSocket.
    sc.drop_connection("reset");
    sc.run_to_timer();
    assert_eq!(sc.opened_route(), 1);
    sc.connect(vec![]);
    // Once the memory has run out, QUIC is tried first again.
    sc.tick(remember);
    sc.drop_connection("reset");
    sc.run_to_timer();
    assert_eq!(sc.opened_route(), 0);
}

#[test]
fn a_silent_path_is_probed_after_the_keepalive_and_given_up_after_the_probe_timeout() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    sc.connect(vec![]);
    // Heard from recently: no probe.
    sc.tick(Duration::from_secs(15));
    sc.recv(Incoming::Other);
    sc.tick(Duration::from_secs(15));
    assert!(sc.actions().is_empty());
    sc.tick(Duration::from_secs(5));
    assert!(matches!(
        sc.actions()[..],
        [Action::Write(Outgoing::Ping { .. })]
    ));
    // A Pong clears the probe.
    sc.recv(Incoming::Other);
    sc.tick(Duration::from_secs(20));
    assert!(matches!(
        sc.actions()[..],
        [Action::Write(Outgoing::Ping { .. })]
    ));
    // The gateway vanished: no Pong.
    sc.tick(Duration::from_secs(5));
    let a = sc.actions();
    assert!(matches!(&a[0], Action::Close { reason } if reason == "no answer from the gateway"));
    assert!(retry_at(&a).is_some());
}

#[test]
fn a_send_waiting_for_its_answer_probes_a_quiet_path_sooner_than_the_keepalive() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    sc.connect(vec![]);
    sc.send("m1");
    sc.actions();
    sc.tick(Duration::from_secs(2));
    assert!(sc.actions().is_empty());
    sc.tick(Duration::from_secs(1));
    assert!(matches!(
        sc.actions()[..],
        [Action::Write(Outgoing::Ping { .. })]
    ));
    sc.tick(Duration::from_secs(5));
    let a = sc.actions();
    assert!(matches!(&a[0], Action::Close { reason } if reason == "no answer from the gateway"));
    // Answered sends leave the keepalive alone.
    sc.run_to_timer();
    let a = sc.connect(vec![]);
    assert_eq!(sends_written(&a), ["m1"]);
    sc.recv(Incoming::SendResult {
        id: "m1".into(),
        answer: stored(1),
    });
    sc.actions();
    sc.tick(Duration::from_secs(19));
    assert!(sc.actions().is_empty());
}

fn controls_written(a: &[Action]) -> Vec<Bytes> {
    a.iter()
        .filter_map(|a| match a {
            Action::Write(Outgoing::Control(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn read_marks_and_receipts_made_offline_are_written_after_welcome_and_typing_is_not() {
    let config = Config {
        max_deferred: 3,
        ..Config::default()
    };
    let mut sc = Script::with(config, vec![QUIC], vec![], 0.5);
    let frame = |s: &'static str| Bytes::from_static(s.as_bytes());
    // Not connected yet: kept by key, the latest read mark of a conversation wins.
    sc.s.control(Some("read group g".into()), frame("read g 5"));
    sc.s.control(None, frame("typing"));
    sc.s.control(Some("receipt read s 1".into()), frame("receipt 1"));
    sc.s.control(Some("read group g".into()), frame("read g 9"));
    assert!(controls_written(&sc.actions()).is_empty());
    let a = sc.connect(vec![]);
    assert_eq!(
        controls_written(&a),
        [frame("read g 9"), frame("receipt 1")]
    );
    // Connected: written at once, typing too.
    sc.s.control(None, frame("typing"));
    assert_eq!(controls_written(&sc.actions()), [frame("typing")]);
    // Bounded while offline: the oldest give way, and nothing is written twice.
    sc.drop_connection("reset");
    for i in 0..5 {
        sc.s.control(
            Some(format!("receipt read s {i}")),
            Bytes::from(format!("r{i}")),
        );
    }
    sc.run_to_timer();
    let a = sc.connect(vec![]);
    assert_eq!(
        controls_written(&a),
        [Bytes::from("r2"), Bytes::from("r3"), Bytes::from("r4")]
    );
    sc.drop_connection("reset");
    sc.run_to_timer();
    assert!(controls_written(&sc.connect(vec![])).is_empty());
}

#[test]
fn a_permanent_refusal_stops_reconnecting_and_a_passing_one_does_not() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    sc.actions();
    sc.s.failed(sc.attempt, Some("UNAVAILABLE"), "hub away".into(), sc.now);
    assert!(retry_at(&sc.actions()).is_some());
    sc.run_to_timer();
    sc.actions();
    sc.s.failed(
        sc.attempt,
        Some("UNAUTHENTICATED"),
        "bad token".into(),
        sc.now,
    );
    assert_eq!(retry_at(&sc.actions()), None);
    assert_eq!(sc.s.poll_timeout(), None);
    assert_eq!(
        sc.s.send("late".into(), Bytes::new()).unwrap_err().code(),
        "CLOSED"
    );
}

#[test]
fn events_from_a_connection_already_given_up_are_ignored() {
    let mut sc = Script::new(vec![QUIC], vec![]);
    sc.connect(vec![]);
    let old = sc.attempt;
    sc.drop_connection("reset");
    sc.run_to_timer();
    sc.actions();
    sc.s.received(
        old,
        Incoming::Message {
            subject: "msg.private.bob".into(),
            seq: 1,
        },
        sc.now,
    );
    sc.s.failed(old, None, "late close".into(), sc.now);
    assert!(sc.actions().is_empty());
}
