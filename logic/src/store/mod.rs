//! The storage trait: everything logic keeps durably goes through [`Store`].
//!
//! Two implementations hold the same contract: [`embedded::EmbeddedStore`] (redb, for
//! `fastim standalone`) and, in cluster mode, PostgreSQL. The contract that matters
//! most is [`Store::append`]: the message gets the next gap-free sequence number of
//! its conversation in the same transaction that stores it, a repeated
//! `(conversation, sender, client_msg_id)` returns the original message, and the call
//! returns only after the transaction is durable. (Idempotency is scoped to the
//! conversation so that everything about a message lives on the conversation's shard
//! when PostgreSQL is distributed by conversation id; a client retries into the same
//! conversation.)

pub mod conformance;
pub mod embedded;
pub mod postgres;

use std::collections::HashMap;

use fastim_proto::client::Message;
use serde::{Deserialize, Serialize};

/// Storage errors. `Unavailable` is retriable; the others describe the request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// A user with this name already exists.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The store cannot serve now (I/O error, database down): retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A registered account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    /// Numeric id, assigned by the store.
    pub id: u64,
    /// Unique login name.
    pub name: String,
    /// argon2id PHC string; never the password.
    pub password_hash: String,
    /// Creation time.
    pub created_ms: u64,
}

/// A login session, keyed by the SHA-256 of its token (the token itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// Owner of the session.
    pub user_id: u64,
    /// Device the session was issued to.
    pub device_id: String,
    /// Expiry; later logins with the token fail.
    pub expires_ms: u64,
}

/// A group (its conversation id is `g:<id>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupRecord {
    /// Group id, assigned by the store.
    pub id: u64,
    /// Title.
    pub name: String,
    /// Creator; the only one who may remove others.
    pub owner_id: u64,
}

/// A member's view of one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationState {
    /// Conversation id.
    pub conversation: String,
    /// Highest sequence number in the conversation.
    pub last_seq: u64,
    /// Highest sequence number this member has read.
    pub read_seq: u64,
}

/// A message to append; `seq` and `id` are assigned in [`Store::append`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Template: conversation, sender, client message id, text, group id, sent time, id.
    pub message: Message,
}

/// What [`Store::append`] returns: the stored message and whether it existed already.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored message with its sequence number.
    pub message: Message,
    /// `true` when `(sender, client_msg_id)` was stored before: nothing new was written.
    pub duplicate: bool,
}

/// Durable state of FastIM logic.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; `UserExists` when the name is taken.
    async fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> StoreResult<UserRecord>;
    /// Looks a user up by name.
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRecord>>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: u64) -> StoreResult<Option<UserRecord>>;

    /// Stores a session under the hash of its token.
    async fn create_session(&self, token_hash: &str, session: SessionRecord) -> StoreResult<()>;
    /// The session for a token hash, if any (expired ones included: the caller checks).
    async fn session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>>;
    /// Revokes a session.
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;

    /// Creates the 1:1 conversation between two users if it does not exist yet.
    async fn ensure_direct(&self, conversation: &str, a: u64, b: u64) -> StoreResult<()>;
    /// Creates a group whose members are `members` (owner included by the caller).
    async fn create_group(&self, name: &str, owner_id: u64, members: &[u64]) -> StoreResult<GroupRecord>;
    /// A group by id.
    async fn group(&self, id: u64) -> StoreResult<Option<GroupRecord>>;
    /// Adds members to a conversation (already present ones are ignored).
    async fn add_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()>;
    /// Removes members from a conversation (absent ones are ignored).
    async fn remove_members(&self, conversation: &str, users: &[u64]) -> StoreResult<()>;
    /// Members of a conversation, by user id.
    async fn members(&self, conversation: &str) -> StoreResult<Vec<u64>>;
    /// Whether `user` is a member of `conversation`.
    async fn is_member(&self, conversation: &str, user: u64) -> StoreResult<bool>;
    /// Every conversation `user` is a member of.
    async fn user_conversations(&self, user: u64) -> StoreResult<Vec<ConversationState>>;

    /// Appends a message: next gap-free seq, idempotent by `(conversation,
    /// sender_id, client_msg_id)`, returns only once durable. The sender's read marker moves
    /// to the new message in the same transaction.
    async fn append(&self, new: NewMessage) -> StoreResult<Appended>;
    /// Messages with `seq > after`, oldest first, at most `limit`.
    async fn messages_after(&self, conversation: &str, after: u64, limit: usize) -> StoreResult<Vec<Message>>;
    /// Messages with `seq < before` (`before == 0`: from the newest), newest first, at most `limit`.
    async fn messages_before(&self, conversation: &str, before: u64, limit: usize) -> StoreResult<Vec<Message>>;

    /// Delivery cursors of one device: conversation -> highest seq it holds.
    async fn cursors(&self, user: u64, device_id: &str) -> StoreResult<HashMap<String, u64>>;
    /// Raises delivery cursors (never lowers them).
    async fn advance_cursors(&self, updates: &[CursorUpdate]) -> StoreResult<()>;
    /// Raises the read marker of a member (never lowers it).
    async fn mark_read(&self, user: u64, conversation: &str, seq: u64) -> StoreResult<()>;

    /// The session-purge singleton job: deletes sessions expired at `now_ms`, in one
    /// transaction that first records `fencing` for the job. Returns `None`, deleting
    /// nothing, when a newer fencing token already ran the job (a deposed leader).
    async fn purge_expired_sessions(&self, now_ms: u64, fencing: i64) -> StoreResult<Option<u64>>;
}

/// Name of the session-purge job (for fencing records).
pub const SESSION_PURGE_JOB: &str = "session-purge";

/// One delivery cursor to raise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CursorUpdate {
    /// The user.
    pub user: u64,
    /// The user's device.
    pub device_id: String,
    /// The conversation.
    pub conversation: String,
    /// The highest seq the device holds.
    pub seq: u64,
}
