//! Bad tokens, bad ids and bad bytes: each refused with a clear code, nothing stored,
//! and other clients unaffected.

use std::time::Duration;

use bytes::Bytes;
use petrel_client::{ClientError, Read, SendResult, TransportKind, TransportKind::*, connect_raw};
use petrel_core::auth::{Claims, mint_hs256};
use petrel_proto::{FrameDecoder, encode_frame, pb};
use petrel_tests::{SECRET, TestTopology, Topology, next_message};
use prost::Message as _;

fn now() -> u64 {
    petrel_core::time::unix_secs()
}

fn refused_code(r: Result<petrel_client::Connection, ClientError>) -> String {
    match r {
        Err(ClientError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal, got error {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_ids_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let before = t.stored_in_every_stream().await?;
    for transport in [Quic, WebSocket] {
        let forged = mint_hs256(
            b"not-the-gateway-secret-not-the-gateway-secret",
            &Claims {
                sub: "alice".into(),
                device: None,
                exp: now() + 600,
                iat: None,
                nbf: None,
            },
        )
        .unwrap();
        assert_eq!(
            refused_code(t.connect_with_token(0, transport, &forged, "d").await),
            "UNAUTHENTICATED"
        );
        let expired = mint_hs256(
            SECRET.as_bytes(),
            &Claims {
                sub: "alice".into(),
                device: None,
                exp: now() - 600,
                iat: None,
                nbf: None,
            },
        )
        .unwrap();
        assert_eq!(
            refused_code(t.connect_with_token(0, transport, &expired, "d").await),
            "TOKEN_EXPIRED"
        );
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600))
        );
        assert_eq!(
            refused_code(t.connect_with_token(0, transport, &none, "d").await),
            "UNAUTHENTICATED"
        );
        for bad_user in ["al.ice", "*", ">", "a b", &"x".repeat(65)] {
            let tok = mint_hs256(
                SECRET.as_bytes(),
                &Claims {
                    sub: bad_user.into(),
                    device: None,
                    exp: now() + 600,
                    iat: None,
                    nbf: None,
                },
            )
            .unwrap();
            assert_eq!(
                refused_code(t.connect_with_token(0, transport, &tok, "d").await),
                "INVALID_ID",
                "{bad_user:?}"
            );
        }
        assert_eq!(
            refused_code(t.connect(0, transport, "alice", "dev.ice").await),
            "INVALID_ID"
        );

        // Authenticated, but bad recipients and message ids: rejected per send, connection stays.
        let alice = t.connect(0, transport, "alice", "phone").await?;
        for bad in ["bob.x", "*", ">", "bob >", "b o b", &"b".repeat(65), ""] {
            match alice.send(bad, "ok-id", "x").await? {
                SendResult::Rejected { code, .. } => {
                    assert_eq!(code, "INVALID_ID", "{bad:?}")
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        for bad_id in ["a.b", "*", "id with space", &"i".repeat(65)] {
            match alice.send("bob", bad_id, "x").await? {
                SendResult::Rejected { code, .. } => {
                    assert_eq!(code, "INVALID_ID", "{bad_id:?}")
                }
                other => panic!("{bad_id:?} accepted: {other:?}"),
            }
        }
        match alice.send("bob", "empty", Bytes::new()).await? {
            SendResult::Rejected { code, .. } => assert_eq!(code, "INVALID_MESSAGE"),
            other => panic!("empty message accepted: {other:?}"),
        }
        match alice.send("bob", "big", vec![b'x'; 40_000]).await? {
            SendResult::Rejected { code, .. } => assert_eq!(code, "INVALID_MESSAGE"),
            other => panic!("oversize message accepted: {other:?}"),
        }
    }
    assert_eq!(
        t.stored_in_every_stream().await?,
        before,
        "something was stored for a refused request"
    );
    t.stop().await;
    Ok(())
}

/// Sends raw bytes and returns the error code of the Error frame and the close code.
async fn offend(
    t: &Topology,
    transport: TransportKind,
    first: Option<Bytes>,
    bytes: &[Bytes],
    finish: bool,
) -> anyhow::Result<(i32, Option<u32>)> {
    let (code, ended) = offend_raw(t, transport, first, bytes, finish).await?;
    let close = match ended {
        Ended::Closed(close) => close,
        Ended::Dropped(e) => anyhow::bail!("{transport}: dropped without a close: {e}"),
    };
    Ok((
        code.ok_or_else(|| anyhow::anyhow!("{transport}: no Error frame before close {close:?}"))?,
        close,
    ))
}

/// How an offending connection ended.
#[derive(Debug)]
enum Ended {
    /// The gateway closed it, with this close code if it gave one.
    Closed(Option<u32>),
    /// The connection broke without a close (reset, lost).
    Dropped(String),
}

/// Sends raw bytes and reads until the connection ends (failing if it has not ended
/// within 10 s); returns the Error frame's code, if one came, and how it ended.
async fn offend_raw(
    t: &Topology,
    transport: TransportKind,
    first: Option<Bytes>,
    bytes: &[Bytes],
    finish: bool,
) -> anyhow::Result<(Option<i32>, Ended)> {
    eprintln!(
        "offending over {transport}: {:?}",
        bytes.iter().map(|b| b.len()).collect::<Vec<_>>()
    );
    let (mut reader, mut writer) = connect_raw(&t.endpoint(0, transport)).await?;
    if let Some(hello) = first {
        writer.write(hello).await?;
    }
    for b in bytes {
        writer.write(b.clone()).await?;
    }
    if finish {
        writer.finish().await?;
    }
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut error_code = None;
    let ended = loop {
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read()).await;
        let read = read.map_err(|_| anyhow::anyhow!("{transport}: not closed within 10 s"))?;
        match read {
            Ok(Read::Data(d)) => {
                decoder.push(&d);
                while let Some(f) = decoder.next_frame()? {
                    if let Some(pb::server_frame::Kind::Error(e)) = pb::ServerFrame::decode(f)?.kind
                    {
                        error_code = Some(e.code);
                    }
                }
            }
            Ok(Read::Closed(info)) => break Ended::Closed(info.map(|i| i.code)),
            Err(e) => break Ended::Dropped(e.to_string()),
        }
    };
    Ok((error_code, ended))
}

fn hello(t: &Topology) -> Bytes {
    encode_frame(&pb::ClientFrame {
        kind: Some(pb::client_frame::Kind::Hello(pb::Hello {
            token: t.token("mallory"),
            device: "d".into(),
            cursors: vec![],
            protocol_version: 1,
            delivery_streams: 0,
        })),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversize_and_truncated_frames_close_only_the_offender() -> anyhow::Result<()> {
    use pb::ErrorCode as E;
    let t = Topology::start(1).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut bob = t.connect(0, WebSocket, "bob", "phone").await?;
    for transport in [Quic, WebSocket] {
        let close = |c: E| match transport {
            Quic => Some(c as u32),
            WebSocket => Some(4000 + c as u32),
        };
        // Garbage before Hello: a valid varint length but bytes that are no protobuf.
        let garbage = Bytes::from_static(&[5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (code, closed) =
            offend(&t, transport, None, std::slice::from_ref(&garbage), false).await?;
        assert_eq!(
            (code, closed),
            (E::BadFrame as i32, close(E::BadFrame)),
            "{transport} garbage"
        );
        // Garbage after a good Hello.
        let (code, closed) = offend(&t, transport, Some(hello(&t)), &[garbage], false).await?;
        assert_eq!(
            (code, closed),
            (E::BadFrame as i32, close(E::BadFrame)),
            "{transport} garbage after hello"
        );
        // A length prefix of 1 GiB.
        let huge = Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x04]);
        let (code, closed) = offend(&t, transport, Some(hello(&t)), &[huge], false).await?;
        assert_eq!(
            (code, closed),
            (E::FrameTooLarge as i32, close(E::FrameTooLarge)),
            "{transport} oversize"
        );
        // An over-long varint.
        let bad_len = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let (code, _) = offend(&t, transport, None, &[bad_len], false).await?;
        assert_eq!(code, E::BadFrame as i32, "{transport} bad varint");
        // A frame announcing 100 bytes, 3 sent, then the client ends its side. QUIC
        // half-closes, so the gateway still answers BAD_FRAME; on WebSocket the client's
        // close starts the close handshake, after which no frame may be sent, so the
        // gateway can only finish the close: promptly, with a close, and nothing but
        // BAD_FRAME said before it.
        let truncated = Bytes::from_static(&[100, 1, 2, 3]);
        let started = std::time::Instant::now();
        let (code, ended) = offend_raw(&t, transport, Some(hello(&t)), &[truncated], true).await?;
        match transport {
            Quic => assert_eq!(code, Some(E::BadFrame as i32), "{transport} truncated"),
            WebSocket => {
                assert!(
                    code.is_none_or(|c| c == E::BadFrame as i32),
                    "{transport} truncated: {code:?}"
                );
                assert!(
                    matches!(ended, Ended::Closed(_)),
                    "{transport} truncated: {ended:?}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{transport} truncated: the close took {:?}",
                    started.elapsed()
                );
            }
        }
        // A well-formed frame of an unknown kind (field 15).
        let unknown = Bytes::from_static(&[2, 0x7a, 0x00]);
        let (code, _) = offend(&t, transport, Some(hello(&t)), &[unknown], false).await?;
        assert_eq!(code, E::UnknownFrame as i32, "{transport} unknown");
        // Nothing at all: the handshake timeout (2 s in tests) closes it. (On QUIC a
        // stream nobody wrote to does not exist yet, so there is only the close code.)
        let (code, ended) = offend_raw(&t, transport, None, &[], false).await?;
        let closed = match ended {
            Ended::Closed(c) => c,
            Ended::Dropped(e) => anyhow::bail!("{transport} silent: dropped: {e}"),
        };
        assert_eq!(closed, close(E::HandshakeTimeout), "{transport} silent");
        if transport == WebSocket {
            assert_eq!(code, Some(E::HandshakeTimeout as i32));
        }
    }
    // A WebSocket message larger than the frame limit.
    let big = Bytes::from(vec![0u8; 200_000]);
    let (code, _) = offend(&t, WebSocket, Some(hello(&t)), &[big], false).await?;
    assert_eq!(code, E::FrameTooLarge as i32);

    // The well-behaved clients never noticed.
    let r = alice.send("bob", "still-fine", "still fine").await?;
    assert!(matches!(r, SendResult::Stored { .. }), "{r:?}");
    let m = next_message(&mut bob, 10).await?;
    assert_eq!(m.client_msg_id, "still-fine");
    t.stop().await;
    Ok(())
}
