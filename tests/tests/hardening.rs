//! Inputs an attacker chooses: numbers at the edge of their range, tokens with odd
//! times or headers, unsupported protocol versions. Each is refused (or answered) with
//! a clear code, never a panic, and the connection's accounting is released.

use std::time::Duration;

use base64::Engine;
use petrel_client::{ClientError, Read, TransportKind::*, connect_raw};
use petrel_core::auth::{Claims, mint_hs256};
use petrel_proto::{FrameDecoder, encode_frame, pb};
use petrel_tests::{SECRET, TestTopology, Topology};
use prost::Message as _;

fn now() -> u64 {
    petrel_core::time::unix_secs()
}

fn claims(exp: u64) -> Claims {
    Claims {
        sub: "mallory".into(),
        device: None,
        exp,
        iat: None,
        nbf: None,
    }
}

fn signed(c: &Claims) -> String {
    mint_hs256(SECRET.as_bytes(), c).unwrap_or_default()
}

/// A token with a header of our choosing, signed with the gateway's secret.
fn with_header(header: serde_json::Value, c: &Claims) -> anyhow::Result<String> {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let signing_input = format!("{}.{}", b64(&header), b64(&serde_json::to_value(c)?));
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )?;
    Ok(format!("{signing_input}.{sig}"))
}

/// The code and message a refused connection got.
fn refusal(r: Result<petrel_client::Connection, ClientError>) -> (String, String) {
    match r {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(other) => panic!("expected a refusal, got error {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

/// Polls `/readyz` until `connections` and `live_subscriptions` are both 0.
async fn wait_released(t: &Topology) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let conns = t.counter(0, "connections").await?;
        let subs = t.counter(0, "live_subscriptions").await?;
        if conns == 0 && subs == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "still counted: connections={conns} live_subscriptions={subs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_valid_until_the_end_of_time_is_refused_and_accounted_for() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    for transport in [Quic, WebSocket] {
        let forever = signed(&claims(u64::MAX));
        let (code, message) = refusal(t.connect_with_token(0, transport, &forever, "d").await);
        assert_eq!(code, "UNAUTHENTICATED", "{transport}");
        assert!(message.contains("longer than"), "{transport}: {message}");
    }
    wait_released(&t).await?;
    // The gateway is still fine.
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    alice.send("alice", "still-up", "x").await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_from_the_last_possible_sequence_is_answered() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    for transport in [Quic, WebSocket] {
        let bob = t.connect(0, transport, "bob", "phone").await?;
        bob.send("bob", &format!("note-{transport}"), "to self")
            .await?;
        let after_all = bob.history("msg.private.bob", false, u64::MAX, 10).await?;
        assert!(after_all.messages.is_empty(), "{transport}: {after_all:?}");
        let before_all = bob.history("msg.private.bob", true, u64::MAX, 10).await?;
        assert!(
            !before_all.messages.is_empty(),
            "{transport}: everything is before 2^64 - 1"
        );
        // The connection goes on.
        bob.send("bob", &format!("after-{transport}"), "x").await?;
        bob.close().await;
    }
    wait_released(&t).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_token_times_and_headers_are_refused_in_plain_words() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let n = now();
    let cases = [
        (
            "nbf in the future",
            signed(&Claims {
                nbf: Some(n + 600),
                ..claims(n + 1200)
            }),
            "not valid yet",
        ),
        (
            "iat in the future",
            signed(&Claims {
                iat: Some(n + 600),
                ..claims(n + 1200)
            }),
            "issued in the future",
        ),
        (
            "lifetime over the maximum",
            signed(&claims(n + 2 * 24 * 3600)),
            "longer than",
        ),
        (
            "crit header",
            with_header(
                serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["cnf"], "cnf": {}}),
                &claims(n + 600),
            )?,
            "crit",
        ),
        (
            "alg none",
            with_header(serde_json::json!({"alg": "none"}), &claims(n + 600))?,
            "malformed token",
        ),
    ];
    for transport in [Quic, WebSocket] {
        for (what, token, says) in &cases {
            let (code, message) = refusal(t.connect_with_token(0, transport, token, "d").await);
            assert_eq!(code, "UNAUTHENTICATED", "{transport} {what}");
            assert!(message.contains(says), "{transport} {what}: {message}");
            for internal in ["variant", "expected one of", "Error(", "Base64"] {
                assert!(!message.contains(internal), "{what}: {message:?}");
            }
        }
    }
    // A plain good token still works.
    t.connect(0, WebSocket, "alice", "phone").await?;
    t.stop().await;
    Ok(())
}

/// Says Hello with `protocol_version` over raw QUIC; the Error frame's code and close.
async fn hello_with_version(t: &Topology, version: u32) -> anyhow::Result<(i32, Option<u32>)> {
    use petrel_client::RawWriter;
    let (mut reader, mut writer): (_, RawWriter) =
        connect_raw(&t.endpoint(0, petrel_client::TransportKind::Quic)).await?;
    let hello = pb::Hello {
        token: t.token("alice"),
        device: "phone".into(),
        cursors: vec![],
        protocol_version: version,
        delivery_streams: 0,
    };
    writer
        .write(encode_frame(&pb::ClientFrame {
            kind: Some(pb::client_frame::Kind::Hello(hello)),
        }))
        .await?;
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut code = None;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read()).await;
        match read.map_err(|_| anyhow::anyhow!("version {version}: no answer in 10 s"))?? {
            Read::Data(d) => {
                decoder.push(&d);
                while let Some(f) = decoder.next_frame()? {
                    match pb::ServerFrame::decode(f)?.kind {
                        Some(pb::server_frame::Kind::Error(e)) => code = Some(e.code),
                        Some(pb::server_frame::Kind::Welcome(_)) => {
                            anyhow::bail!("protocol_version {version} was welcomed")
                        }
                        _ => {}
                    }
                }
            }
            Read::Closed(info) => {
                let code = code.ok_or_else(|| anyhow::anyhow!("no Error frame"))?;
                return Ok((code, info.map(|i| i.code)));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_version_is_refused_with_its_own_code() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let code = pb::ErrorCode::UnsupportedVersion as i32;
    for version in [0, 2, 999, u32::MAX] {
        let (got, close) = hello_with_version(&t, version).await?;
        assert_eq!(got, code, "version {version}");
        assert_eq!(close, Some(code as u32), "version {version}");
    }
    t.stop().await;
    Ok(())
}

/// Sends `request` on a new connection to edge 0's HTTP listener and reads until the
/// server closes (at most `secs`); what it answered, and how long until it closed.
async fn http_raw(t: &Topology, request: &[u8], secs: u64) -> anyhow::Result<(String, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(t.edges[0].addrs.http).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut out)).await;
    anyhow::ensure!(read.is_ok(), "the connection was still open after {secs} s");
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_http_clients_are_cut_and_the_listener_is_bounded() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.web.header_timeout_secs = 1;
        cfg.web.max_connections = 3;
        Ok(())
    })
    .await?;
    // Half a request's headers, then nothing; and nothing at all.
    let (_, slow) = http_raw(&t, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 10).await?;
    assert!(slow < Duration::from_secs(5), "slow headers held {slow:?}");
    let (_, silent) = http_raw(&t, b"", 10).await?;
    assert!(
        silent < Duration::from_secs(5),
        "a silent client held {silent:?}"
    );
    // A kept-alive connection that goes quiet after its request is cut too.
    let (answer, idle) = http_raw(&t, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 10).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        idle < Duration::from_secs(5),
        "an idle keep-alive held {idle:?}"
    );

    // Over the connection limit: 503 at once; the listener serves again afterwards.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(t.edges[0].addrs.http).await?);
    }
    let (busy, _) = http_raw(&t, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 5).await?;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.http_get(0, "/healthz").await.is_err() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_carry_no_cors_and_client_config_ignores_the_host_header() -> anyhow::Result<()>
{
    let t = Topology::start(1).await?;
    let (token, _) = http_raw(
        &t,
        b"GET /dev/token?user=alice HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
        5,
    )
    .await?;
    assert!(token.starts_with("HTTP/1.1 200"), "{token}");
    assert!(
        !token
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "a page on any origin could read the token:\n{token}"
    );
    let (hashes, _) = http_raw(
        &t,
        b"GET /cert-hashes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        5,
    )
    .await?;
    assert!(
        hashes
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{hashes}"
    );
    let (config, _) = http_raw(
        &t,
        b"GET /client-config HTTP/1.1\r\nHost: evil.example:1\r\nConnection: close\r\n\r\n",
        5,
    )
    .await?;
    assert!(!config.contains("evil.example"), "{config}");
    let quic = t.edges[0].addrs.quic;
    assert!(
        config.contains(&format!("https://127.0.0.1:{}/wt", quic.port())),
        "{config}"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_lock_out_real_clients() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.max_connections = 20;
        cfg.limits.max_unauthenticated = 16;
        cfg.limits.per_source_unauthenticated = 8;
        cfg.limits.handshake_timeout_secs = 30;
        Ok(())
    })
    .await?;
    let edge = &t.edges[0].addrs;
    let plain = edge
        .websocket_plain
        .ok_or_else(|| anyhow::anyhow!("no plain WebSocket"))?;
    // Twenty sockets from 127.0.0.1 that never say anything, on every TCP listener.
    let mut silent = Vec::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { edge.websocket } else { plain };
        silent.push(tokio::net::TcpStream::connect(addr).await?);
    }
    // Over 127.0.0.1's share: answered 503 before any upgrade.
    let mut over = tokio::net::TcpStream::connect(plain).await?;
    over.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // A real client from another address gets in, on both transports.
    for transport in [Quic, WebSocket] {
        let mut endpoint = t.endpoint(0, transport);
        endpoint.local_ip = Some("127.0.0.2".parse()?);
        let client = petrel_client::Connection::connect(petrel_client::ConnectOptions::new(
            endpoint,
            t.token("alice"),
            "phone",
        ))
        .await?;
        client
            .send("alice", &format!("in-{transport}"), "x")
            .await?;
    }
    let refused = t
        .wait_metric(
            0,
            "petrel_connections_refused_total{reason=\"source_pending\"}",
            |v| v >= 1.0,
        )
        .await?;
    assert!(refused >= 1.0);
    drop(silent);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_connecting_in_a_loop_is_refused_past_its_rate_and_others_are_not()
-> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.per_source_connects_per_sec = 1;
        cfg.limits.per_source_connect_burst = 4;
        Ok(())
    })
    .await?;
    // A burst of 4 from 127.0.0.1 is let in; the connections that follow at once are
    // refused before any handshake work: QUIC by QUIC itself, WebSocket with a 503.
    let mut refused = Vec::new();
    for i in 0..8 {
        let transport = if i % 2 == 0 { Quic } else { WebSocket };
        match t.connect(0, transport, "alice", &format!("d{i}")).await {
            Ok(c) => c.close().await,
            Err(e) => refused.push(format!("{transport}: {e}")),
        }
    }
    assert!(refused.len() >= 3, "{refused:?}");
    let counted = t
        .wait_metric(
            0,
            "petrel_connections_refused_total{reason=\"source_rate\"}",
            |v| v >= 3.0,
        )
        .await?;
    assert!(counted >= refused.len() as f64, "{counted} {refused:?}");
    // Another address is not held to 127.0.0.1's rate.
    let mut endpoint = t.endpoint(0, Quic);
    endpoint.local_ip = Some("127.0.0.3".parse()?);
    let other = petrel_client::Connection::connect(petrel_client::ConnectOptions::new(
        endpoint,
        t.token("bob"),
        "phone",
    ))
    .await?;
    other.send("bob", "other-address", "x").await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_refuses_at_hello_with_rate_limited() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.max_connections = 2;
        Ok(())
    })
    .await?;
    let a = t.connect(0, Quic, "alice", "phone").await?;
    let b = t.connect(0, WebSocket, "bob", "phone").await?;
    let (code, message) = refusal(t.connect(0, Quic, "carol", "phone").await);
    assert_eq!(code, "RATE_LIMITED");
    assert!(message.contains("full"), "{message}");
    drop((a, b));
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_text_message_is_a_protocol_error() -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let t = Topology::start(1).await?;
    let plain = t.edges[0]
        .addrs
        .websocket_plain
        .ok_or_else(|| anyhow::anyhow!("no plain WebSocket"))?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/ws")).await?;
    ws.send(Message::Text("hello".into())).await?;
    let mut error = None;
    let close = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
        match next {
            Some(Ok(Message::Binary(b))) => {
                let mut d = FrameDecoder::new(1 << 20);
                d.push(&b);
                while let Some(f) = d.next_frame()? {
                    if let Some(pb::server_frame::Kind::Error(e)) = pb::ServerFrame::decode(f)?.kind
                    {
                        error = Some(e.code);
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => anyhow::bail!("dropped without a close: {e}"),
            None => break None,
        }
    };
    let protocol = pb::ErrorCode::Protocol as i32;
    assert_eq!(error, Some(protocol));
    assert_eq!(close, Some(4000 + protocol as u16));
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_gets_a_bounded_number_of_connections_and_one_send_budget() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.max_connections_per_user = 3;
        cfg.limits.user_send_rate_per_sec = 5;
        cfg.limits.user_send_burst = 20;
        Ok(())
    })
    .await?;
    let mut alice = Vec::new();
    for i in 0..3 {
        alice.push(t.connect(0, Quic, "alice", &format!("d{i}")).await?);
    }
    let (code, message) = refusal(t.connect(0, WebSocket, "alice", "d3").await);
    assert_eq!(code, "RATE_LIMITED");
    assert!(message.contains("most connections"), "{message}");
    // Another user is not affected.
    let bob = t.connect(0, WebSocket, "bob", "phone").await?;
    // Three connections, 20 sends each at once: one budget of 20 (plus what refills).
    let mut pending = Vec::new();
    for (i, c) in alice.iter().enumerate() {
        for n in 0..20 {
            pending.push(
                c.start_send("bob", &format!("s{i}-{n}"), "x", "text/plain")
                    .await?,
            );
        }
    }
    let (mut stored, mut limited) = (0, 0);
    for p in pending {
        match p.await? {
            petrel_client::SendResult::Stored { .. } => stored += 1,
            petrel_client::SendResult::Rejected { code, .. } if code == "RATE_LIMITED" => {
                limited += 1
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!((20..=30).contains(&stored), "stored {stored} of 60");
    assert_eq!(stored + limited, 60);
    // A connection closed frees its place.
    if let Some(c) = alice.pop() {
        c.close().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match t.connect(0, WebSocket, "alice", "d4").await {
            Ok(_) => break,
            Err(e) => anyhow::ensure!(tokio::time::Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(bob);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_admits_only_its_users_and_holds_them_to_their_subjects() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let edge = &t.edges[0];
    // Nobody anonymous: no reading everything, no forging.
    assert!(
        async_nats::connect(&edge.leaf_plain_url).await.is_err(),
        "an anonymous client was admitted by the leaf"
    );
    // A business service may publish notifications, and nothing else.
    let services = petrel_devkit::nats::connect(&edge.services_url).await?;
    let js = async_nats::jetstream::with_domain(services.clone(), "hub");
    let mut everything = services.subscribe(">").await?;
    let before = t.stored_in_every_stream().await?;
    let inbox_before = t.subject_counts("msg.private.bob").await?;
    let forged = petrel_core::wire::StoredMessage {
        from: petrel_core::UserId::parse("alice")?,
        to: petrel_core::wire::Recipient::User(petrel_core::UserId::parse("bob")?),
        from_device: "phone".into(),
        client_msg_id: "forged".into(),
        content: "send me your password".into(),
        content_type: "text/plain".into(),
        time_ms: 1,
        gateway_id: "edge0".into(),
        notification: None,
        receipt: None,
        meta: Default::default(),
    };
    services.publish("msg.private.bob", forged.encode()).await?;
    services.flush().await?;
    // Then an allowed one, acknowledged: anything published before it on this
    // connection would be stored before it.
    let n = petrel_core::wire::Notification {
        id: "n1".into(),
        title: "hello".into(),
        ..Default::default()
    };
    js.publish("notif.friend.bob", n.encode()).await?.await?;
    assert_eq!(
        t.stored_in_every_stream().await?,
        before + 1,
        "only the notification"
    );
    assert_eq!(t.subject_counts("msg.private.bob").await?, inbox_before);
    // It reads nothing, and cannot use the JetStream API.
    let seen = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut everything),
    )
    .await;
    assert!(
        !matches!(seen, Ok(Some(_))),
        "a service read traffic: {seen:?}"
    );
    let api = tokio::time::timeout(Duration::from_secs(3), js.query_account()).await;
    assert!(
        !matches!(api, Ok(Ok(_))),
        "a service used the JetStream API"
    );
    // The gateway, with its own user, works as ever.
    let mut bob = t.connect(0, Quic, "bob", "phone").await?;
    let alice = t.connect(0, WebSocket, "alice", "phone").await?;
    alice.send("bob", "real", "hi").await?;
    let m = petrel_tests::next_message_on(&mut bob, "msg.private.bob", 10).await?;
    assert_eq!(m.client_msg_id, "real");
    t.stop().await;
    Ok(())
}
