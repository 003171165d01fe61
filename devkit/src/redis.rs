//! A real redis-server: on a unix socket in its directory (no TCP port at all, so
//! nothing to pick or race for), no persistence, a guarded child like the nats-servers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A running redis-server.
#[derive(Debug)]
pub struct RedisProcess {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// `redis+unix://…` URL for the gateway's `[redis] url`.
    pub url: String,
    dir: PathBuf,
}

impl RedisProcess {
    /// Starts redis-server in `dir` and waits until it answers PING.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::process::guard(&mut cmd);
        let mut child = cmd
            .spawn()
            .context("starting redis-server (install it with scripts/bootstrap.sh)")?;
        let url = format!("redis+unix://{}", socket.display());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                bail!("redis-server exited with {status}:\n{log}");
            }
            if ping(&url).await {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "redis-server did not answer within 20 s (see {}/redis.log)",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            socket,
            url,
            dir: dir.to_path_buf(),
        })
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut c)
        .await
        .is_ok()
}
