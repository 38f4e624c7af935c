//! The embedded store for `fastim standalone`: one redb file, no server.
//!
//! Reads open a read transaction on the caller's task (redb reads are lock-free
//! copy-on-write snapshots). Every write goes to one writer thread that takes all
//! writes waiting at that moment, applies them in one transaction and commits it
//! with an fsync (group commit): the callers are answered only after that commit,
//! so an acknowledged message survives `kill -9`, and throughput does not hinge on
//! one fsync per message.
//!
//! Every write job checks its preconditions before it writes anything, so a job
//! that fails for a reason of its own (a taken user name) leaves the shared
//! transaction untouched; a storage error aborts the whole batch and every caller
//! in it gets `Unavailable`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fastim_proto::client::Message;
use prost::Message as _;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::*;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USER_IDS: TableDefinition<u64, &str> = TableDefinition::new("user_ids");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
/// conversation -> last seq.
const CONVERSATIONS: TableDefinition<&str, u64> = TableDefinition::new("conversations");
/// (conversation, user) -> ().
const MEMBERS: TableDefinition<(&str, u64), ()> = TableDefinition::new("members");
/// (user, conversation) -> read seq.
const USER_CONVERSATIONS: TableDefinition<(u64, &str), u64> = TableDefinition::new("user_conversations");
/// (conversation, seq) -> protobuf `Message`.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (conversation, sender, client message id) -> seq.
const DEDUP: TableDefinition<(&str, u64, &str), u64> = TableDefinition::new("dedup");
/// (user, device, conversation) -> delivered seq.
const CURSORS: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("cursors");
/// Counters: "next_user_id", "next_group_id".
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

/// The redb-backed [`Store`].
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Write jobs for the writer thread; closing it stops the thread.
    jobs: mpsc::Sender<Job>,
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Unavailable(format!("embedded store: {e}"))
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Unavailable(format!("corrupt record: {e}")))
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

fn decode_message(bytes: &[u8]) -> StoreResult<Message> {
    Message::decode(bytes).map_err(|e| StoreError::Unavailable(format!("corrupt message: {e}")))
}

fn next_counter(txn: &WriteTransaction, name: &str) -> StoreResult<u64> {
    let mut meta = txn.open_table(META)?;
    let next = meta.get(name)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(name, next + 1)?;
    Ok(next)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
        let db = Database::create(dir.join("fastim.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(USERS)?;
            txn.open_table(USER_IDS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(GROUPS)?;
            txn.open_table(CONVERSATIONS)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(USER_CONVERSATIONS)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(DEDUP)?;
            txn.open_table(CURSORS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("fastim-store-writer".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore { db, jobs })
    }

    /// Runs `f` in the next group-commit transaction and returns its result once committed.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let result = f(txn);
            let fatal = matches!(result, Err(StoreError::Unavailable(_)));
            let completion: Completion = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            });
            (completion, fatal)
        });
        // The writer drops a job it cannot run (store closing, transaction failure).
        let closed = || StoreError::Unavailable("embedded store could not run the write".into());
        self.jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The highest message id stored so far (0 when empty). Standalone starts its
    /// id generator above it, so a clock set back across a restart cannot make it
    /// issue an id twice.
    pub fn max_message_id(&self) -> StoreResult<u64> {
        self.read(|txn| {
            Ok(txn
                .open_table(META)?
                .get("max_message_id")?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T>) -> StoreResult<T> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }
}

/// The writer thread: batches jobs into transactions until the store is dropped.
fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the jobs answers each caller with Unavailable (see `write`).
                tracing::error!(error = %StoreError::from(e), "cannot begin a write transaction");
                continue;
            }
        };
        let mut completions = Vec::with_capacity(jobs.len());
        let mut failed = false;
        for job in jobs {
            let (completion, fatal) = job(&txn);
            failed |= fatal;
            completions.push(completion);
        }
        let commit_error = if failed {
            let _ = txn.abort();
            Some(StoreError::Unavailable(
                "a storage error aborted the transaction".into(),
            ))
        } else {
            txn.commit().err().map(StoreError::from)
        };
        if let Some(e) = &commit_error {
            tracing::error!(error = %e, "group commit failed");
        }
        for completion in completions {
            completion(commit_error.clone());
        }
    }
}

#[tonic::async_trait]
impl Store for EmbeddedStore {
    async fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> StoreResult<UserRecord> {
        let (name, password_hash) = (name.to_owned(), password_hash.to_owned());
        self.write(move |txn| {
            let users = txn.open_table(USERS)?;
            if users.get(name.as_str())?.is_some() {
                return Err(StoreError::UserExists(name));
            }
            drop(users);
            let id = next_counter(txn, "next_user_id")?;
            let user = UserRecord {
                id,
                name,
                password_hash,
                created_ms: now_ms,
            };
            txn.open_table(USERS)?
                .insert(user.name.as_str(), encode_json(&user).as_slice())?;
            txn.open_table(USER_IDS)?.insert(id, user.name.as_str())?;
            Ok(user)
        })
        .await
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        self.read(|txn| match txn.open_table(USERS)?.get(name)? {
            Some(v) => decode_json(v.value()).map(Some),
            None => Ok(None),
        })
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<UserRecord>> {
        let name = self.read(|txn| Ok(txn.open_table(USER_IDS)?.get(id)?.map(|v| v.value().to_owned())))?;
        match name {
            Some(name) => self.user_by_name(&name).await,
            None => Ok(None),
        }
    }

    async fn create_session(&self, token_hash: &str, session: SessionRecord) -> StoreResult<()> {
        let token_hash = token_hash.to_owned();
        self.write(move |txn| {
            txn.open_table(SESSIONS)?
                .insert(token_hash.as_str(), encode_json(&session).as_slice())?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.read(|txn| match txn.open_table(SESSIONS)?.get(token_hash)? {
            Some(v) => decode_json(v.value()).map(Some),
            None => Ok(None),
        })
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let token_hash = token_hash.to_owned();
        self.write(move |txn| {
            txn.open_table(SESSIONS)?.remove(token_hash.as_str())?;
            Ok(())
        })
        .await
    }

    async fn ensure_direct(&self, conversation: &str, a: u64, b: u64) -> StoreResult<()> {
        let exists = self.read(|txn| Ok(txn.open_table(CONVERSATIONS)?.get(conversation)?.is_some()))?;
        if exists {
            return Ok(());
        }
        let conversation = conversation.to_owned();
        self.write(move |txn| {
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            if conversations.get(conversation.as_str())?.is_none() {
                conversations.insert(conversation.as_str(), 0)?;
                drop(conversations);
                insert_members(txn, &conversation, &[a, b])?;
            }
            Ok(())
        })
        .await
    }

    async fn create_group(&self, name: &str, owner_id: u64, members: &[u64]) -> StoreResult<GroupRecord> {
        let (name, members) = (name.to_owned(), members.to_vec());
        self.write(move |txn| {
            let id = next_counter(txn, "next_group_id")?;
            let group = GroupRecord { id, name, owner_id };
            txn.open_table(GROUPS)?.insert(id, encode_json(&group).as_slice())?;
            let conversation = fastim_proto::conversation::group(id);
            txn.open_table(CONVERSATIONS)?.insert(conversation.as_str(), 0)?;
            insert_members(txn, &conversation, &members)?;
            Ok(group)
        })
        .await
    }

    async fn group(&self, id: u64) -> StoreResult<Option<GroupRecord>> {
        self.read(|txn| match txn.open_table(GROUPS)?.get(id)? {
            Some(v) => decode_json(v.value()).map(Some),
            None => Ok(None),
        })
    }

    async fn add_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()> {
        let (conversation, users) = (conversation.to_owned(), users.to_vec());
        self.write(move |txn| {
            if txn.open_table(CONVERSATIONS)?.get(conversation.as_str())?.is_none() {
                return Err(StoreError::NotFound(format!("conversation {conversation}")));
            }
            insert_members(txn, &conversation, &users)
        })
        .await
    }

    async fn remove_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()> {
        let (conversation, users) = (conversation.to_owned(), users.to_vec());
        self.write(move |txn| {
            let mut members = txn.open_table(MEMBERS)?;
            let mut user_conversations = txn.open_table(USER_CONVERSATIONS)?;
            for user in users {
                members.remove((conversation.as_str(), user))?;
                user_conversations.remove((user, conversation.as_str()))?;
            }
            Ok(())
        })
        .await
    }

    async fn members(&self, conversation: &str) -> StoreResult<Vec<u64>> {
        self.read(|txn| {
            let table = txn.open_table(MEMBERS)?;
            let mut out = Vec::new();
            for entry in table.range((conversation, 0)..=(conversation, u64::MAX))? {
                out.push(entry?.0.value().1);
            }
            Ok(out)
        })
    }

    async fn is_member(&self, conversation: &str, user: u64) -> StoreResult<bool> {
        self.read(|txn| Ok(txn.open_table(MEMBERS)?.get((conversation, user))?.is_some()))
    }

    async fn user_conversations(&self, user: u64) -> StoreResult<Vec<ConversationState>> {
        self.read(|txn| {
            let table = txn.open_table(USER_CONVERSATIONS)?;
            let conversations = txn.open_table(CONVERSATIONS)?;
            let mut out = Vec::new();
            // Conversation ids are ASCII ("d:", "g:"), so "~" sorts after all of them.
            for entry in table.range((user, "")..=(user, "~"))? {
                let (key, read) = entry?;
                let conversation = key.value().1.to_owned();
                let last_seq = conversations
                    .get(conversation.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                out.push(ConversationState {
                    conversation,
                    last_seq,
                    read_seq: read.value(),
                });
            }
            Ok(out)
        })
    }

    async fn append(&self, new: NewMessage) -> StoreResult<Appended> {
        self.write(move |txn| {
            let mut message = new.message;
            let dedup_key = (
                message.conversation.as_str(),
                message.sender_id,
                message.client_msg_id.as_str(),
            );
            if !message.client_msg_id.is_empty()
                && let Some(seq) = txn.open_table(DEDUP)?.get(dedup_key)?
            {
                let messages = txn.open_table(MESSAGES)?;
                let stored = messages
                    .get((message.conversation.as_str(), seq.value()))?
                    .ok_or_else(|| StoreError::Unavailable("dedup entry without message".into()))?;
                return Ok(Appended {
                    message: decode_message(stored.value())?,
                    duplicate: true,
                });
            }
            let mut conversations = txn.open_table(CONVERSATIONS)?;
            let last = conversations
                .get(message.conversation.as_str())?
                .map(|v| v.value())
                .ok_or_else(|| StoreError::NotFound(format!("conversation {}", message.conversation)))?;
            message.seq = last + 1;
            conversations.insert(message.conversation.as_str(), message.seq)?;
            txn.open_table(MESSAGES)?.insert(
                (message.conversation.as_str(), message.seq),
                message.encode_to_vec().as_slice(),
            )?;
            // The highest message id ever stored: a restarted id generator starts above it.
            let mut meta = txn.open_table(META)?;
            if meta.get("max_message_id")?.is_none_or(|v| v.value() < message.id) {
                meta.insert("max_message_id", message.id)?;
            }
            drop(meta);
            // The sender has read everything up to its own message.
            let mut read = txn.open_table(USER_CONVERSATIONS)?;
            let read_key = (message.sender_id, message.conversation.as_str());
            if read.get(read_key)?.is_some() {
                read.insert(read_key, message.seq)?;
            }
            drop(read);
            if !message.client_msg_id.is_empty() {
                txn.open_table(DEDUP)?.insert(
                    (
                        message.conversation.as_str(),
                        message.sender_id,
                        message.client_msg_id.as_str(),
                    ),
                    message.seq,
                )?;
            }
            Ok(Appended {
                message,
                duplicate: false,
            })
        })
        .await
    }

    async fn messages_after(&self, conversation: &str, after: u64, limit: usize) -> StoreResult<Vec<Message>> {
        self.read(|txn| {
            let table = txn.open_table(MESSAGES)?;
            let mut out = Vec::new();
            for entry in table
                .range((conversation, after.saturating_add(1))..=(conversation, u64::MAX))?
                .take(limit)
            {
                out.push(decode_message(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    async fn messages_before(&self, conversation: &str, before: u64, limit: usize) -> StoreResult<Vec<Message>> {
        let before = if before == 0 { u64::MAX } else { before };
        self.read(|txn| {
            let table = txn.open_table(MESSAGES)?;
            let mut out = Vec::new();
            for entry in table
                .range((conversation, 0)..(conversation, before))?
                .rev()
                .take(limit)
            {
                out.push(decode_message(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    async fn cursors(&self, user: u64, device_id: &str) -> StoreResult<HashMap<String, u64>> {
        self.read(|txn| {
            let table = txn.open_table(CURSORS)?;
            let mut out = HashMap::new();
            for entry in table.range((user, device_id, "")..=(user, device_id, "~"))? {
                let (key, seq) = entry?;
                out.insert(key.value().2.to_owned(), seq.value());
            }
            Ok(out)
        })
    }

    async fn advance_cursors(&self, updates: &[CursorUpdate]) -> StoreResult<()> {
        let updates = updates.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(CURSORS)?;
            for u in &updates {
                let key = (u.user, u.device_id.as_str(), u.conversation.as_str());
                let current = table.get(key)?.map(|v| v.value()).unwrap_or(0);
                if u.seq > current {
                    table.insert(key, u.seq)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn mark_read(&self, user: u64, conversation: &str, seq: u64) -> StoreResult<()> {
        let conversation = conversation.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(USER_CONVERSATIONS)?;
            let key = (user, conversation.as_str());
            let current = table.get(key)?.map(|v| v.value());
            match current {
                None => Err(StoreError::NotFound(format!("conversation {conversation}"))),
                Some(current) if seq > current => {
                    table.insert(key, seq)?;
                    Ok(())
                }
                Some(_) => Ok(()),
            }
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_ms: u64, fencing: i64) -> StoreResult<Option<u64>> {
        self.write(move |txn| {
            let key = format!("job:{SESSION_PURGE_JOB}:fencing");
            let mut meta = txn.open_table(META)?;
            // Tokens are stored offset so that negative ones sort too.
            let token = (fencing as i128 - i64::MIN as i128) as u64;
            if meta.get(key.as_str())?.is_some_and(|v| v.value() > token) {
                return Ok(None);
            }
            meta.insert(key.as_str(), token)?;
            drop(meta);
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut expired = Vec::new();
            for entry in sessions.iter()? {
                let (hash, record) = entry?;
                if decode_json::<SessionRecord>(record.value())?.expires_ms < now_ms {
                    expired.push(hash.value().to_owned());
                }
            }
            for hash in &expired {
                sessions.remove(hash.as_str())?;
            }
            Ok(Some(expired.len() as u64))
        })
        .await
    }
}

fn insert_members(txn: &WriteTransaction, conversation: &str, users: &[u64]) -> StoreResult<()> {
    let mut members = txn.open_table(MEMBERS)?;
    let mut user_conversations = txn.open_table(USER_CONVERSATIONS)?;
    for &user in users {
        members.insert((conversation, user), ())?;
        if user_conversations.get((user, conversation))?.is_none() {
            user_conversations.insert((user, conversation), 0)?;
        }
    }
    Ok(())
}
