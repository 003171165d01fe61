//! The conformance vectors of `proto/conformance/session.json`, run against the
//! session core (the TypeScript SDK runs the same file in web/test/sdk.test.mjs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_client::session::{
    self, Action, Config, Incoming, Notice, Outgoing, Route, SendStatus, Session,
};
use petrel_client::{SendResult, TransportKind};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/conformance/session.json"
    );
    let text = std::fs::read_to_string(path).expect("the conformance vectors");
    serde_json::from_str(&text).expect("valid JSON")
}

fn pairs(v: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = v
        .as_array()
        .expect("an array of [subject, seq]")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("subject").to_string(),
                p[1].as_u64().expect("seq"),
            )
        })
        .collect();
    out.sort();
    out
}

/// A session over one WebSocket route, with a fixed jitter draw and a clock that
/// jumps to each timer.
struct Run {
    s: Session,
    now: Instant,
    attempt: u64,
    actions: Vec<Action>,
}

impl Run {
    fn new(cursors: Vec<(String, u64)>) -> Self {
        let now = Instant::now();
        let route = Route {
            transport: TransportKind::WebSocket,
            gateway: 0,
        };
        let mut s = Session::new(
            Config::default(),
            vec![route],
            cursors,
            Vec::new(),
            Box::new(|| 0.5),
            now,
        );
        s.handle_timeout(now);
        let mut r = Self {
            s,
            now,
            attempt: 0,
            actions: Vec::new(),
        };
        r.drain();
        r
    }

    fn drain(&mut self) {
        while let Some(a) = self.s.poll_action() {
            if let Action::Open { attempt, .. } = a {
                self.attempt = attempt;
            }
            self.actions.push(a);
        }
    }

    fn take(&mut self) -> Vec<Action> {
        self.drain();
        std::mem::take(&mut self.actions)
    }

    /// Opens the transport; returns the Hello's cursors, sorted.
    fn open(&mut self) -> Vec<(String, u64)> {
        self.s.opened(self.attempt, self.now);
        let mut hello = self
            .take()
            .into_iter()
            .find_map(|a| match a {
                Action::Write(Outgoing::Hello { cursors }) => Some(cursors),
                _ => None,
            })
            .expect("a Hello");
        hello.sort();
        hello
    }

    fn recv(&mut self, f: Incoming) {
        self.s.received(self.attempt, f, self.now);
        self.drain();
    }

    fn drop_and_wait(&mut self) {
        self.s
            .failed(self.attempt, None, "dropped".into(), self.now);
        self.drain();
        let at = self.s.poll_timeout().expect("a reconnect");
        self.now = self.now.max(at);
        self.s.handle_timeout(self.now);
        self.drain();
    }
}

#[test]
fn error_codes_and_close_codes_are_named_alike() {
    let v = vectors();
    for c in v["error_codes"].as_array().expect("error_codes") {
        let n = c[0].as_i64().expect("number") as i32;
        assert_eq!(
            petrel_proto::error_code_name(n),
            c[1].as_str().expect("name")
        );
    }
    for c in v["close_codes"].as_array().expect("close_codes") {
        let close = c["close"].as_u64().expect("close") as u16;
        let code = c["code"].as_i64().expect("code") as i32;
        let got = match c["transport"].as_str() {
            Some("websocket") => petrel_proto::error_code_of_websocket_close(close).unwrap_or(0),
            // QUIC and WebTransport: the application close code is the error code.
            _ => i32::from(close),
        };
        assert_eq!(got, code, "{c}");
    }
}

#[test]
fn the_same_refusals_stop_reconnecting_and_the_backoff_has_the_same_ceilings() {
    let v = vectors();
    for c in v["permanent"].as_array().expect("permanent") {
        assert!(session::is_permanent(c.as_str().expect("code")), "{c}");
    }
    for c in v["retried"].as_array().expect("retried") {
        assert!(!session::is_permanent(c.as_str().expect("code")), "{c}");
    }
    let b = &v["backoff"];
    let config = Config::default();
    assert_eq!(
        config.backoff_initial.as_millis() as u64,
        b["initial_ms"].as_u64().expect("initial")
    );
    assert_eq!(
        config.backoff_max.as_millis() as u64,
        b["max_ms"].as_u64().expect("max")
    );
    for (n, c) in b["ceilings_ms"]
        .as_array()
        .expect("ceilings")
        .iter()
        .enumerate()
    {
        let want = Duration::from_millis(c.as_u64().expect("ms"));
        assert_eq!(
            session::backoff_ceiling(&config, n as u32),
            want,
            "attempt {n}"
        );
    }
}

#[test]
fn resume_and_duplicate_vectors() {
    for case in vectors()["resume"].as_array().expect("resume") {
        let name = case["name"].as_str().unwrap_or("?");
        let mut run = Run::new(pairs(&case["cursors"]));
        let mut hellos = Vec::new();
        for conn in case["connections"].as_array().expect("connections") {
            hellos.push(run.open());
            run.recv(Incoming::Welcome {
                cursors: pairs(&conn["welcome"]),
            });
            for d in conn["deliver"].as_array().expect("deliver") {
                run.recv(Incoming::Message {
                    subject: d[0].as_str().expect("subject").into(),
                    seq: d[1].as_u64().expect("seq"),
                });
            }
            let app: Vec<(String, u64)> = run
                .take()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Notify(Notice::Deliver { subject, seq }) => Some((subject, seq)),
                    _ => None,
                })
                .collect();
            let want: Vec<(String, u64)> = conn["app"]
                .as_array()
                .expect("app")
                .iter()
                .map(|p| (p[0].as_str().expect("s").into(), p[1].as_u64().expect("q")))
                .collect();
            assert_eq!(app, want, "{name}: what reached the app");
            run.drop_and_wait();
        }
        let want_hellos: Vec<Vec<(String, u64)>> = case["hellos"]
            .as_array()
            .expect("hellos")
            .iter()
            .map(pairs)
            .collect();
        assert_eq!(hellos, want_hellos, "{name}: the Hellos' cursors");
    }
}

fn answer(status: &str) -> SendResult {
    match status {
        "STORED" => SendResult::Stored {
            subject: "msg.private.carol".into(),
            seq: 1,
            msg_id: String::new(),
            duplicate: false,
        },
        "QUEUED" => SendResult::Queued {
            msg_id: String::new(),
        },
        _ => SendResult::Rejected {
            code: "FORBIDDEN".into(),
            detail: String::new(),
        },
    }
}

#[test]
fn resend_vectors() {
    for case in vectors()["resend"].as_array().expect("resend") {
        let name = case["name"].as_str().unwrap_or("?");
        let mut run = Run::new(Vec::new());
        let mut results = BTreeMap::new();
        for (i, conn) in case["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .enumerate()
        {
            run.open();
            run.recv(Incoming::Welcome {
                cursors: Vec::new(),
            });
            if i == 0 {
                for id in case["sends"].as_array().expect("sends") {
                    let id = id.as_str().expect("id").to_string();
                    run.s.send(id.clone(), Bytes::from(id)).expect("taken");
                }
            }
            let written: Vec<String> = run
                .take()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Write(Outgoing::Send { id, .. }) => Some(id),
                    _ => None,
                })
                .collect();
            let expect: Vec<&str> = conn["expect"]
                .as_array()
                .expect("expect")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(written, expect, "{name}: connection {i} got");
            for a in conn["answers"].as_array().expect("answers") {
                let id = a[0].as_str().expect("id").to_string();
                run.recv(Incoming::SendResult {
                    id,
                    answer: answer(a[1].as_str().expect("status")),
                });
            }
            for a in run.take() {
                if let Action::Notify(Notice::Send {
                    id,
                    status: SendStatus::Answered(r),
                }) = a
                {
                    let status = match r {
                        SendResult::Stored { .. } => "stored",
                        SendResult::Queued { .. } => "queued",
                        SendResult::Rejected { .. } => "rejected",
                    };
                    results.insert(id, status.to_string());
                }
            }
            run.drop_and_wait();
        }
        let want: BTreeMap<String, String> =
            serde_json::from_value(case["results"].clone()).expect("results: id → status");
        assert_eq!(results, want, "{name}: the app's results");
    }
}
