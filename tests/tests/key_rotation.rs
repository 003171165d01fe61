//! Signing keys from a key set (JWKS), as an operator rotates them: a key published
//! before use is taken on first sight, a retired key stops working at the next
//! refresh, a broken publication keeps the keys in use, and tokens naming made-up
//! keys cannot make the gateway fetch more than once per `jwks_min_refetch_secs`.

use std::time::Duration;

use petrel_client::{ClientError, TransportKind::*};
use petrel_tests::issuer::{JwksServer, SigningKey, jwks};
use petrel_tests::{TestTopology, Topology};

fn refused(r: Result<petrel_client::Connection, ClientError>) -> anyhow::Result<(String, String)> {
    match r {
        Err(ClientError::Refused { code, message }) => Ok((code, message)),
        Err(other) => anyhow::bail!("expected a refusal, got error {other}"),
        Ok(_) => anyhow::bail!("expected a refusal, got a connection"),
    }
}

const UNKNOWN_KID_OK: &str =
    "petrel_key_set_refreshes_total{trigger=\"unknown_kid\",result=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_published_before_use_is_taken_on_first_sight() -> anyhow::Result<()> {
    let (a, b) = (SigningKey::new("key-a")?, SigningKey::new("key-b")?);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&a])?)?;
    let path = file.clone();
    let t = Topology::start_with(1, move |cfg, _| {
        cfg.auth.jwks_file = Some(path.clone());
        cfg.auth.jwks_refresh_secs = 3600;
        cfg.auth.jwks_min_refetch_secs = 3600;
        Ok(())
    })
    .await?;
    let alice = t
        .connect_with_token(0, Quic, &a.token("alice", 600)?, "phone")
        .await?;
    alice.send("alice", "with-key-a", "x").await?;
    // The issuer publishes key b, then signs with it: the first token naming b makes
    // the gateway read the set again, and is welcomed.
    std::fs::write(&file, jwks(&[&a, &b])?)?;
    for transport in [WebSocket, Quic] {
        let bob = t
            .connect_with_token(0, transport, &b.token("bob", 600)?, "phone")
            .await?;
        bob.send("bob", &format!("with-key-b-{transport}"), "x")
            .await?;
    }
    assert_eq!(t.wait_metric(0, UNKNOWN_KID_OK, |v| v >= 1.0).await?, 1.0);
    // Made-up kids are refused in plain words, and within the cooldown they cause no
    // further reads of the set.
    for i in 0..5 {
        let token = a.token_with_kid("mallory", 600, &format!("made-up-{i}"))?;
        let (code, message) = refused(t.connect_with_token(0, Quic, &token, "d").await)?;
        assert_eq!(code, "UNAUTHENTICATED");
        assert!(message.contains("does not know"), "{message}");
    }
    let metrics = t.http_get(0, "/metrics").await?;
    assert_eq!(
        petrel_tests::metric_sample(&metrics, UNKNOWN_KID_OK),
        Some(1.0),
        "made-up kids fetched again within the cooldown"
    );
    // A key-set key verifies only its own algorithm and its own signatures.
    let forged = b.token_with_kid("mallory", 600, "key-a")?;
    let (code, _) = refused(t.connect_with_token(0, Quic, &forged, "d").await)?;
    assert_eq!(code, "UNAUTHENTICATED");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_stops_working_at_the_next_refresh_and_a_broken_set_is_not_taken()
-> anyhow::Result<()> {
    let (a, b) = (SigningKey::new("2026-11")?, SigningKey::new("2026-12")?);
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("issuer-ca.pem");
    let server = JwksServer::https(jwks(&[&a, &b])?, &ca).await?;
    let (url, ca_file) = (server.url.clone(), ca.clone());
    let t = Topology::start_with(1, move |cfg, _| {
        cfg.auth.jwks_url = Some(url.clone());
        cfg.auth.jwks_ca_file = Some(ca_file.clone());
        cfg.auth.jwks_refresh_secs = 1;
        Ok(())
    })
    .await?;
    for key in [&a, &b] {
        let c = t
            .connect_with_token(0, Quic, &key.token("alice", 600)?, "phone")
            .await?;
        c.close().await;
    }
    // Key a is retired: after the next refresh its tokens are refused.
    server.set(200, jwks(&[&b])?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match t
            .connect_with_token(0, Quic, &a.token("alice", 600)?, "phone")
            .await
        {
            Err(ClientError::Refused { code, .. }) => {
                assert_eq!(code, "UNAUTHENTICATED");
                break;
            }
            Err(other) => anyhow::bail!("unexpected error {other}"),
            Ok(c) => c.close().await,
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "key a still accepted 10 s after it was retired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken publication (an error page, then a set with no usable key) is not
    // taken: b keeps working, and the failures are counted.
    let errors = "petrel_key_set_refreshes_total{trigger=\"timer\",result=\"error\"}";
    let before =
        petrel_tests::metric_sample(&t.http_get(0, "/metrics").await?, errors).unwrap_or_default();
    server.set(503, "unavailable".into());
    let after_503 = t.wait_metric(0, errors, |v| v > before).await?;
    server.set(
        200,
        r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#.into(),
    );
    // Two more failures: at most one request was in flight at the switch, so at least
    // one of them read the set without a usable key.
    t.wait_metric(0, errors, |v| v >= after_503 + 2.0).await?;
    let bob = t
        .connect_with_token(0, WebSocket, &b.token("bob", 600)?, "phone")
        .await?;
    bob.send("bob", "still-b", "x").await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_load_its_key_set_does_not_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-jwks.json");
    let result = Topology::start_with(1, move |cfg, _| {
        cfg.auth.jwks_file = Some(missing.clone());
        Ok(())
    })
    .await;
    let Err(e) = result else {
        anyhow::bail!("a gateway started without its key set");
    };
    let text = format!("{e:#}");
    assert!(
        text.contains("token key set") && text.contains("no-such-jwks.json"),
        "{text}"
    );
    Ok(())
}
