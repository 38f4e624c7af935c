//! The PostgreSQL store for cluster mode.
//!
//! - Migrations (`logic/migrations/*.sql`) are compiled in and applied at start under
//!   an advisory lock, so several logic nodes starting at once apply each exactly once.
//! - Appends go through one writer task per logic node that takes every append
//!   waiting at that moment and runs them in one transaction, pipelined on one
//!   connection (group commit): one commit, hence one WAL flush, per batch. Each append
//!   is one call of the `fastim_append` SQL function, which takes the conversation's
//!   next sequence number (a row lock serializes writers across nodes), stores the
//!   message, and deduplicates by `(conversation, sender, client_msg_id)`.
//! - Everything else is a plain statement on a pooled connection.
//!
//! The schema is distributable by conversation id (see the migration's header).

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use fastim_proto::client::Message;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::*;

/// Schema versions, in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_jobs.sql")),
];
/// Key of the advisory lock taken while migrating.
const MIGRATION_LOCK: i64 = 0x0FA5_71A1;
/// Most appends in one group commit.
const MAX_BATCH: usize = 256;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

struct AppendJob {
    message: Message,
    reply: oneshot::Sender<StoreResult<Appended>>,
}

/// The PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: Pool,
    /// Appends for the group-commit writer.
    appends: mpsc::Sender<AppendJob>,
}

impl PostgresStore {
    /// Connects (`url`: a libpq-style string or `postgres://` URL), applies migrations,
    /// and starts the writer. Fails with `Unavailable` when the server cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> StoreResult<PostgresStore> {
        let mut config = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(unavailable)?;
        migrate(&pool).await?;
        let (appends, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(pool.clone(), rx));
        Ok(PostgresStore { pool, appends })
    }

    /// [`PostgresStore::connect`] with an owned url and a pool of 8 (for spawning).
    pub async fn connect_owned(url: String) -> StoreResult<PostgresStore> {
        PostgresStore::connect(&url, 8).await
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(unavailable)
    }
}

/// Parses and checks a connection string (libpq `key=value ...` or a `postgres://`
/// URL); the error says what is wrong with it.
pub fn parse_url(url: &str) -> StoreResult<tokio_postgres::Config> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("invalid database url: {e}")))?;
    for host in config.get_hosts() {
        if let tokio_postgres::config::Host::Tcp(name) = host
            && (name.contains('=') || name.contains(' '))
        {
            // "host=a,port=5,..." parses as a host list; refuse instead of guessing.
            return Err(StoreError::Unavailable(format!(
                "invalid database url: host {name:?} looks like a mangled connection string \
                 (separate key=value pairs with spaces, or use postgres://user@host:port/db)"
            )));
        }
    }
    Ok(config)
}

async fn migrate(pool: &Pool) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(unavailable)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(unavailable)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS fastim_schema (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
        for (version, sql) in MIGRATIONS {
            let done = client.query_opt("SELECT 1 FROM fastim_schema WHERE version = $1", &[version]).await?;
            if done.is_some() {
                continue;
            }
            let txn = client.transaction().await?;
            txn.batch_execute(sql).await?;
            txn.execute("INSERT INTO fastim_schema (version) VALUES ($1)", &[version]).await?;
            txn.commit().await?;
            tracing::info!(version, "applied schema migration");
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result.map_err(unavailable)?;
    unlock.map_err(unavailable)?;
    Ok(())
}

/// The group-commit writer: batches appends into transactions until the store is dropped.
async fn writer(pool: Pool, mut rx: mpsc::Receiver<AppendJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let messages: Vec<&Message> = jobs.iter().map(|j| &j.message).collect();
        match append_batch(&pool, &messages).await {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = jobs.len(), "group commit failed; nothing in it was acknowledged");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn append_batch(pool: &Pool, messages: &[&Message]) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let txn = client.transaction().await.map_err(unavailable)?;
    let statement = txn
        .prepare_cached("SELECT out_seq, out_body, out_duplicate FROM fastim_append($1, $2, $3, $4, $5)")
        .await
        .map_err(unavailable)?;
    // The seq is a column; the stored body carries everything else.
    let bodies: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| Message { seq: 0, ..(*m).clone() }.encode_to_vec())
        .collect();
    let params: Vec<(i64, i64)> = messages.iter().map(|m| (m.id as i64, m.sender_id as i64)).collect();
    // Issued together, the calls are pipelined on the connection, in order.
    let args: Vec<[&(dyn ToSql + Sync); 5]> = messages
        .iter()
        .zip(&bodies)
        .zip(&params)
        .map(|((m, body), (id, sender))| -> [&(dyn ToSql + Sync); 5] {
            [&m.conversation, id, sender, &m.client_msg_id, body]
        })
        .collect();
    let calls = args.iter().map(|a| txn.query_one(&statement, a));
    let rows = futures_util::future::try_join_all(calls).await.map_err(unavailable)?;
    txn.commit().await.map_err(unavailable)?;
    Ok(messages
        .iter()
        .zip(rows)
        .map(|(m, row)| {
            let seq: Option<i64> = row.get(0);
            let Some(seq) = seq else {
                return Err(StoreError::NotFound(format!("conversation {}", m.conversation)));
            };
            let body: Vec<u8> = row.get(1);
            let mut message = Message::decode(body.as_slice()).map_err(unavailable)?;
            message.seq = seq as u64;
            Ok(Appended {
                message,
                duplicate: row.get(2),
            })
        })
        .collect())
}

fn message_from(seq: i64, body: &[u8]) -> StoreResult<Message> {
    let mut message = Message::decode(body).map_err(unavailable)?;
    message.seq = seq as u64;
    Ok(message)
}

fn user_from(row: &tokio_postgres::Row) -> UserRecord {
    UserRecord {
        id: row.get::<_, i64>(0) as u64,
        name: row.get(1),
        password_hash: row.get(2),
        created_ms: row.get::<_, i64>(3) as u64,
    }
}

fn group_from(row: &tokio_postgres::Row) -> GroupRecord {
    GroupRecord {
        id: row.get::<_, i64>(0) as u64,
        name: row.get(1),
        owner_id: row.get::<_, i64>(2) as u64,
    }
}

fn ids(users: &[u64]) -> Vec<i64> {
    users.iter().map(|u| *u as i64).collect()
}

#[tonic::async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> StoreResult<UserRecord> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO users (name, password_hash, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING RETURNING id, name, password_hash, created_ms",
                &[&name, &password_hash, &(now_ms as i64)],
            )
            .await
            .map_err(unavailable)?;
        row.map(|r| user_from(&r))
            .ok_or_else(|| StoreError::UserExists(name.to_owned()))
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let client = self.client().await?;
        let sql = "SELECT id, name, password_hash, created_ms FROM users WHERE name = $1";
        Ok(client
            .query_opt(sql, &[&name])
            .await
            .map_err(unavailable)?
            .map(|r| user_from(&r)))
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<UserRecord>> {
        let client = self.client().await?;
        let sql = "SELECT id, name, password_hash, created_ms FROM users WHERE id = $1";
        Ok(client
            .query_opt(sql, &[&(id as i64)])
            .await
            .map_err(unavailable)?
            .map(|r| user_from(&r)))
    }

    async fn create_session(&self, token_hash: &str, session: SessionRecord) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sessions (token_hash, user_id, device_id, expires_ms) VALUES ($1, $2, $3, $4)",
                &[
                    &token_hash,
                    &(session.user_id as i64),
                    &session.device_id,
                    &(session.expires_ms as i64),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT user_id, device_id, expires_ms FROM sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| SessionRecord {
            user_id: r.get::<_, i64>(0) as u64,
            device_id: r.get(1),
            expires_ms: r.get::<_, i64>(2) as u64,
        }))
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ensure_direct(&self, conversation: &str, a: u64, b: u64) -> StoreResult<()> {
        let mut client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM conversations WHERE id = $1", &[&conversation])
            .await
            .map_err(unavailable)?;
        if exists.is_some() {
            return Ok(());
        }
        let txn = client.transaction().await.map_err(unavailable)?;
        txn.execute(
            "INSERT INTO conversations (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&conversation],
        )
        .await
        .map_err(unavailable)?;
        txn.execute(
            "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::BIGINT[]) ON CONFLICT DO NOTHING",
            &[&conversation, &ids(&[a, b])],
        )
        .await
        .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)
    }

    async fn create_group(&self, name: &str, owner_id: u64, members: &[u64]) -> StoreResult<GroupRecord> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(unavailable)?;
        let row = txn
            .query_one(
                "INSERT INTO groups (name, owner_id) VALUES ($1, $2) RETURNING id, name, owner_id",
                &[&name, &(owner_id as i64)],
            )
            .await
            .map_err(unavailable)?;
        let group = group_from(&row);
        let conversation = fastim_proto::conversation::group(group.id);
        txn.execute("INSERT INTO conversations (id) VALUES ($1)", &[&conversation])
            .await
            .map_err(unavailable)?;
        txn.execute(
            "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::BIGINT[]) ON CONFLICT DO NOTHING",
            &[&conversation, &ids(members)],
        )
        .await
        .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)?;
        Ok(group)
    }

    async fn group(&self, id: u64) -> StoreResult<Option<GroupRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT id, name, owner_id FROM groups WHERE id = $1", &[&(id as i64)])
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| group_from(&r)))
    }

    async fn add_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()> {
        let client = self.client().await?;
        let added = client
            .execute(
                "INSERT INTO members (conversation_id, user_id)
                 SELECT c.id, u FROM conversations c, unnest($2::BIGINT[]) AS u WHERE c.id = $1
                 ON CONFLICT DO NOTHING",
                &[&conversation, &ids(users)],
            )
            .await
            .map_err(unavailable)?;
        if added == 0 {
            let exists = client
                .query_opt("SELECT 1 FROM conversations WHERE id = $1", &[&conversation])
                .await
                .map_err(unavailable)?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("conversation {conversation}")));
            }
        }
        Ok(())
    }

    async fn remove_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM members WHERE conversation_id = $1 AND user_id = ANY($2::BIGINT[])",
                &[&conversation, &ids(users)],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn members(&self, conversation: &str) -> StoreResult<Vec<u64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT user_id FROM members WHERE conversation_id = $1",
                &[&conversation],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    async fn is_member(&self, conversation: &str, user: u64) -> StoreResult<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation, &(user as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.is_some())
    }

    async fn user_conversations(&self, user: u64) -> StoreResult<Vec<ConversationState>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT m.conversation_id, c.last_seq, m.read_seq FROM members m
                 JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1 ORDER BY m.conversation_id",
                &[&(user as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| ConversationState {
                conversation: r.get(0),
                last_seq: r.get::<_, i64>(1) as u64,
                read_seq: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn append(&self, new: NewMessage) -> StoreResult<Appended> {
        let (reply, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("postgres writer stopped".into());
        self.appends
            .send(AppendJob {
                message: new.message,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn messages_after(&self, conversation: &str, after: u64, limit: usize) -> StoreResult<Vec<Message>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, body FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&conversation, &(after.min(i64::MAX as u64) as i64), &(limit as i64)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| message_from(r.get(0), r.get(1))).collect()
    }

    async fn messages_before(&self, conversation: &str, before: u64, limit: usize) -> StoreResult<Vec<Message>> {
        let before = if before == 0 {
            i64::MAX
        } else {
            before.min(i64::MAX as u64) as i64
        };
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, body FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[&conversation, &before, &(limit as i64)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| message_from(r.get(0), r.get(1))).collect()
    }

    async fn cursors(&self, user: u64, device_id: &str) -> StoreResult<HashMap<String, u64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT conversation_id, seq FROM cursors WHERE user_id = $1 AND device_id = $2",
                &[&(user as i64), &device_id],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
    }

    async fn advance_cursors(&self, updates: &[CursorUpdate]) -> StoreResult<()> {
        // One row per key (the highest seq): an upsert may not touch a row twice.
        let mut highest: HashMap<(u64, &str, &str), u64> = HashMap::new();
        for u in updates {
            let slot = highest
                .entry((u.user, u.device_id.as_str(), u.conversation.as_str()))
                .or_insert(0);
            *slot = (*slot).max(u.seq);
        }
        let (mut users, mut devices, mut conversations, mut seqs) = (vec![], vec![], vec![], vec![]);
        for ((user, device, conversation), seq) in highest {
            users.push(user as i64);
            devices.push(device);
            conversations.push(conversation);
            seqs.push(seq as i64);
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO cursors (user_id, device_id, conversation_id, seq)
                 SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[])
                 ON CONFLICT (user_id, device_id, conversation_id) DO UPDATE SET seq = GREATEST(cursors.seq, EXCLUDED.seq)",
                &[&users, &devices, &conversations, &seqs],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn mark_read(&self, user: u64, conversation: &str, seq: u64) -> StoreResult<()> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE members SET read_seq = GREATEST(read_seq, $3) WHERE user_id = $1 AND conversation_id = $2",
                &[&(user as i64), &conversation, &(seq.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(unavailable)?;
        if updated == 0 {
            return Err(StoreError::NotFound(format!("conversation {conversation}")));
        }
        Ok(())
    }

    async fn purge_expired_sessions(&self, now_ms: u64, fencing: i64) -> StoreResult<Option<u64>> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(unavailable)?;
        let fenced = txn
            .query_opt(
                "INSERT INTO fastim_jobs (job, fencing, last_run_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (job) DO UPDATE SET fencing = EXCLUDED.fencing, last_run_ms = EXCLUDED.last_run_ms
                 WHERE fastim_jobs.fencing <= EXCLUDED.fencing RETURNING fencing",
                &[&SESSION_PURGE_JOB, &fencing, &(now_ms as i64)],
            )
            .await
            .map_err(unavailable)?;
        if fenced.is_none() {
            return Ok(None);
        }
        let deleted = txn
            .execute("DELETE FROM sessions WHERE expires_ms < $1", &[&(now_ms as i64)])
            .await
            .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some(deleted))
    }
}
