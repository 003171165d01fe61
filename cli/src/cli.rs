//! The `petrel` command line: argument parsing and a thin shell per command; the work
//! itself lives in `petrel_gateway` (`gateway`, `provision`), `petrel_devkit` (`dev`),
//! `petrel_bench` (`bench`, `impair`) and `petrel_client` (`client`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use petrel_client::{
    ConnectOptions, Connection, Endpoint, Event, SendResult, TransportKind, Trust,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use petrel_core::auth::mint_dev_token;
use petrel_devkit::dev::{self, Endpoints};
use petrel_gateway::{Config, Gateway, provision};

/// Petrel: an edge gateway for real-time messaging (native QUIC, WebSocket) in front
/// of a NATS leaf node and a JetStream hub.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, propagate_version = true)]
pub struct Cli {
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local edge: hub and leaf nats-servers, streams, dev certificate and the
    /// gateway; writes DIR/endpoints.json. Ctrl-C or SIGTERM stops everything.
    Dev {
        /// Directory for configs, data, logs and endpoints.json.
        #[arg(long, default_value = ".petrel/dev")]
        dir: PathBuf,
        /// Directory served on the HTTP endpoint (the demo page and browser SDK:
        /// `web/dist`, built by `npm run build` in `web/`).
        #[arg(long, value_name = "DIR")]
        web_dir: Option<PathBuf>,
        /// Edges (leaf node + gateway each) on the one hub; the first is the one at the
        /// top of endpoints.json, all of them under `edges`.
        #[arg(long, default_value_t = 1, value_name = "N")]
        edges: usize,
        /// Hub nodes: 1 (a single JetStream server, quickest) or a cluster of N
        /// (3 is the production shape; streams get min(3, N) replicas).
        #[arg(long, default_value_t = 1, value_name = "N")]
        hub_nodes: usize,
        /// The hub's JetStream sync_interval: `always` fsyncs before every
        /// acknowledgement (what Petrel promises); a duration such as `2m` is
        /// JetStream's default, faster and not safe against power loss.
        #[arg(long, default_value = "always", value_name = "always|DURATION")]
        sync_interval: String,
        /// Also run a push worker, pointed at local stand-ins for APNs, FCM and Web
        /// Push (what they receive is appended to DIR/push/received.jsonl).
        #[arg(long)]
        push: bool,
        /// Do not run the message service (PostgreSQL and a `petrel messages` worker):
        /// no conversation lists, archived history or edits, a quicker start.
        #[arg(long)]
        no_messages: bool,
    },
    /// Print a dev token (HS256, signed with the dev secret of a `petrel dev` directory).
    Token {
        /// The `petrel dev` directory.
        #[arg(long = "dev", value_name = "DIR", default_value = ".petrel/dev")]
        dev: PathBuf,
        /// User id ([A-Za-z0-9_-]{1,64}).
        #[arg(long)]
        user: String,
        /// Bind the token to this device id.
        #[arg(long)]
        device: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
    },
    /// Connect as a user: send a message or listen for messages.
    Client(ClientArgs),
    /// Measure under load: scenarios pairs, fanout, idle, resume, ingest, per
    /// transport, against a fresh `petrel dev` topology (or `--dev DIR`).
    Bench(petrel_bench::scenario::BenchArgs),
    /// The weak-network proxy: forward UDP (QUIC) or TCP (WebSocket) to a gateway with
    /// loss, delay, jitter, reordering, a bandwidth limit and address switches.
    Impair(ImpairArgs),
    /// Run the gateway with a config file (see deploy/gateway.example.toml).
    Gateway {
        /// TOML config file; PETREL_{SECTION}_{KEY} variables override its keys.
        #[arg(long)]
        config: PathBuf,
    },
    /// Operator tools: group membership and contacts (as the application's services
    /// keep them), system notifications.
    Admin {
        /// What to manage.
        #[command(subcommand)]
        what: crate::admin::AdminCommand,
    },
    /// Create or update the hub's JetStream streams (idempotent). The caps discard the
    /// oldest messages when reached.
    Provision(ProvisionArgs),
    /// Run a push worker: wakes offline devices through APNs, FCM and Web Push. Any
    /// number of workers share the hub's durable consumers (see
    /// deploy/push.example.toml).
    Push(PushArgs),
    /// Run a message-service worker: archives every stored message in PostgreSQL and
    /// answers the gateways' conversation lists, archived history and amend checks.
    /// Any number of workers share one durable consumer (see
    /// deploy/messages.example.toml).
    Messages(MessagesArgs),
}

/// `petrel messages` options.
#[derive(Debug, Args)]
pub struct MessagesArgs {
    /// The worker's TOML config; PETREL_MESSAGES_* variables override its keys.
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Join a running `petrel dev`: its hub, Redis and PostgreSQL (one more worker
    /// sharing the load).
    #[arg(long, value_name = "DIR")]
    pub dev: Option<PathBuf>,
}

/// `petrel push` options.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PushArgs {
    /// The worker's TOML config; PETREL_PUSH_* variables override its keys.
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Join a running `petrel dev --push`: its hub, Redis and fake providers (one
    /// more worker sharing the load).
    #[arg(long, value_name = "DIR")]
    pub dev: Option<PathBuf>,
    /// A tool instead of a worker.
    #[command(subcommand)]
    pub tool: Option<PushTool>,
}

/// `petrel push` tools.
#[derive(Debug, Subcommand)]
pub enum PushTool {
    /// Make a VAPID key pair for Web Push: writes the private key (PEM) to FILE and
    /// prints the public key for the gateways' `web.vapid_public_key`.
    VapidKey {
        /// Where to write the private key (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `petrel provision` options.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// NATS URL of the hub (or of a leaf connected to it); `nats://USER:PASSWORD@HOST:PORT`
    /// logs in.
    #[arg(long)]
    pub nats: String,
    /// PEM file of the CA to trust for a `tls://` hub URL.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// JetStream domain of the hub.
    #[arg(long, default_value = "hub")]
    pub domain: String,
    /// Replicas per stream (3 on a 3-node hub cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Most messages USER_MESSAGES keeps.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub messages_max_msgs: i64,
    /// Most bytes USER_MESSAGES keeps (suffixes KB, MB, GB, KiB, MiB, GiB, …).
    #[arg(long, value_name = "SIZE", default_value = "100GiB", value_parser = parse_size)]
    pub messages_max_bytes: i64,
    /// Most messages SYSTEM_NOTIFICATIONS keeps.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub notifications_max_msgs: i64,
    /// Most bytes SYSTEM_NOTIFICATIONS keeps.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub notifications_max_bytes: i64,
    /// Most presence and typing entries ONLINE_STATUS keeps.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub status_max_msgs: i64,
}

/// A byte size such as `100GiB`, `512MB` or `1048576`.
fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100GiB, 512MB, 1048576)"))?;
    let mult: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?} must be more than zero and fit in 63 bits")),
    }
}

/// `petrel client` options.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// A `petrel dev` directory: endpoints, certificate hash and dev secret come from it.
    #[arg(long = "dev", value_name = "DIR", default_value = ".petrel/dev")]
    pub dev: PathBuf,
    /// User id.
    #[arg(long)]
    pub user: String,
    /// Device id.
    #[arg(long, default_value = "cli")]
    pub device: String,
    /// Transport: quic or websocket.
    #[arg(long, default_value = "quic")]
    pub transport: TransportKind,
    /// QUIC: unidirectional streams to take deliveries on, one conversation per stream
    /// (0: everything on the control stream; the gateway grants at most 16).
    #[arg(long, value_name = "N", default_value_t = petrel_client::DEFAULT_DELIVERY_STREAMS)]
    pub delivery_streams: u32,
    /// Token to use instead of minting a dev token.
    #[arg(long)]
    pub token: Option<String>,
    /// Endpoint instead of the dev one (host:port for quic, wss:// URL for websocket).
    #[arg(long, requires = "cert_sha256")]
    pub endpoint: Option<String>,
    /// SHA-256 of the gateway certificate to pin (with --endpoint).
    #[arg(long)]
    pub cert_sha256: Option<String>,
    /// The device's state file (SQLite; created when missing, a new device starting
    /// from now): resume cursors and the outbox of sends not answered yet, kept across
    /// runs. For send, edit, recall, flush and listen.
    #[arg(long, value_name = "FILE", global = true)]
    pub state: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: ClientAction,
}

/// `petrel client` actions.
#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Send a message to a user (--to) or a group (--group); prints the SendResult as
    /// one JSON object.
    Send {
        /// Recipient user id.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        /// Group id (the user must be a member).
        #[arg(long)]
        group: Option<String>,
        /// Client message id (dedup key; reuse it to retry safely). Random by default.
        #[arg(long)]
        id: Option<String>,
        /// Message text.
        text: String,
        /// The message this one replies to, as SUBJECT:SEQ (e.g. msg.private.bob:12).
        #[arg(long, value_name = "SUBJECT:SEQ", value_parser = parse_reference)]
        reply_to: Option<(String, u64)>,
        /// Users this message mentions, comma-separated (at most 32).
        #[arg(long = "mention", value_delimiter = ',', value_name = "USER,...")]
        mentions: Vec<String>,
        /// Seconds to wait for the gateway's answer.
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
        /// Only put it in the state file's outbox (needs --state) and exit, printing
        /// `pending`: `flush` or `listen` sends it later, whether the gateway is up now
        /// or not.
        #[arg(long)]
        queue: bool,
    },
    /// Edit one of your messages (found by its client message id) to TEXT, on every
    /// device and in history; refused outside the gateway's amend window. Prints the
    /// SendResult of the edit.
    Edit {
        /// The client message id of the message to edit.
        #[arg(long)]
        id: String,
        /// The new text.
        text: String,
        /// Seconds to wait for the gateway's answer.
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
    /// Recall (delete for everyone) one of your messages, found by its client message
    /// id; refused outside the gateway's amend window. Prints the SendResult.
    Recall {
        /// The client message id of the message to recall.
        #[arg(long)]
        id: String,
        /// Seconds to wait for the gateway's answer.
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
    /// Print the conversation list (one JSON object per conversation: peer or group,
    /// last message, unread, mentions, pinned, muted), pinned first, then newest.
    Conversations {
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// At most this many (the gateway caps it at 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Then keep printing each conversation that changes (`{"update": …}`) until
        /// --timeout.
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Pin a conversation (listed first on every device of the user). Prints it.
    Pin(WhichConversation),
    /// Unpin a conversation. Prints it.
    Unpin(WhichConversation),
    /// Mute a conversation (every device of the user shows it muted). Prints it.
    Mute(WhichConversation),
    /// Unmute a conversation. Prints it.
    Unmute(WhichConversation),
    /// Mark a conversation read on every device of the user, up to --seq (by default
    /// up to its newest message).
    MarkRead {
        #[command(flatten)]
        which: WhichConversation,
        /// Up to this sequence on the conversation's subject.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Page the history of the direct conversation with a user (from the archive) or of
    /// one of your subjects: one JSON object per message, newest first.
    History {
        /// The other user of a direct conversation.
        #[arg(long = "with", conflicts_with = "subject")]
        with: Option<String>,
        /// A subject of yours (msg.private.{you}, msg.group.{g}).
        #[arg(long, required_unless_present = "with")]
        subject: Option<String>,
        /// Messages before this sequence (0: from the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follow users' presence: prints one JSON object per state (now, then each change).
    Watch {
        /// User ids, comma-separated (at most 256).
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Say you are (or, with --stop, no longer are) typing to a user or in a group.
    Typing {
        /// User id.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        /// Group id.
        #[arg(long)]
        group: Option<String>,
        /// Stopped typing.
        #[arg(long)]
        stop: bool,
    },
    /// Register this device's push target (replacing the one it had); prints
    /// `{"registered": ...}`. For webpush, --token is the subscription's endpoint.
    PushRegister {
        /// apns, fcm or webpush.
        #[arg(long, value_parser = ["apns", "fcm", "webpush"])]
        platform: String,
        /// APNs device token (hex), FCM registration token, or Web Push endpoint URL.
        #[arg(long)]
        token: String,
        /// APNs: the app's bundle id.
        #[arg(long, required_if_eq("platform", "apns"))]
        topic: Option<String>,
        /// APNs: a development (sandbox) token.
        #[arg(long)]
        sandbox: bool,
        /// Web Push: the subscription's p256dh key (base64url).
        #[arg(long, required_if_eq("platform", "webpush"))]
        p256dh: Option<String>,
        /// Web Push: the subscription's auth secret (base64url).
        #[arg(long, required_if_eq("platform", "webpush"))]
        auth: Option<String>,
        /// The device's language (BCP 47), e.g. en-GB.
        #[arg(long, default_value = "")]
        locale: String,
        /// Whether message text may appear in pushes: show, hide, or the service's
        /// default.
        #[arg(long, default_value = "default", value_parser = ["show", "hide", "default"])]
        preview: String,
    },
    /// Remove this device's push target (what an app does on logout).
    PushUnregister,
    /// Send what the state file's outbox holds (sends made with --queue or cut off
    /// earlier), in order with their ids; one JSON object per answer.
    Flush {
        /// Seconds to wait for every answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Print one JSON object per delivered message, across reconnects (with --state,
    /// resuming from its cursors: exactly what was missed, in order).
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Give up after this many seconds (an error if --count was not reached).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

async fn provision(a: ProvisionArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=5).contains(&a.replicas),
        "--replicas must be 1 to 5 (JetStream's limit), not {}",
        a.replicas
    );
    for (flag, v) in [
        ("--messages-max-msgs", a.messages_max_msgs),
        ("--notifications-max-msgs", a.notifications_max_msgs),
        ("--status-max-msgs", a.status_max_msgs),
    ] {
        anyhow::ensure!(v > 0, "{flag} must be more than zero");
    }
    let limits = provision::StreamLimits {
        replicas: a.replicas,
        messages: provision::Cap {
            max_messages: a.messages_max_msgs,
            max_bytes: a.messages_max_bytes,
        },
        notifications: provision::Cap {
            max_messages: a.notifications_max_msgs,
            max_bytes: a.notifications_max_bytes,
        },
        status_max_messages: a.status_max_msgs,
    };
    let client = crate::admin::connect_nats(&a.nats, a.ca_file.as_deref()).await?;
    for p in provision::provision(&client, &a.domain, &limits).await? {
        println!("{}", serde_json::to_string(&p)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn messages(a: MessagesArgs) -> anyhow::Result<ExitCode> {
    let cfg = match (a.config, a.dev) {
        (Some(path), _) => petrel_messages::MessagesConfig::load(&path)?,
        (None, Some(dir)) => {
            let ep = Endpoints::read(&dir)?;
            let m = ep
                .messages
                .with_context(|| format!("{} was started with --no-messages", dir.display()))?;
            let mut cfg = petrel_messages::MessagesConfig::load(&m.config)?;
            // A second worker beside the one `petrel dev` runs: its own metrics port.
            cfg.messages.metrics_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            cfg
        }
        (None, None) => anyhow::bail!("pass --config FILE or --dev DIR"),
    };
    let shutdown = shutdown_on_signal()?;
    petrel_messages::run(cfg, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn push(a: PushArgs) -> anyhow::Result<ExitCode> {
    if let Some(PushTool::VapidKey { out }) = a.tool {
        anyhow::ensure!(
            !out.exists(),
            "{} exists; not overwriting a key",
            out.display()
        );
        let public = petrel_push::providers::webpush::generate_key(&out)?;
        println!("{public}");
        eprintln!(
            "private key written to {}; set web.vapid_public_key = \"{public}\" on the gateways and push.webpush.vapid_private_key_file on the workers",
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = match (a.config, a.dev) {
        (Some(path), _) => petrel_push::PushConfig::load(&path)?,
        (None, Some(dir)) => {
            let ep = Endpoints::read(&dir)?;
            let p = ep.push.with_context(|| {
                format!(
                    "{} was not started with --push (no fake providers to use)",
                    dir.display()
                )
            })?;
            let mut cfg = petrel_push::PushConfig::load(&p.config)?;
            // A second worker beside the one `petrel dev` runs: its own metrics port.
            cfg.push.metrics_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            cfg
        }
        (None, None) => anyhow::bail!("pass --config FILE or --dev DIR"),
    };
    let shutdown = shutdown_on_signal()?;
    petrel_push::run(cfg, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dev {
            dir,
            web_dir,
            edges,
            hub_nodes,
            sync_interval,
            push,
            no_messages,
        } => {
            let shutdown = shutdown_on_signal()?;
            let shape = dev::Shape {
                edges,
                hub_nodes,
                sync_interval,
                push,
                messages: !no_messages,
            };
            dev::run(&dir, web_dir.as_deref(), shape, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            dev,
            user,
            device,
            ttl,
        } => {
            let secret = dev::read_secret(&dev)?;
            println!(
                "{}",
                mint_dev_token(&secret, &user, device.as_deref(), Duration::from_secs(ttl))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { config } => {
            let cfg = Config::load(&config)?;
            let shutdown = shutdown_on_signal()?;
            Gateway::load(cfg).await?.run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Provision(args) => provision(args).await,
        Command::Push(args) => push(args).await,
        Command::Messages(args) => messages(args).await,
        Command::Client(args) => client(args).await,
        Command::Bench(args) => {
            petrel_bench::scenario::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Impair(args) => impair(args).await,
        Command::Admin { what } => crate::admin::run(what).await,
    }
}

fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    Ok(token)
}

pub(crate) fn random_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// The gateway's endpoints for these arguments, the one of `--transport` first (with
/// `--endpoint`, just that one), and the token.
async fn endpoints(args: &ClientArgs) -> anyhow::Result<(Vec<Endpoint>, String)> {
    let endpoint = |transport, address, trust| Endpoint {
        transport,
        address,
        trust,
        server_name: Some("localhost".into()),
        connect_timeout: Duration::from_secs(10),
        local_ip: None,
    };
    let endpoints = match (&args.endpoint, &args.cert_sha256) {
        (Some(ep), Some(hash)) => vec![endpoint(
            args.transport,
            ep.clone(),
            Trust::from_hex_sha256(hash)?,
        )],
        _ => {
            let ep = Endpoints::read(&args.dev)?;
            // The dev certificate rotates: pin the one served now.
            let trust = Trust::from_hex_sha256(&dev::current_cert_sha256(&ep).await)?;
            let quic = endpoint(TransportKind::Quic, ep.quic.clone(), trust.clone());
            let ws = endpoint(TransportKind::WebSocket, ep.websocket.clone(), trust);
            match args.transport {
                TransportKind::Quic => vec![quic, ws],
                TransportKind::WebSocket => vec![ws, quic],
            }
        }
    };
    let token = match &args.token {
        Some(t) => t.clone(),
        None => mint_dev_token(
            &dev::read_secret(&args.dev)?,
            &args.user,
            None,
            Duration::from_secs(3600),
        )?,
    };
    Ok((endpoints, token))
}

/// One connection on `--transport` (requests that need no reconnecting).
async fn connect(args: &ClientArgs, cursors: Vec<(String, u64)>) -> anyhow::Result<Connection> {
    let (mut endpoints, token) = endpoints(args).await?;
    let endpoint = endpoints.remove(0);
    let mut opts = ConnectOptions::new(endpoint, token, args.device.clone());
    opts.cursors = cursors;
    opts.delivery_streams = args.delivery_streams;
    Connection::connect(opts)
        .await
        .with_context(|| format!("connecting as {} over {}", args.user, args.transport))
}

/// The reconnecting client: QUIC and WebSocket of the gateway, `--transport` first.
async fn start_client(args: &ClientArgs) -> anyhow::Result<petrel_client::Client> {
    let (endpoints, token) = endpoints(args).await?;
    let mut opts = petrel_client::ClientOptions::new(endpoints, token, args.device.clone());
    opts.state = args.state.clone();
    opts.delivery_streams = args.delivery_streams;
    Ok(petrel_client::Client::start(opts)?)
}

pub(crate) fn now_ms() -> u64 {
    petrel_core::time::unix_ms()
}

async fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        ClientAction::Send { .. }
        | ClientAction::Edit { .. }
        | ClientAction::Recall { .. }
        | ClientAction::Flush { .. }
        | ClientAction::Listen { .. } => reconnecting(&args).await,
        _ => one_connection(&args).await,
    }
}

/// Sends and listening ride the reconnecting client: a send waits out a lost
/// connection (re-sent with its id), a listener survives gateway restarts.
async fn reconnecting(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let queue_only = matches!(args.action, ClientAction::Send { queue: true, .. });
    if (queue_only || matches!(args.action, ClientAction::Flush { .. })) && args.state.is_none() {
        bail!("--queue and flush keep the outbox in a state file: pass --state FILE");
    }
    let mut client = start_client(args).await?;
    let (id, pending, timeout) = match &args.action {
        ClientAction::Send {
            to,
            group,
            id,
            text,
            reply_to,
            mentions,
            timeout,
            queue,
        } => {
            let id = id.clone().unwrap_or_else(random_id);
            let target = match (to, group) {
                (_, Some(g)) => petrel_client::To::Group(g),
                (Some(u), None) => petrel_client::To::User(u),
                (None, None) => bail!("pass --to USER or --group GROUP"),
            };
            let options = petrel_client::SendOptions {
                reply_to: reply_to.clone(),
                mentions: mentions.clone(),
            };
            let text = text.clone().into_bytes();
            let pending = client
                .start_send(target, &id, text, "text/plain", options)
                .await?;
            if *queue {
                // In the state file now: that is all --queue asks for.
                println!("{}", json!({"status": "pending", "id": id}));
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            (id, pending, *timeout)
        }
        ClientAction::Edit {
            id: target,
            text,
            timeout,
        } => {
            let id = random_id();
            let text = Some(text.clone().into_bytes().into());
            (
                id.clone(),
                client.start_amend(&id, target, text).await?,
                *timeout,
            )
        }
        ClientAction::Recall {
            id: target,
            timeout,
        } => {
            let id = random_id();
            (
                id.clone(),
                client.start_amend(&id, target, None).await?,
                *timeout,
            )
        }
        ClientAction::Flush { timeout } => {
            let code = flush(&mut client, *timeout).await?;
            client.close().await;
            return Ok(code);
        }
        ClientAction::Listen { count, timeout, .. } => {
            let code = listen(&mut client, *count, *timeout).await?;
            client.close().await;
            return Ok(code);
        }
        _ => bail!("not a reconnecting action"),
    };
    // Read the events meanwhile: a client whose events are not read stalls.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = &mut stopped => break,
                ev = client.next_event() => ev,
            };
            let Some(ev) = ev else { break };
            match ev {
                Event::Disconnected { reason, retry_in } => match retry_in {
                    Some(d) => eprintln!(
                        "warning: connection lost ({reason}); retrying in {:.1} s",
                        d.as_secs_f64()
                    ),
                    None => eprintln!("error: {reason}"),
                },
                Event::SendPending { id } => {
                    eprintln!("not connected yet: {id} waits in the outbox")
                }
                _ => {}
            }
        }
        client
    });
    let code = print_send_result(&id, pending.result(), timeout).await;
    let _ = stop.send(());
    if let Ok(client) = events.await {
        client.close().await;
    }
    code
}

async fn one_connection(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(args, Vec::new()).await?;
    match &args.action {
        ClientAction::Send { .. }
        | ClientAction::Edit { .. }
        | ClientAction::Recall { .. }
        | ClientAction::Flush { .. }
        | ClientAction::Listen { .. } => bail!("this action needs the reconnecting client"),
        ClientAction::Conversations {
            offset,
            limit,
            follow,
            timeout,
        } => {
            let page = client.conversations(*offset, *limit, *follow).await?;
            for c in &page.conversations {
                println!("{}", conversation_json(c));
            }
            if *follow {
                let deadline =
                    timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
                loop {
                    let event = match deadline {
                        Some(d) => {
                            match tokio::time::timeout_at(d.into(), client.next_event()).await {
                                Ok(e) => e,
                                Err(_) => break,
                            }
                        }
                        None => client.next_event().await,
                    };
                    match event {
                        Some(Event::Conversation(c)) => {
                            println!("{}", json!({ "update": conversation_json(&c) }));
                        }
                        Some(Event::Closed { reason }) => bail!("connection closed: {reason}"),
                        None => bail!("connection closed"),
                        Some(_) => {}
                    }
                }
            } else if page.more {
                eprintln!(
                    "more: ask again with --offset {}",
                    offset + page.conversations.len() as u32
                );
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::Pin(w) => set_conversation(client, w, Some(true), None).await,
        ClientAction::Unpin(w) => set_conversation(client, w, Some(false), None).await,
        ClientAction::Mute(w) => set_conversation(client, w, None, Some(true)).await,
        ClientAction::Unmute(w) => set_conversation(client, w, None, Some(false)).await,
        ClientAction::MarkRead { which, seq } => {
            client.mark_read(which.to()?, seq.unwrap_or(0)).await?;
            // A read mark is not answered: a request after it makes sure the gateway
            // has taken it before the connection closes.
            let _ = client.conversations(0, 1, false).await;
            println!("{}", json!({"marked": true, "seq": seq.unwrap_or(0)}));
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::History {
            with,
            subject,
            before,
            limit,
        } => {
            let page = match (with, subject) {
                (Some(w), _) => {
                    client
                        .conversation_history(w, true, *before, *limit)
                        .await?
                }
                (None, Some(s)) => client.history(s, true, *before, *limit).await?,
                (None, None) => bail!("pass --with USER or --subject SUBJECT"),
            };
            for m in &page.messages {
                println!("{}", message_json(m));
            }
            if page.more {
                let last = page.messages.last().map_or(0, |m| m.seq);
                eprintln!("more: ask again with --before {last}");
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::Watch { users, timeout } => {
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            client.watch(&refs).await?;
            let deadline = timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
            loop {
                let event = match deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), client.next_event()).await {
                        Ok(e) => e,
                        Err(_) => break,
                    },
                    None => client.next_event().await,
                };
                match event {
                    Some(Event::Presence { user, state }) => {
                        println!("{}", json!({"user": user, "state": state}));
                    }
                    Some(Event::Error { code, message }) => bail!("{code}: {message}"),
                    Some(Event::Closed { reason }) => bail!("connection closed: {reason}"),
                    None => bail!("connection closed"),
                    Some(_) => {}
                }
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::PushRegister {
            platform,
            token,
            topic,
            sandbox,
            p256dh,
            auth,
            locale,
            preview,
        } => {
            let target = match platform.as_str() {
                "apns" => petrel_client::PushTarget::Apns {
                    token: token.clone(),
                    topic: topic.clone().unwrap_or_default(),
                    sandbox: *sandbox,
                },
                "fcm" => petrel_client::PushTarget::Fcm {
                    token: token.clone(),
                },
                _ => petrel_client::PushTarget::WebPush {
                    endpoint: token.clone(),
                    p256dh: p256dh.clone().unwrap_or_default(),
                    auth: auth.clone().unwrap_or_default(),
                },
            };
            let preview = match preview.as_str() {
                "show" => Some(true),
                "hide" => Some(false),
                _ => None,
            };
            client.register_push(Some(target), locale, preview).await?;
            println!(
                "{}",
                json!({"registered": platform, "user": args.user, "device": args.device})
            );
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::PushUnregister => {
            client.register_push(None, "", None).await?;
            println!(
                "{}",
                json!({"unregistered": true, "user": args.user, "device": args.device})
            );
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ClientAction::Typing { to, group, stop } => {
            let target = match (to, group) {
                (_, Some(g)) => petrel_client::To::Group(g),
                (Some(u), None) => petrel_client::To::User(u),
                (None, None) => bail!("pass --to USER or --group GROUP"),
            };
            client.typing(target, !stop).await?;
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints every message once, across reconnects, until `count` or `timeout`.
async fn listen(
    client: &mut petrel_client::Client,
    count: Option<u64>,
    timeout: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut got = 0u64;
    let mut connected_before = false;
    loop {
        if count.is_some_and(|c| got >= c) {
            break;
        }
        let event = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), client.next_event()).await {
                Ok(e) => e,
                Err(_) => {
                    if let Some(c) = count {
                        bail!("timed out after {got} of {c} messages");
                    }
                    break;
                }
            },
            None => client.next_event().await,
        };
        match event {
            Some(Event::Connected {
                transport,
                welcome: w,
            }) => {
                eprintln!(
                    "{} as {}/{} over {transport} on gateway {} (connection {})",
                    if connected_before {
                        "reconnected"
                    } else {
                        "listening"
                    },
                    w.user,
                    w.device,
                    w.gateway_id,
                    w.connection_id
                );
                connected_before = true;
            }
            Some(Event::Disconnected { reason, retry_in }) => match retry_in {
                Some(d) => eprintln!(
                    "warning: connection lost ({reason}); retrying in {:.1} s",
                    d.as_secs_f64()
                ),
                None => bail!("{reason}"),
            },
            Some(Event::Message(m)) => {
                got += 1;
                println!("{}", message_json(&m));
            }
            Some(Event::Error { code, message }) => eprintln!("warning: {code}: {message}"),
            Some(_) => {}
            None => bail!("the client stopped"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One delivered or archived message as the CLI prints it.
fn message_json(m: &petrel_client::Message) -> serde_json::Value {
    json!({
        "from": m.from, "to": m.to, "text": String::from_utf8_lossy(&m.content),
        "subject": m.subject, "seq": m.seq, "prev_seq": m.prev_seq,
        "id": m.client_msg_id, "from_device": m.from_device, "time_ms": m.time_ms,
        "latency_ms": now_ms().saturating_sub(m.time_ms),
        "group": m.group,
        "notification": m.notification.as_ref().map(|n| json!({
            "title": n.title, "body": n.body, "action": n.action,
            "priority": n.priority, "badge": n.badge,
        })),
        "reply_to": m.reply_to.as_ref().map(|(s, q)| json!({"subject": s, "seq": q})),
        "mentions": m.mentions,
        "amends": m.amends.as_ref().map(|(t, recall)| json!({"id": t, "recall": recall})),
        "read": m.read.as_ref().map(|(c, q)| json!({"conversation": c, "seq": q})),
        "edited_ms": m.edited_ms,
        "recalled": m.recalled,
    })
}

/// One conversation: with a user or a group.
#[derive(Debug, clap::Args)]
pub struct WhichConversation {
    /// The user of a direct conversation.
    #[arg(
        long = "with",
        required_unless_present = "group",
        conflicts_with = "group"
    )]
    with: Option<String>,
    /// A group.
    #[arg(long)]
    group: Option<String>,
}

impl WhichConversation {
    fn to(&self) -> anyhow::Result<petrel_client::To<'_>> {
        Ok(match (&self.with, &self.group) {
            (_, Some(g)) => petrel_client::To::Group(g),
            (Some(u), None) => petrel_client::To::User(u),
            (None, None) => bail!("pass --with USER or --group GROUP"),
        })
    }
}

/// Pins, unpins, mutes or unmutes; prints the conversation as it is now.
async fn set_conversation(
    client: petrel_client::Connection,
    which: &WhichConversation,
    pinned: Option<bool>,
    muted: Option<bool>,
) -> anyhow::Result<ExitCode> {
    let now = client.set_conversation(which.to()?, pinned, muted).await?;
    match now {
        Some(c) => println!("{}", conversation_json(&c)),
        None => println!(
            "{}",
            json!({"pinned": pinned, "muted": muted, "listed": false})
        ),
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

fn conversation_json(c: &petrel_client::Conversation) -> serde_json::Value {
    json!({
        "peer": c.user, "group": c.group,
        "last": c.last.as_ref().map(message_json),
        "unread": c.unread, "mentions": c.unread_mentions, "read_seq": c.read_seq,
        "pinned": c.pinned, "muted": c.muted, "updated_ms": c.updated_ms,
    })
}

/// `SUBJECT:SEQ`.
fn parse_reference(s: &str) -> Result<(String, u64), String> {
    let (subject, seq) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not SUBJECT:SEQ"))?;
    let seq = seq
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: the sequence: {e}"))?;
    if subject.is_empty() || seq == 0 {
        return Err(format!("{s:?} is not SUBJECT:SEQ with SEQ ≥ 1"));
    }
    Ok((subject.to_string(), seq))
}

/// Waits (at most `timeout` s) for a send's answer and prints it as one JSON object;
/// failure when it was rejected.
async fn print_send_result<E>(
    id: &str,
    rx: impl std::future::Future<Output = Result<SendResult, E>>,
    timeout: f64,
) -> anyhow::Result<ExitCode> {
    let wait = Duration::from_secs_f64(timeout.max(0.0));
    let result = tokio::time::timeout(wait, rx)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from the gateway within {timeout} s: the message may or may not be \
                 stored; retry with --id {id} (a retry is stored once)"
            )
        })?
        .map_err(|_| anyhow::anyhow!("the connection closed before the gateway answered"))?;
    let (line, code) = result_json(id, &result);
    println!("{line}");
    Ok(code)
}

/// One send's answer as the CLI prints it, and the exit code it means.
fn result_json(id: &str, result: &SendResult) -> (serde_json::Value, ExitCode) {
    match result {
        SendResult::Stored {
            subject,
            seq,
            msg_id,
            duplicate,
        } => (
            json!({"status": "stored", "subject": subject, "seq": seq, "id": id, "msg_id": msg_id, "duplicate": duplicate}),
            ExitCode::SUCCESS,
        ),
        SendResult::Queued { msg_id } => (
            json!({"status": "queued", "id": id, "msg_id": msg_id}),
            ExitCode::SUCCESS,
        ),
        SendResult::Rejected { code, detail } => {
            eprintln!("error: message {id} rejected: {code}: {detail}");
            (
                json!({"status": "rejected", "id": id, "code": code, "detail": detail}),
                ExitCode::FAILURE,
            )
        }
    }
}

/// Sends what the outbox holds and prints each answer, in the order they come.
async fn flush(client: &mut petrel_client::Client, timeout: f64) -> anyhow::Result<ExitCode> {
    let mut waiting: std::collections::HashSet<String> =
        client.pending_sends().await?.into_iter().collect();
    eprintln!("{} send(s) in the outbox", waiting.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    let mut code = ExitCode::SUCCESS;
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(ev) => ev,
            Err(_) => bail!(
                "{} send(s) not answered within {timeout} s; they stay in the outbox: {:?}",
                waiting.len(),
                waiting
            ),
        };
        match ev {
            Some(Event::SendResult { id, result }) if waiting.remove(&id) => {
                let (line, c) = result_json(&id, &result);
                println!("{line}");
                if c != ExitCode::SUCCESS {
                    code = c;
                }
            }
            Some(Event::Disconnected { reason, retry_in }) => match retry_in {
                Some(d) => eprintln!(
                    "warning: connection lost ({reason}); retrying in {:.1} s",
                    d.as_secs_f64()
                ),
                None => bail!("{reason}"),
            },
            Some(_) => {}
            None => bail!("the client stopped"),
        }
    }
    Ok(code)
}

/// `petrel impair`.
#[derive(Debug, Args)]
pub struct ImpairArgs {
    /// Proxy UDP (QUIC, WebTransport) instead of TCP (WebSocket).
    #[arg(long)]
    pub udp: bool,
    /// Address to listen on (port 0: any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The gateway's address (its QUIC port with --udp, its WebSocket port without).
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// What to do to the traffic, e.g. `loss=10%,delay=100ms,jitter=10ms,reorder=1%,rate=2mbit,switch=30s,seed=7`.
    /// Delay is one way (100ms: a 200 ms round trip). TCP loss stalls the stream for a
    /// retransmission instead of dropping bytes; a switch moves UDP flows to a new
    /// source address and cuts TCP connections.
    #[arg(long, default_value = "")]
    pub spec: petrel_bench::impair::Impairment,
}

async fn impair(args: ImpairArgs) -> anyhow::Result<ExitCode> {
    use petrel_bench::impair::{tcp::TcpProxy, udp::UdpProxy};
    use std::sync::atomic::Ordering;
    let stop = shutdown_on_signal()?;
    let (addr, stats) = if args.udp {
        let p = UdpProxy::bind(args.listen, args.to, args.spec.clone()).await?;
        (p.local_addr(), p.run(stop.clone(), 0))
    } else {
        let p = TcpProxy::bind(args.listen, args.to, args.spec.clone()).await?;
        (p.local_addr(), p.run(stop.clone(), 0))
    };
    println!(
        "{}",
        json!({"listen": addr.to_string(), "to": args.to.to_string(), "protocol": if args.udp {"udp"} else {"tcp"}, "spec": args.spec.to_string()})
    );
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => eprintln!(
                "petrel impair: flows {} forwarded {} dropped {} switches {}",
                stats.flows.load(Ordering::Relaxed),
                stats.forwarded.load(Ordering::Relaxed),
                stats.dropped.load(Ordering::Relaxed),
                stats.switches.load(Ordering::Relaxed),
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
