//! The message service for `petrel dev` and the tests: a real PostgreSQL
//! ([`crate::postgres`]) and a `petrel messages` worker in this process, on the
//! topology's hub and Redis.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::postgres::Postgres;

/// A running message service.
#[derive(Debug)]
pub struct MessageService {
    /// Its PostgreSQL.
    pub postgres: Postgres,
    /// The worker's config file (`petrel messages --config` takes it too).
    pub config: PathBuf,
    /// The worker's `/metrics`.
    pub metrics: String,
    worker: Option<(
        tokio::task::JoinHandle<anyhow::Result<()>>,
        CancellationToken,
    )>,
}

/// Writes a `[messages]` config for the hub at `nats_url` (comma-separated), the
/// PostgreSQL at `postgres_url` and the Redis at `redis_url` to `dir/messages.toml`;
/// `extra` is appended inside the table (test settings).
pub fn write_messages_config(
    dir: &Path,
    nats_url: &str,
    postgres_url: &str,
    redis_url: Option<&str>,
    metrics: std::net::SocketAddr,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let redis = redis_url
        .map(|r| format!("redis_url = {r:?}\n"))
        .unwrap_or_default();
    let text = format!(
        "# Written by petrel-devkit for a dev topology.\n[messages]\nnats_url = {nats_url:?}\npostgres_url = {postgres_url:?}\n{redis}metrics_listen = \"{metrics}\"\n{extra}\n"
    );
    let path = dir.join("messages.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl MessageService {
    /// Starts PostgreSQL in `dir` and one worker.
    pub async fn start(
        dir: &Path,
        nats_url: &str,
        redis_url: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let postgres = Postgres::start(dir).await?;
        let port = crate::process::free_port()?;
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let config =
            write_messages_config(dir, nats_url, &postgres.url, redis_url, metrics, extra)?;
        let mut s = Self {
            postgres,
            config,
            metrics: format!("http://{metrics}/metrics"),
            worker: None,
        };
        s.start_worker()?;
        s.wait_answering(nats_url).await?;
        Ok(s)
    }

    /// Waits until a worker answers requests on the hub (20 s at most).
    async fn wait_answering(&mut self, nats_url: &str) -> anyhow::Result<()> {
        let client = petrel_gateway::hub::login::connect(nats_url, None).await?;
        let ask = petrel_core::conversation::api::ConversationsQuery {
            user: petrel_core::UserId::parse("devkit")?,
            groups: Vec::new(),
            offset: 0,
            limit: 1,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let asked = client.request(petrel_core::subject::MESSAGES_UNREAD, ask.encode());
            if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(2), asked).await
            {
                return Ok(());
            }
            if let Some((task, _)) = &self.worker
                && task.is_finished()
            {
                let (task, _) = self.worker.take().context("the worker")?;
                let ended = task.await.context("the message service task")?;
                anyhow::bail!("the message service ended at start: {:?}", ended.err());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the message service did not answer within 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Starts the worker (again).
    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        let cfg = petrel_messages::MessagesConfig::load(&self.config)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(petrel_messages::run(cfg, stop.clone()));
        self.worker = Some((task, stop));
        Ok(())
    }

    /// Stops the worker and reports how it ended (one that has not stopped within 5 s,
    /// stuck on a hub or PostgreSQL that went away, is aborted).
    pub async fn stop_worker(&mut self) -> anyhow::Result<()> {
        let Some((mut task, stop)) = self.worker.take() else {
            return Ok(());
        };
        stop.cancel();
        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await {
            Ok(ended) => ended.context("the message service task")?,
            Err(_) => {
                task.abort();
                anyhow::bail!("the message service did not stop within 5 s; aborted")
            }
        }
    }
}

impl Drop for MessageService {
    fn drop(&mut self) {
        if let Some((task, stop)) = self.worker.take() {
            stop.cancel();
            task.abort();
        }
    }
}
