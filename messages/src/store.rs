//! The archive in PostgreSQL: the schema's migrations (`messages/migrations`, applied
//! on start), archiving a batch of stored messages in one transaction, and the queries
//! the gateways ask for (history pages, conversation lists, an amend's original).
//!
//! Archiving is idempotent: a row is keyed by (subject, sequence, storage time), all
//! three fixed by JetStream, and a row's effects (a conversation's time, a read
//! position, an edit) are applied only when its insert added it, in the same
//! transaction — so a redelivered batch changes nothing, and a worker killed before its
//! commit leaves nothing half done.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use petrel_core::conversation::api::{Archived, ConversationView, HistoryQuery, Settings};
use petrel_core::conversation::{Effect, Placement, RowKind};
use petrel_core::session::Original;
use petrel_core::subject;
use petrel_core::wire::{Recipient, StoredMessage};
use petrel_core::{ClientMsgId, GroupId, Seq, UserId};
use time::OffsetDateTime;
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// One stored message taken from the stream, ready to archive.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Stored subject.
    pub subject: String,
    /// Stream sequence.
    pub seq: Seq,
    /// When the hub stored it.
    pub stored_at: OffsetDateTime,
    /// The payload as stored.
    pub payload: Bytes,
    /// Decoded.
    pub message: StoredMessage,
    /// Its row's placement.
    pub placement: Placement,
    /// What it changes.
    pub effects: Vec<Effect>,
}

/// A conversation whose view changed in a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    /// `owner`'s conversation `with`.
    Direct {
        /// Whose.
        owner: UserId,
        /// With whom (a user or a group).
        with: Recipient,
    },
    /// A group's conversation, for every member.
    Group(GroupId),
}

/// The archive.
pub struct Store {
    pool: Pool,
    unread_cap: i64,
    /// Months whose partition exists (made by this process or found).
    months: Mutex<HashSet<(i32, u8)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Most conversations an unread total adds up.
const MAX_LISTED: u32 = 10_000;

fn kind_code(k: RowKind) -> i16 {
    k as i16
}

fn peer_key(with: &Recipient) -> (&'static str, String) {
    match with {
        Recipient::User(u) => ("u", u.to_string()),
        Recipient::Group(g) => ("g", g.to_string()),
    }
}

impl Store {
    /// Connects (a pool of `size`) and applies the migrations not yet applied.
    pub async fn open(url: &str, size: usize, unread_cap: u32) -> anyhow::Result<Self> {
        let cfg: tokio_postgres::Config = url.parse().context("messages.postgres_url")?;
        let (mut client, conn) = cfg
            .connect(NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        let driving = tokio::spawn(conn);
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .context("applying the archive's migrations")?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "applied");
        }
        drop(client);
        let _ = driving.await;
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .build()
            .context("building the PostgreSQL pool")?;
        Ok(Self {
            pool,
            unread_cap: i64::from(unread_cap),
            months: Mutex::new(HashSet::new()),
        })
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.context("PostgreSQL connection")
    }

    /// Makes sure the month partitions for `rows` exist. Two workers may race to make
    /// the same one: "already exists" is success.
    async fn ensure_partitions(&self, rows: &[Incoming]) -> anyhow::Result<()> {
        let wanted: HashSet<(i32, u8)> = rows
            .iter()
            .map(|r| r.stored_at.to_offset(time::UtcOffset::UTC))
            .map(|t| (t.year(), t.month() as u8))
            .collect();
        let missing: Vec<(i32, u8)> = {
            let known = self.months.lock().unwrap_or_else(|p| p.into_inner());
            wanted.difference(&known).copied().collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        for (y, m) in missing {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS archive_{y:04}_{m:02} PARTITION OF archive \
                 FOR VALUES FROM ('{y:04}-{m:02}-01 00:00:00+00') TO ('{ny:04}-{nm:02}-01 00:00:00+00')"
            );
            match client.batch_execute(&sql).await {
                Ok(()) => {}
                Err(e)
                    if e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE
                            || *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    }) => {}
                Err(e) => return Err(e).context("creating an archive partition"),
            }
            self.months
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((y, m));
        }
        Ok(())
    }

    /// Archives `rows` and applies the effects of those that were new, in one
    /// transaction. Returns how many were new and the conversations that changed.
    pub async fn archive(&self, rows: &[Incoming]) -> anyhow::Result<(usize, Vec<Changed>)> {
        self.ensure_partitions(rows).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("BEGIN")?;
        // A handful of statements per batch, whatever its size: the rows in one
        // INSERT, the conversation effects merged per conversation.
        let new = insert_rows(&tx, rows).await?;
        let mut merged = Merged::default();
        let mut changed: Vec<Changed> = Vec::new();
        for r in &new {
            for e in &r.effects {
                merged.add(e, r);
                changed.extend(changes(e, r));
            }
        }
        merged.apply(&tx).await?;
        apply_earlier_amendments(&tx, &new).await?;
        tx.commit().await.context("COMMIT")?;
        let mut seen = HashSet::new();
        changed.retain(|c| seen.insert(c.clone()));
        Ok((new.len(), changed))
    }

    /// A page of history from the archive.
    pub async fn history(&self, q: &HistoryQuery) -> anyhow::Result<(Vec<Archived>, bool)> {
        let client = self.client().await?;
        let limit = i64::from(q.limit) + 1;
        let cols = "subject, seq, payload, edited_ms, recalled, edited_content, edited_type";
        // A direct conversation shows messages (amendments are already applied to
        // them); a whole subject reads like the stream, every row.
        let (filter, peer) = match &q.with {
            Some(u) => ("AND peer = $4::text AND kind = 0", u.to_string()),
            None => ("AND $4::text IS NOT NULL", String::new()),
        };
        let sql = if q.newest_first {
            format!(
                "SELECT {cols} FROM archive WHERE subject = $1 AND seq < $2 {filter} \
                 ORDER BY seq DESC LIMIT $3"
            )
        } else {
            format!(
                "SELECT {cols} FROM archive WHERE subject = $1 AND seq > $2 {filter} \
                 ORDER BY seq ASC LIMIT $3"
            )
        };
        let bound = if q.newest_first {
            match q.before.0 {
                0 => i64::MAX,
                b => b as i64,
            }
        } else {
            q.after.0 as i64
        };
        let rows = client
            .query(&sql, &[&q.subject, &bound, &limit, &peer])
            .await?;
        let more = rows.len() as i64 == limit;
        let out = rows
            .into_iter()
            .take(q.limit as usize)
            .map(|row| archived(&row, 0))
            .collect();
        Ok((out, more))
    }

    /// Pins, unpins, mutes or unmutes `owner`'s conversation (a `None` stays as it is).
    pub async fn set_conversation(&self, owner: &UserId, s: &Settings) -> anyhow::Result<()> {
        let client = self.client().await?;
        let (kind, peer) = peer_key(&s.with);
        client
            .execute(
                "INSERT INTO conversations (owner, kind, peer, pinned, muted) \
                 VALUES ($1, $2::text::\"char\", $3, COALESCE($4, false), COALESCE($5, false)) \
                 ON CONFLICT (owner, kind, peer) DO UPDATE SET \
                 pinned = COALESCE($4, conversations.pinned), \
                 muted = COALESCE($5, conversations.muted)",
                &[&owner.as_str(), &kind, &peer, &s.pinned, &s.muted],
            )
            .await
            .context("changing a conversation's settings")?;
        Ok(())
    }

    /// A page of `owner`'s conversations (or, with `only`, just that one): pinned
    /// first, then the most recently changed.
    pub async fn conversations(
        &self,
        owner: &UserId,
        groups: &[GroupId],
        only: Option<&Recipient>,
        offset: u32,
        limit: u32,
    ) -> anyhow::Result<(Vec<ConversationView>, bool)> {
        let client = self.client().await?;
        let inbox = subject::private_inbox(owner);
        let group_ids: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let group_subjects: Vec<String> = groups.iter().map(subject::group_subject).collect();
        let (only_kind, only_peer) = match only {
            Some(w) => {
                let (k, p) = peer_key(w);
                (Some(k.to_string()), Some(p))
            }
            None => (None, None),
        };
        let take = i64::from(limit) + 1;
        let rows = client
            .query(
                CONVERSATIONS_SQL,
                &[
                    &owner.as_str(),
                    &inbox,
                    &group_ids,
                    &group_subjects,
                    &only_kind,
                    &only_peer,
                    &i64::from(offset),
                    &take,
                    &self.unread_cap,
                ],
            )
            .await?;
        let more = rows.len() as i64 == take;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().take(limit as usize) {
            let kind: String = row.get("kind");
            let peer: String = row.get("peer");
            let with = if kind == "g" {
                Recipient::Group(GroupId::parse(peer)?)
            } else {
                Recipient::User(UserId::parse(peer)?)
            };
            let last_seq: Option<i64> = row.get("last_seq");
            let last = match last_seq {
                Some(_) => {
                    let a = archived(&row, 9);
                    petrel_core::conversation::api::archived_delivery(a).ok()
                }
                None => None,
            };
            out.push(ConversationView {
                with,
                last,
                unread: row.get::<_, i64>("unread") as u32,
                unread_mentions: row.get::<_, i64>("mentions") as u32,
                read_seq: Seq(row.get::<_, i64>("read_seq") as u64),
                pinned: row.get("pinned"),
                muted: row.get("muted"),
                updated_ms: row.get::<_, i64>("updated_ms") as u64,
            });
        }
        Ok((out, more))
    }

    /// `owner`'s unread messages over all its conversations (each counted up to the
    /// cap; the push badge).
    pub async fn unread_total(&self, owner: &UserId, groups: &[GroupId]) -> anyhow::Result<u32> {
        let (views, _) = self
            .conversations(owner, groups, None, 0, MAX_LISTED)
            .await?;
        Ok(views
            .iter()
            .map(|v| v.unread)
            .fold(0u32, u32::saturating_add))
    }

    /// Where `user`'s message `id` went and when.
    pub async fn original(
        &self,
        user: &UserId,
        id: &ClientMsgId,
    ) -> anyhow::Result<Option<Original>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT peer, grp, owner, time_ms, bool_or(recalled) OVER () AS recalled FROM archive \
                 WHERE sender = $1 AND client_msg_id = $2 AND kind = 0 LIMIT 1",
                &[&user.as_str(), &id.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let group: Option<String> = row.get("grp");
        let owner: Option<String> = row.get("owner");
        let peer: String = row.get("peer");
        let to = match group {
            Some(g) => Recipient::Group(GroupId::parse(g)?),
            // The recipient's copy is in its inbox (owner); the sender's own copy's
            // peer is the recipient.
            None if owner.as_deref() == Some(user.as_str()) => {
                Recipient::User(UserId::parse(peer)?)
            }
            None => Recipient::User(UserId::parse(owner.unwrap_or_default())?),
        };
        Ok(Some(Original {
            to,
            time_ms: row.get::<_, i64>("time_ms") as u64,
            recalled: row.get("recalled"),
        }))
    }

    /// Whether PostgreSQL answers (for the metrics).
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// A row of `cols` starting at column `at`, as an [`Archived`].
fn archived(row: &tokio_postgres::Row, at: usize) -> Archived {
    let edited_ms = row.get::<_, i64>(at + 3) as u64;
    let content: Option<Vec<u8>> = row.get(at + 5);
    let content_type: Option<String> = row.get(at + 6);
    Archived {
        subject: row.get(at),
        seq: Seq(row.get::<_, i64>(at + 1) as u64),
        payload: Bytes::from(row.get::<_, Vec<u8>>(at + 2)),
        edited_ms,
        recalled: row.get(at + 4),
        content: content.map(|c| (Bytes::from(c), content_type.unwrap_or_default())),
    }
}

/// The conversation list: the owner's direct conversations and the groups it is in
/// that have messages, each with its newest message and its unread counts (counted up
/// to the cap, from the archive's conversation index).
const CONVERSATIONS_SQL: &str = "
WITH c AS (
    SELECT kind::text AS kind, peer, $2::text AS subject, peer AS peer_key,
           read_seq, pinned, muted, updated_ms
    FROM conversations WHERE owner = $1 AND kind = 'u'
    UNION ALL
    SELECT 'g', g.grp, g.subject, '', COALESCE(m.read_seq, 0), COALESCE(m.pinned, false),
           COALESCE(m.muted, false), gl.updated_ms
    FROM unnest($3::text[], $4::text[]) AS g(grp, subject)
    JOIN group_last gl ON gl.grp = g.grp
    LEFT JOIN conversations m ON m.owner = $1 AND m.kind = 'g' AND m.peer = g.grp
),
page AS (
    SELECT * FROM c
    WHERE $5::text IS NULL OR (c.kind = $5 AND c.peer = $6)
    ORDER BY pinned DESC, updated_ms DESC, kind, peer
    OFFSET $7 LIMIT $8
)
SELECT p.kind, p.peer, p.read_seq, p.pinned, p.muted, p.updated_ms,
       u.unread, u.mentions, l.seq AS last_seq,
       l.subject, l.seq, l.payload, l.edited_ms, l.recalled, l.edited_content, l.edited_type
FROM page p
LEFT JOIN LATERAL (
    SELECT a.subject, a.seq, a.payload, a.edited_ms, a.recalled, a.edited_content, a.edited_type
    FROM archive a
    WHERE a.subject = p.subject AND a.peer = p.peer_key AND a.kind = 0
    ORDER BY a.seq DESC LIMIT 1
) l ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS unread, count(*) FILTER (WHERE $1 = ANY(x.mentions)) AS mentions
    FROM (
        SELECT a.mentions FROM archive a
        WHERE a.subject = p.subject AND a.peer = p.peer_key AND a.kind = 0
          AND a.seq > p.read_seq AND a.sender <> $1 AND NOT a.recalled
        ORDER BY a.seq LIMIT $9
    ) x
) u ON true
ORDER BY p.pinned DESC, p.updated_ms DESC, p.kind, p.peer";

/// Inserts `rows` in one statement; returns those archived for the first time, in
/// order (a redelivered row conflicts and is left out: its effects were applied
/// when it was new).
async fn insert_rows<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &'a [Incoming],
) -> anyhow::Result<Vec<&'a Incoming>> {
    let mut cols = Columns::default();
    for r in rows {
        cols.push(r);
    }
    let inserted = tx
        .query(
            "INSERT INTO archive (subject, seq, stored_at, kind, owner, peer, grp, sender, \
             client_msg_id, time_ms, mentions, amends, payload) \
             SELECT subject, seq, stored_at, kind, owner, peer, grp, sender, client_msg_id, \
                    time_ms, string_to_array(mentions, ','), amends, payload \
             FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::smallint[], \
                         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                         $10::bigint[], $11::text[], $12::text[], $13::bytea[]) \
               AS u(subject, seq, stored_at, kind, owner, peer, grp, sender, client_msg_id, \
                    time_ms, mentions, amends, payload) \
             ON CONFLICT DO NOTHING RETURNING subject, seq",
            &[
                &cols.subject,
                &cols.seq,
                &cols.stored_at,
                &cols.kind,
                &cols.owner,
                &cols.peer,
                &cols.group,
                &cols.sender,
                &cols.client_msg_id,
                &cols.time_ms,
                &cols.mentions,
                &cols.amends,
                &cols.payload,
            ],
        )
        .await
        .context("archiving a batch")?;
    let mut fresh: HashSet<(String, i64)> = inserted
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    // A row twice in one batch is new once.
    Ok(rows
        .iter()
        .filter(|r| fresh.remove(&(r.subject.clone(), r.seq.0 as i64)))
        .collect())
}

/// A batch's rows as one array per column (for `unnest`).
#[derive(Default)]
struct Columns<'a> {
    subject: Vec<&'a str>,
    seq: Vec<i64>,
    stored_at: Vec<std::time::SystemTime>,
    kind: Vec<i16>,
    owner: Vec<Option<&'a str>>,
    peer: Vec<&'a str>,
    group: Vec<Option<&'a str>>,
    sender: Vec<&'a str>,
    client_msg_id: Vec<&'a str>,
    time_ms: Vec<i64>,
    /// Comma-joined (user ids have no commas).
    mentions: Vec<String>,
    amends: Vec<Option<&'a str>>,
    payload: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, r: &'a Incoming) {
        let m = &r.message;
        let (owner, peer) = match &r.placement.direct {
            Some((o, p)) => (Some(o.as_str()), p.as_str()),
            None => (None, ""),
        };
        self.subject.push(&r.subject);
        self.seq.push(r.seq.0 as i64);
        self.stored_at
            .push(std::time::SystemTime::from(r.stored_at));
        self.kind.push(kind_code(r.placement.kind));
        self.owner.push(owner);
        self.peer.push(peer);
        self.group
            .push(r.placement.group.as_ref().map(|g| g.as_str()));
        self.sender.push(m.from.as_str());
        self.client_msg_id.push(&m.client_msg_id);
        self.time_ms.push(m.time_ms as i64);
        self.mentions.push(
            m.meta
                .mentions
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        self.amends
            .push(m.meta.amends.as_ref().map(|a| a.target.as_str()));
        self.payload.push(r.payload.as_ref());
    }
}

/// A batch's conversation effects, merged: each conversation once with the greatest
/// time and read position (what the statements keep anyway), so a burst into one
/// conversation costs one row update, not one per message.
#[derive(Default)]
struct Merged<'a> {
    /// (owner, peer) → (newest time, read position).
    direct: HashMap<(&'a str, &'a str), (i64, i64)>,
    /// group → (last seq, newest time).
    groups: HashMap<&'a str, (i64, i64)>,
    /// (owner, kind, peer) → read position.
    reads: HashMap<(&'a str, &'static str, String), i64>,
    /// Applied one by one, in order, after the merged ones: amendments, and reads "up
    /// to the group's newest" (which need the group's newest first).
    later: Vec<(&'a Effect, &'a StoredMessage)>,
}

impl<'a> Merged<'a> {
    fn add(&mut self, e: &'a Effect, r: &'a Incoming) {
        match e {
            Effect::DirectMessage {
                owner,
                with,
                time_ms,
                read_to,
            } => {
                let v = self
                    .direct
                    .entry((owner.as_str(), with.as_str()))
                    .or_insert((0, 0));
                v.0 = v.0.max(*time_ms as i64);
                v.1 = v.1.max(read_to.map_or(0, |s| s.0 as i64));
            }
            Effect::GroupMessage {
                group,
                sender,
                seq,
                time_ms,
            } => {
                let v = self.groups.entry(group.as_str()).or_insert((0, 0));
                v.0 = v.0.max(seq.0 as i64);
                v.1 = v.1.max(*time_ms as i64);
                self.read(sender, &Recipient::Group(group.clone()), seq.0 as i64);
            }
            Effect::Read {
                with: Recipient::Group(_),
                seq: Seq(0),
                ..
            } => self.later.push((e, &r.message)),
            Effect::Read {
                owner, with, seq, ..
            } => self.read(owner, with, seq.0 as i64),
            Effect::Amend { .. } => self.later.push((e, &r.message)),
        }
    }

    fn read(&mut self, owner: &'a UserId, with: &Recipient, seq: i64) {
        let (kind, peer) = peer_key(with);
        let v = self.reads.entry((owner.as_str(), kind, peer)).or_insert(0);
        *v = (*v).max(seq);
    }

    async fn apply(self, tx: &deadpool_postgres::Transaction<'_>) -> anyhow::Result<()> {
        if !self.direct.is_empty() {
            let (mut owners, mut peers, mut times, mut reads) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((o, p), (t, r)) in &self.direct {
                owners.push(*o);
                peers.push(*p);
                times.push(*t);
                reads.push(*r);
            }
            tx.execute(
                "INSERT INTO conversations (owner, kind, peer, read_seq, updated_ms) \
                 SELECT o, 'u', p, r, t FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(o, p, r, t) \
                 ON CONFLICT (owner, kind, peer) DO UPDATE SET \
                 read_seq = GREATEST(conversations.read_seq, EXCLUDED.read_seq), \
                 updated_ms = GREATEST(conversations.updated_ms, EXCLUDED.updated_ms)",
                &[&owners, &peers, &reads, &times],
            )
            .await
            .context("conversations of a batch")?;
        }
        if !self.groups.is_empty() {
            let (mut groups, mut seqs, mut times) = (Vec::new(), Vec::new(), Vec::new());
            for (g, (s, t)) in &self.groups {
                groups.push(*g);
                seqs.push(*s);
                times.push(*t);
            }
            tx.execute(
                "INSERT INTO group_last (grp, last_seq, updated_ms) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (grp) DO UPDATE SET \
                 last_seq = GREATEST(group_last.last_seq, EXCLUDED.last_seq), \
                 updated_ms = GREATEST(group_last.updated_ms, EXCLUDED.updated_ms)",
                &[&groups, &seqs, &times],
            )
            .await
            .context("groups of a batch")?;
        }
        if !self.reads.is_empty() {
            let (mut owners, mut kinds, mut peers, mut seqs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((o, k, p), s) in &self.reads {
                owners.push(*o);
                kinds.push(*k);
                peers.push(p.as_str());
                seqs.push(*s);
            }
            tx.execute(
                "INSERT INTO conversations (owner, kind, peer, read_seq) \
                 SELECT o, k::\"char\", p, s FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(o, k, p, s) \
                 ON CONFLICT (owner, kind, peer) DO UPDATE SET \
                 read_seq = GREATEST(conversations.read_seq, EXCLUDED.read_seq)",
                &[&owners, &kinds, &peers, &seqs],
            )
            .await
            .context("read positions of a batch")?;
        }
        for (e, m) in self.later {
            apply(tx, e, m).await?;
        }
        Ok(())
    }
}

/// Messages archived after amendments of them (two workers, out of order, or an
/// amendment earlier in the same batch): apply what was already said about them, in
/// one query for the batch.
async fn apply_earlier_amendments(
    tx: &deadpool_postgres::Transaction<'_>,
    new: &[&Incoming],
) -> anyhow::Result<()> {
    let (senders, ids): (Vec<&str>, Vec<&str>) = new
        .iter()
        .filter(|r| r.placement.kind == RowKind::Message)
        .map(|r| (r.message.from.as_str(), r.message.client_msg_id.as_str()))
        .unzip();
    if senders.is_empty() {
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT payload FROM archive WHERE amends IS NOT NULL \
             AND (sender, amends) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
             ORDER BY time_ms",
            &[&senders, &ids],
        )
        .await
        .context("amendments of new messages")?;
    for row in rows {
        let payload: Vec<u8> = row.try_get(0)?;
        if let Ok(a) = StoredMessage::decode(Bytes::from(payload))
            && let Some(amendment) = a.meta.amends.clone()
        {
            let e = Effect::Amend {
                sender: a.from.clone(),
                amendment,
                time_ms: a.time_ms,
            };
            apply(tx, &e, &a).await?;
        }
    }
    Ok(())
}

/// Applies one effect that is not merged: a read up to a group's newest, or an
/// amendment (the newest wins; a recall is final).
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    e: &Effect,
    m: &StoredMessage,
) -> anyhow::Result<()> {
    match e {
        // Merged for the whole batch (`Merged::apply`).
        Effect::DirectMessage { .. } | Effect::GroupMessage { .. } => {}
        Effect::Read {
            owner, with, seq, ..
        } => {
            let seq = match (with, seq.0) {
                (Recipient::Group(g), 0) => tx
                    .query_opt(
                        "SELECT last_seq FROM group_last WHERE grp = $1",
                        &[&g.as_str()],
                    )
                    .await?
                    .map_or(0, |r| r.get::<_, i64>(0)),
                (_, s) => s as i64,
            };
            read_to(tx, owner, with, seq).await?;
        }
        Effect::Amend {
            sender,
            amendment,
            time_ms,
        } => {
            let (content, content_type): (Option<&[u8]>, Option<&str>) = if amendment.recall {
                (None, None)
            } else {
                (Some(m.content.as_ref()), Some(m.content_type.as_str()))
            };
            // The newest amendment wins; a recall is final.
            tx.execute(
                "UPDATE archive SET edited_ms = $3::bigint, recalled = recalled OR $4::boolean, \
                 edited_content = CASE WHEN $4::boolean THEN NULL ELSE $5::bytea END, \
                 edited_type = CASE WHEN $4::boolean THEN NULL ELSE $6::text END \
                 WHERE sender = $1 AND client_msg_id = $2 AND kind = 0 \
                 AND NOT recalled AND (edited_ms < $3::bigint OR $4::boolean)",
                &[
                    &sender.as_str(),
                    &amendment.target.as_str(),
                    &(*time_ms as i64),
                    &amendment.recall,
                    &content,
                    &content_type,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Moves `owner`'s read position in `with` forward to `seq` (never back).
async fn read_to(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &UserId,
    with: &Recipient,
    seq: i64,
) -> anyhow::Result<()> {
    let (kind, peer) = peer_key(with);
    tx.execute(
        "INSERT INTO conversations (owner, kind, peer, read_seq) VALUES ($1, $2::text::\"char\", $3, $4) \
         ON CONFLICT (owner, kind, peer) DO UPDATE SET \
         read_seq = GREATEST(conversations.read_seq, EXCLUDED.read_seq)",
        &[&owner.as_str(), &kind, &peer, &seq],
    )
    .await?;
    Ok(())
}

/// The conversations an effect changes, for live updates.
fn changes(e: &Effect, r: &Incoming) -> Vec<Changed> {
    match e {
        Effect::DirectMessage { owner, with, .. } => vec![Changed::Direct {
            owner: owner.clone(),
            with: Recipient::User(with.clone()),
        }],
        Effect::GroupMessage { group, .. } => vec![Changed::Group(group.clone())],
        Effect::Read { owner, with, .. } => vec![Changed::Direct {
            owner: owner.clone(),
            with: with.clone(),
        }],
        Effect::Amend { .. } => match (&r.placement.direct, &r.placement.group) {
            (Some((owner, peer)), _) => vec![Changed::Direct {
                owner: owner.clone(),
                with: Recipient::User(peer.clone()),
            }],
            (None, Some(g)) => vec![Changed::Group(g.clone())],
            (None, None) => Vec::new(),
        },
    }
}
