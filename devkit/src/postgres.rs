//! A real PostgreSQL server for the message service: initdb'd into its own directory,
//! started as a guarded child on a free loopback port, no unix socket, trust login for
//! the one user `petrel` (loopback only). Durability settings are relaxed
//! (`fsync=off`): this is for development and tests, where the data is throwaway.
//!
//! PostgreSQL refuses to run as root. Run as root (CI, containers), the server runs as
//! the `postgres` user Debian's package creates, with its data directory in a
//! directory of its own under the system temporary directory (the caller's directory
//! may not be reachable by that user); `{dir}/postgres` then names it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The server's login.
pub const USER: &str = "petrel";

/// A running (or stopped) PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    owner: Option<(u32, u32)>,
    /// Its port.
    pub port: u16,
    /// `postgres://petrel@127.0.0.1:{port}/postgres`.
    pub url: String,
    /// Removed on drop (the data directory outside the caller's directory).
    cleanup: Option<PathBuf>,
}

/// Where initdb, postgres and pg_ctl are: `PETREL_PG_BIN`, PATH, or the newest of
/// Debian's `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("PETREL_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    if let Some(p) = crate::process::which("initdb")
        && let Some(d) = p
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        return Ok(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, d)) => Ok(d),
        None => bail!(
            "PostgreSQL's initdb was not found (PETREL_PG_BIN, PATH, /usr/lib/postgresql/*/bin): run scripts/bootstrap.sh"
        ),
    }
}

/// The uid and gid of `name` from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Postgres {
    /// Initialises and starts a server for `dir`, and waits
    /// until it accepts a login.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = bin_dir()?;
        let (data, owner, cleanup) = if is_root() {
            let ids = user_ids("postgres").context(
                "running as root, PostgreSQL needs the `postgres` user (Debian's postgresql package creates it: scripts/bootstrap.sh)",
            )?;
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                dir.canonicalize()
                    .unwrap_or_else(|_| dir.to_path_buf())
                    .hash(&mut h);
                h.finish()
            };
            // A directory of its own for each start: a server of an earlier run that was
            // killed may still be letting go of its files. Earlier runs' are removed.
            let prefix = format!("petrel-pg-{key:016x}-");
            for old in std::fs::read_dir(std::env::temp_dir())
                .into_iter()
                .flatten()
                .flatten()
            {
                if old.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
            let outside = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
            std::fs::create_dir_all(&outside)?;
            chown(&outside, ids)?;
            let link = dir.join("postgres");
            let _ = std::fs::remove_file(&link);
            let _ = std::os::unix::fs::symlink(&outside, &link);
            (outside.join("data"), Some(ids), Some(outside))
        } else {
            (dir.join("postgres").join("data"), None, None)
        };
        let log = dir.join("postgres.log");
        let mut pg = Self {
            child: None,
            bin,
            data,
            log,
            owner,
            port: crate::process::free_port()?,
            url: String::new(),
            cleanup,
        };
        pg.url = format!("postgres://{USER}@127.0.0.1:{}/postgres", pg.port);
        // Development data is throwaway: every start begins from an empty cluster.
        let _ = std::fs::remove_dir_all(&pg.data);
        pg.initdb().await?;
        // Another process may take the chosen port before the server binds it: choose
        // again a few times rather than fail a start over a race.
        let mut attempts = 0;
        loop {
            match pg.resume().await {
                Ok(()) => return Ok(pg),
                Err(e) if attempts < 4 && format!("{e:#}").contains("Address already in use") => {
                    attempts += 1;
                    pg.port = crate::process::free_port()?;
                    pg.url = format!("postgres://{USER}@127.0.0.1:{}/postgres", pg.port);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        if let Some(parent) = self.data.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .await
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server again (after [`Postgres::stop`]) on the same port and data.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::process::guard(&mut cmd);
        // What this start writes to the log, not an earlier one's.
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut child = cmd.spawn().context("starting postgres")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read(&self.log).unwrap_or_default();
                let log = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
                bail!("postgres exited with {status}:\n{log}");
            }
            if tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "postgres did not accept a login within 30 s (see {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are cut) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                crate::process::signal(pid, libc::SIGINT);
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // The server must be gone before its files are.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(d) = self.cleanup.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}
