//! Child processes that behave: each in its own process group (a terminal's Ctrl-C
//! reaches only the parent, which then stops them in order), dead with their parent
//! even after a `kill -9` of it (`PR_SET_PDEATHSIG`), killed when dropped. Readiness is
//! polled, never slept for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

/// Sets up `cmd` as a guarded child: its own process group, killed with its parent,
/// killed on drop.
pub fn guard(cmd: &mut Command) {
    cmd.kill_on_drop(true).process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Sends `signal` to the process `pid` (ignoring one that is already gone).
pub fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: plain kill(2) on a process id we own.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A free TCP port on loopback (for servers that cannot report the one they bound).
///
/// Chosen below the kernel's ephemeral range: a port the kernel hands out for port 0
/// is also handed to outgoing connections, and on a busy machine one of those can
/// take it between the choice and the server's bind. Falls back to port 0 when no
/// port below the range is free.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    let (low, _) = ephemeral_range();
    let floor = 10_000u16;
    if low > floor + 1_000 {
        let mut rng = rand::rng();
        for _ in 0..64 {
            let port = rng.random_range(floor..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Waits until something accepts TCP connections on loopback `port`, at most 20 s.
pub async fn wait_tcp(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `name` on PATH, or in the sbin directories Debian installs daemons to.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A server process on a free TCP port with its config in a temporary directory;
/// killed when dropped.
pub struct Server {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
}

impl Server {
    /// Writes `conf(port)` to `conf_name` in a new directory, starts `program args…
    /// CONF_PATH` and waits until it listens on the port.
    pub async fn start(
        program: &Path,
        args: &[&str],
        conf_name: &str,
        conf: impl Fn(u16) -> String,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let conf_path = dir.path().join(conf_name);
        std::fs::write(&conf_path, conf(port))?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(&conf_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        guard(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        wait_tcp(port, &program.display().to_string()).await?;
        Ok(Self {
            _child: child,
            _dir: dir,
            port,
        })
    }
}
