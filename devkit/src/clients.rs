//! Clients of a [`Topology`]: tokens, endpoints, connections (SDK and raw), and reading
//! what an edge's HTTP listener reports.

use std::time::Duration;

use petrel_client::{ClientError, ConnectOptions, Connection, Endpoint, TransportKind, Trust};
use petrel_core::auth::mint_dev_token;

use crate::Topology;

impl Topology {
    /// A token for `user` signed with the topology's secret, valid an hour (empty for
    /// an invalid user id: the gateway then refuses it).
    pub fn token(&self, user: &str) -> String {
        mint_dev_token(self.secret(), user, None, Duration::from_secs(3600)).unwrap_or_default()
    }

    /// The endpoint of edge `edge` for `transport`.
    pub fn endpoint(&self, edge: usize, transport: TransportKind) -> Endpoint {
        let e = &self.edges[edge];
        Endpoint {
            transport,
            address: match transport {
                TransportKind::Quic => e.addrs.quic.to_string(),
                TransportKind::WebSocket => format!("wss://{}/ws", e.addrs.websocket),
            },
            trust: Trust::from_hex_sha256(&e.certs.hashes().current)
                .unwrap_or(Trust::CertSha256([0; 32])),
            server_name: Some("localhost".into()),
            connect_timeout: Duration::from_secs(10),
            local_ip: None,
        }
    }

    /// Connects `user`/`device` to `edge` over `transport` with a valid token.
    pub async fn connect(
        &self,
        edge: usize,
        transport: TransportKind,
        user: &str,
        device: &str,
    ) -> Result<Connection, ClientError> {
        self.connect_with_token(edge, transport, &self.token(user), device)
            .await
    }

    /// Connects with an explicit token.
    pub async fn connect_with_token(
        &self,
        edge: usize,
        transport: TransportKind,
        token: &str,
        device: &str,
    ) -> Result<Connection, ClientError> {
        Connection::connect(ConnectOptions::new(
            self.endpoint(edge, transport),
            token,
            device,
        ))
        .await
    }

    /// A raw QUIC connection to `edge` for `user`/`device` that has said Hello and read
    /// its Welcome (for tests that then misbehave, e.g. never read again). It asks for
    /// delivery streams as the SDK does, and never reads those either.
    pub async fn raw_welcomed(
        &self,
        edge: usize,
        user: &str,
        device: &str,
    ) -> anyhow::Result<(petrel_client::RawReader, petrel_client::RawWriter)> {
        let r = self
            .raw_hello(edge, user, device, petrel_client::DEFAULT_DELIVERY_STREAMS)
            .await?;
        Ok((r.reader, r.writer))
    }

    /// A raw QUIC connection to `edge` that said Hello asking for `delivery_streams`
    /// and read its Welcome.
    pub async fn raw_hello(
        &self,
        edge: usize,
        user: &str,
        device: &str,
        delivery_streams: u32,
    ) -> anyhow::Result<RawSession> {
        use petrel_client::Read;
        use petrel_proto::{FrameDecoder, encode_frame, pb};
        use prost::Message as _;
        let (mut reader, mut writer) =
            petrel_client::connect_raw(&self.endpoint(edge, TransportKind::Quic)).await?;
        let hello = pb::Hello {
            token: self.token(user),
            device: device.into(),
            cursors: vec![],
            protocol_version: 1,
            delivery_streams,
        };
        writer
            .write(encode_frame(&pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Hello(hello)),
            }))
            .await?;
        let mut decoder = FrameDecoder::new(1 << 22);
        loop {
            match reader.read().await? {
                Read::Data(d) => {
                    decoder.push(&d);
                    while let Some(f) = decoder.next_frame()? {
                        if let Some(pb::server_frame::Kind::Welcome(welcome)) =
                            pb::ServerFrame::decode(f)?.kind
                        {
                            return Ok(RawSession {
                                reader,
                                writer,
                                welcome,
                                decoder,
                            });
                        }
                    }
                }
                Read::Closed(info) => anyhow::bail!("closed before Welcome: {info:?}"),
            }
        }
    }

    /// Polls `/metrics` of edge `edge` until the sample `series` (exact text, labels
    /// included) satisfies `ok`, at most 10 s; returns its last value.
    pub async fn wait_metric(
        &self,
        edge: usize,
        series: &str,
        ok: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = metric_sample(&self.http_get(edge, "/metrics").await?, series);
            match v {
                Some(v) if ok(v) => return Ok(v),
                _ if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("{series} is {v:?} after 10 s")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// GET `path` on edge `edge`'s HTTP endpoint; returns the body.
    pub async fn http_get(&self, edge: usize, path: &str) -> anyhow::Result<String> {
        let addr = self.edges[edge].addrs.http.to_string();
        Ok(crate::http_get(&addr, path).await?.1)
    }

    /// A `name=value` counter from edge `edge`'s `/readyz`.
    pub async fn counter(&self, edge: usize, name: &str) -> anyhow::Result<u64> {
        crate::readyz_counter(&self.http_get(edge, "/readyz").await?, name)
    }

    /// Live subscriptions edge `edge` holds (from `/readyz`), polled until it equals
    /// `want` or 5 s pass.
    pub async fn wait_live_subscriptions(&self, edge: usize, want: u64) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.counter(edge, "live_subscriptions").await?;
            if n == want || tokio::time::Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages stored in every stream of the hub: proof that a thing was stored
    /// nowhere, whatever stream might have captured it.
    pub async fn stored_in_every_stream(&self) -> anyhow::Result<u64> {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let mut streams = js.streams();
        let mut total = 0;
        while let Some(info) = streams.try_next().await? {
            total += info.state.messages;
        }
        Ok(total)
    }

    /// Sets USER_MESSAGES' duplicate window (tests shorten it so that it passes within
    /// them).
    pub async fn set_duplicate_window(&self, window: Duration) -> anyhow::Result<()> {
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let mut stream = js.get_stream(petrel_core::subject::MESSAGE_STREAM).await?;
        let mut cfg = stream.info().await?.config.clone();
        cfg.duplicate_window = window;
        js.update_stream(cfg).await?;
        Ok(())
    }

    /// Messages stored in USER_MESSAGES.
    pub async fn stored_messages(&self) -> anyhow::Result<u64> {
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let mut stream = js.get_stream(petrel_core::subject::MESSAGE_STREAM).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Messages stored per subject of USER_MESSAGES matching `filter`.
    pub async fn subject_counts(
        &self,
        filter: &str,
    ) -> anyhow::Result<std::collections::HashMap<String, usize>> {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let stream = js.get_stream(petrel_core::subject::MESSAGE_STREAM).await?;
        Ok(stream
            .info_with_subjects(filter)
            .await?
            .try_collect()
            .await?)
    }

    /// Polls `/readyz` counter `name` of edge `edge` until `ok(value)` or `secs` pass;
    /// returns the last value.
    pub async fn wait_counter(
        &self,
        edge: usize,
        name: &str,
        secs: u64,
        ok: impl Fn(u64) -> bool,
    ) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.counter(edge, name).await?;
            if ok(v) || tokio::time::Instant::now() >= deadline {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A raw QUIC connection after Welcome (see [`Topology::raw_hello`]).
pub struct RawSession {
    /// The control stream, read side (and the connection, for delivery streams).
    pub reader: petrel_client::RawReader,
    /// The control stream, write side.
    pub writer: petrel_client::RawWriter,
    /// What Welcome said.
    pub welcome: petrel_proto::pb::Welcome,
    /// The control stream's decoder, holding whatever followed Welcome.
    pub decoder: petrel_proto::FrameDecoder,
}

/// The value of the sample `series` (`name{labels}`, exactly as encoded) in a
/// Prometheus/OpenMetrics text, if present.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        if k == series { v.parse().ok() } else { None }
    })
}
