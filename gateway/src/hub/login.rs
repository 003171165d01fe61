//! Connecting to a NATS server whose URL carries the login (`nats://user:password@host`),
//! as `petrel provision`, the admin commands, the push service and the dev topology do.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Connect options for `url` — one URL or several, comma-separated — logging in with
/// the user and password of the first that has them, with a 5 s connection timeout,
/// and the addresses without the credentials.
pub fn login_options(url: &str) -> (async_nats::ConnectOptions, String) {
    let mut login = None;
    let addrs: Vec<String> = url
        .split(',')
        .map(|one| {
            let one = one.trim();
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    if login.is_none()
                        && let Some((user, password)) = userinfo.split_once(':')
                    {
                        login = Some((user.to_string(), password.to_string()));
                    }
                    format!("{scheme}://{host}")
                }
                None => one.to_string(),
            }
        })
        .collect();
    let options = match login {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    };
    (
        options.connection_timeout(Duration::from_secs(5)),
        addrs.join(","),
    )
}

/// Connects to `url` (see [`login_options`]), over TLS checked against `ca_file` when
/// one is given.
pub async fn connect(url: &str, ca_file: Option<&Path>) -> anyhow::Result<async_nats::Client> {
    let shown = redact(url);
    let (mut opts, addr) = login_options(url);
    if let Some(ca) = ca_file {
        anyhow::ensure!(ca.is_file(), "CA file {}: no such file", ca.display());
        opts = opts
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true);
    }
    let servers = addr
        .split(',')
        .map(|a| a.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!("{shown} is not a NATS URL (or a comma-separated list of them)")
        })?;
    opts.connect(servers)
        .await
        .with_context(|| format!("connecting to {shown}"))
}

/// `url` with every password replaced by `***`.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.split_once("://"), one.rsplit_once('@')) {
            (Some((scheme, rest)), Some((_, host))) => match rest.split_once(':') {
                Some((user, _)) if rest.find(':') < rest.find('@') => {
                    format!("{scheme}://{user}:***@{host}")
                }
                _ => one.to_string(),
            },
            _ => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_come_out_of_every_url() {
        let (_, addr) = login_options("nats://u:p@127.0.0.1:1,nats://u:p@127.0.0.1:2");
        assert_eq!(addr, "nats://127.0.0.1:1,nats://127.0.0.1:2");
        let (_, addr) = login_options("nats://127.0.0.1:1");
        assert_eq!(addr, "nats://127.0.0.1:1");
        assert_eq!(
            redact("nats://u:secret@h:1,nats://h:2"),
            "nats://u:***@h:1,nats://h:2"
        );
    }
}
