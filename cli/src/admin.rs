//! `petrel admin`: what the application's services write (group membership, contacts)
//! and publish (system notifications), done by hand for operators and development.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use petrel_core::UserId;
use petrel_devkit::dev;
use petrel_gateway::directory::Directory;
use serde_json::json;

use crate::cli::{now_ms, random_id};

/// `petrel admin` commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Group membership in Redis (`group:{g}:members`, `user:{u}:groups`); add and
    /// remove announce the change on NATS `group.changed.{g}`, so gateways apply it at
    /// once. See docs/groups.md.
    Group {
        /// A `petrel dev` directory to take the Redis and NATS URLs from.
        #[arg(long = "dev", value_name = "DIR", default_value = ".petrel/dev")]
        dev: PathBuf,
        /// Redis URL instead of the dev one.
        #[arg(long)]
        redis: Option<String>,
        /// NATS URL instead of the dev one (for the change announcement).
        #[arg(long)]
        nats: Option<String>,
        /// add, remove or list.
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Contacts in Redis (`contacts:{u}`): whose presence a user may watch and to whom
    /// it may send typing, besides the members of its groups. `add A B` makes A and B
    /// contacts of each other. See docs/groups.md.
    Contact {
        /// A `petrel dev` directory to take the Redis URL from.
        #[arg(long = "dev", value_name = "DIR", default_value = ".petrel/dev")]
        dev: PathBuf,
        /// Redis URL instead of the dev one.
        #[arg(long)]
        redis: Option<String>,
        /// add, remove or list.
        #[command(subcommand)]
        action: ContactAction,
    },
    /// Publish a system notification to a user, as a business service does (stream
    /// SYSTEM_NOTIFICATIONS, subject notif.{category}.{user}); prints where it was
    /// stored. See docs/notifications.md.
    Notify {
        /// A `petrel dev` directory to take the NATS URL from.
        #[arg(long = "dev", value_name = "DIR", default_value = ".petrel/dev")]
        dev: PathBuf,
        /// NATS URL instead of the dev one.
        #[arg(long)]
        nats: Option<String>,
        /// Recipient user id.
        #[arg(long)]
        user: String,
        /// Category.
        #[arg(long, value_parser = petrel_core::wire::NOTIFICATION_CATEGORIES)]
        category: String,
        /// Title.
        #[arg(long)]
        title: String,
        /// Body.
        #[arg(long, default_value = "")]
        body: String,
        /// What tapping it does (e.g. a deep link).
        #[arg(long, default_value = "")]
        action: String,
        /// Priority.
        #[arg(long, value_enum, default_value = "normal")]
        priority: Priority,
        /// Badge count (0 = leave as is).
        #[arg(long, default_value_t = 0)]
        badge: u32,
        /// Id (dedup key: publishing the same id again stores it once). Random by default.
        #[arg(long)]
        id: Option<String>,
    },
}

/// Notification priorities for `petrel admin notify`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Priority {
    /// Default.
    Normal,
    /// May be batched or shown quietly.
    Low,
    /// Should interrupt.
    High,
}

/// `petrel admin group` actions.
#[derive(Debug, Subcommand)]
pub enum GroupAction {
    /// Add users to a group.
    Add {
        /// Group id ([A-Za-z0-9_-]{1,64}).
        group: String,
        /// User ids.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove users from a group.
    Remove {
        /// Group id.
        group: String,
        /// User ids.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Print a group's members, one per line.
    List {
        /// Group id.
        group: String,
    },
}

/// `petrel admin contact` actions.
#[derive(Debug, Subcommand)]
pub enum ContactAction {
    /// Make a user and each of the others contacts of each other.
    Add {
        /// User id.
        user: String,
        /// Its new contacts.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Remove a user and each of the others from each other's contacts.
    Remove {
        /// User id.
        user: String,
        /// Contacts to remove.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Print a user's contacts, one per line.
    List {
        /// User id.
        user: String,
    },
}

/// Runs one `petrel admin` command.
pub async fn run(what: AdminCommand) -> anyhow::Result<ExitCode> {
    match what {
        AdminCommand::Group {
            dev,
            redis,
            nats,
            action,
        } => admin_group(&dev, redis, nats, action).await,
        AdminCommand::Contact { dev, redis, action } => admin_contact(&dev, redis, action).await,
        AdminCommand::Notify {
            dev,
            nats,
            user,
            category,
            title,
            body,
            action,
            priority,
            badge,
            id,
        } => {
            notify(
                &dev,
                nats,
                Notice {
                    user,
                    category,
                    title,
                    body,
                    action,
                    priority,
                    badge,
                    id,
                },
            )
            .await
        }
    }
}

/// A notification as given on the command line.
struct Notice {
    user: String,
    category: String,
    title: String,
    body: String,
    action: String,
    priority: Priority,
    badge: u32,
    id: Option<String>,
}

async fn notify(dev: &Path, nats: Option<String>, notice: Notice) -> anyhow::Result<ExitCode> {
    let Notice {
        user,
        category,
        title,
        body,
        action,
        priority,
        badge,
        id,
    } = notice;
    let user = petrel_core::UserId::parse(user.as_str())
        .map_err(|e| anyhow::anyhow!("user {user:?}: {e}"))?;
    let id = id.unwrap_or_else(random_id);
    petrel_core::ClientMsgId::parse(id.as_str()).map_err(|e| anyhow::anyhow!("id {id:?}: {e}"))?;
    let nats_url = match nats {
        Some(n) => n,
        None => dev::Endpoints::read(dev)?.nats_hub,
    };
    let client = connect_nats(&nats_url, None).await?;
    let n = petrel_core::wire::Notification {
        id: id.clone(),
        title,
        body,
        action,
        priority: match priority {
            Priority::Normal => 0,
            Priority::Low => 1,
            Priority::High => 2,
        },
        badge,
        data: Vec::new(),
        time_ms: now_ms(),
    };
    let subject = petrel_core::subject::Subject::notification(&category, user.clone())?.to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    let js = async_nats::jetstream::with_domain(client, "hub");
    let ack = js
        .publish_with_headers(subject.clone(), headers, n.encode())
        .await
        .context("publishing the notification")?
        .await
        .context("the hub did not store the notification")?;
    println!(
        "{}",
        json!({"status": "stored", "subject": subject, "seq": ack.sequence, "id": id, "duplicate": ack.duplicate})
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_user(u: &str) -> anyhow::Result<UserId> {
    UserId::parse(u).map_err(|e| anyhow::anyhow!("user {u:?}: {e}"))
}

/// The directory at `redis`, or the one of the `petrel dev` in `dev`.
fn directory(dev: &Path, redis: Option<String>) -> anyhow::Result<(Directory, String)> {
    let url = match redis {
        Some(r) => r,
        None => dev::Endpoints::read(dev)?
            .redis
            .context("no Redis: pass --redis URL (this petrel dev has none)")?,
    };
    Ok((Directory::new(Some(&url))?, url))
}

async fn admin_contact(
    dev: &Path,
    redis: Option<String>,
    action: ContactAction,
) -> anyhow::Result<ExitCode> {
    let (directory, url) = directory(dev, redis)?;
    let (user, others, add) = match action {
        ContactAction::List { user } => {
            let user = parse_user(&user)?;
            let contacts = directory
                .contacts(&user)
                .await
                .with_context(|| format!("reading {user}'s contacts from {url}"))?;
            for c in contacts {
                println!("{c}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        ContactAction::Add { user, contacts } => (user, contacts, true),
        ContactAction::Remove { user, contacts } => (user, contacts, false),
    };
    let user = parse_user(&user)?;
    let others = others
        .iter()
        .map(|o| parse_user(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for o in &others {
        if add {
            directory.add_contacts(&user, o).await
        } else {
            directory.remove_contacts(&user, o).await
        }
        .with_context(|| format!("updating contacts in {url}"))?;
        println!(
            "{}",
            json!({"user": user.as_str(), "contact": o.as_str(), "contacts": add})
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin_group(
    dev: &Path,
    redis: Option<String>,
    nats: Option<String>,
    action: GroupAction,
) -> anyhow::Result<ExitCode> {
    use petrel_core::GroupId;
    let endpoints = if redis.is_none() || nats.is_none() {
        Some(dev::Endpoints::read(dev)?)
    } else {
        None
    };
    let (directory, redis_url) = match redis {
        Some(r) => (Directory::new(Some(&r))?, r),
        None => directory(dev, None)?,
    };
    let parse_group = |g: &str| GroupId::parse(g).map_err(|e| anyhow::anyhow!("group {g:?}: {e}"));
    match action {
        GroupAction::List { group } => {
            let g = parse_group(&group)?;
            let mut members: Vec<String> = directory
                .members(&g)
                .await
                .with_context(|| format!("reading group {g} from {redis_url}"))?
                .into_iter()
                .map(|u| u.to_string())
                .collect();
            members.sort();
            for m in members {
                println!("{m}");
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupAction::Add { group, users } => {
            change_members(
                &directory,
                nats,
                endpoints,
                parse_group(&group)?,
                &users,
                true,
            )
            .await
        }
        GroupAction::Remove { group, users } => {
            change_members(
                &directory,
                nats,
                endpoints,
                parse_group(&group)?,
                &users,
                false,
            )
            .await
        }
    }
}

/// Adds or removes `users` in `group`, printing one JSON line per user, then announces
/// the change once.
async fn change_members(
    directory: &Directory,
    nats: Option<String>,
    endpoints: Option<dev::Endpoints>,
    group: petrel_core::GroupId,
    users: &[String],
    add: bool,
) -> anyhow::Result<ExitCode> {
    let users: Vec<petrel_core::UserId> = users
        .iter()
        .map(|u| {
            petrel_core::UserId::parse(u.as_str()).map_err(|e| anyhow::anyhow!("user {u:?}: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let nats_url = nats
        .or_else(|| endpoints.map(|e| e.nats_hub))
        .context("no NATS: pass --nats URL")?;
    let client = connect_nats(&nats_url, None).await?;
    for u in &users {
        let changed = if add {
            directory.add(&group, u).await
        } else {
            directory.remove(&group, u).await
        }
        .with_context(|| format!("updating group {group}"))?;
        println!(
            "{}",
            json!({"group": group.as_str(), "user": u.as_str(), "member": add, "changed": changed})
        );
    }
    petrel_gateway::directory::announce(&client, &group)
        .await
        .context("announcing the change on NATS")?;
    Ok(ExitCode::SUCCESS)
}

/// Connects to NATS at `url`, logging in with the user and password in it
/// (`nats://USER:PASSWORD@HOST:PORT`) and trusting `ca_file` for TLS if given. Errors
/// name the URL without its password.
pub async fn connect_nats(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<async_nats::Client> {
    petrel_gateway::hub::login::connect(url, ca_file).await
}
