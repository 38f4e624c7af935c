//! [`LogicService`]: the logic side of every client command.
//!
//! Gateways call it through the `Logic` gRPC service (in standalone, in-process
//! through the same trait): `authenticate` for LOGIN, `call` for every other
//! command, `disconnect` when a connection closes. The path of a message:
//! [`LogicService::send`] authorizes the sender, has the store append it (durable,
//! sequenced, deduplicated), answers the sender, and hands the message to
//! [`LogicService::fan_out`], which groups the online devices of every member by
//! gateway and makes one push call per gateway.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fastim_idgen::Snowflake;
use fastim_proto::client::{self, ErrorCode};
use fastim_proto::conversation::{self, Parsed};
use fastim_proto::internal::{
    self, AckBatch, AuthReply, AuthRequest, ClientCall, ClientReply, Device, Disconnected, Empty, KickRequest,
    PushBatch,
};
use fastim_proto::{Command, PROTOCOL_VERSION};
use futures_util::StreamExt as _;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::config::LogicConfig;
use crate::cursors::CursorBuffer;
use crate::gateways::GatewayDirectory;
use crate::routes::RouteTable;
use crate::store::{NewMessage, SessionRecord, Store, StoreError, UserRecord};

type Reply<T> = Result<T, client::Error>;

fn err(code: ErrorCode, message: impl Into<String>) -> client::Error {
    client::Error::new(code, message)
}

fn store_err(e: StoreError) -> client::Error {
    match e {
        StoreError::UserExists(name) => err(ErrorCode::UserExists, format!("user {name:?} already exists")),
        StoreError::NotFound(what) => err(ErrorCode::NotFound, format!("{what} not found")),
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "store unavailable");
            err(ErrorCode::Unavailable, "storage is unavailable, retry later")
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode<M: prost::Message + Default>(body: &[u8]) -> Reply<M> {
    M::decode(body).map_err(|e| err(ErrorCode::BadBody, format!("undecodable body: {e}")))
}

fn valid_user_name(name: &str) -> Reply<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidArgument,
            "user name: 1 to 64 characters of a-z, A-Z, 0-9, '_', '-', '.'",
        ))
    }
}

/// The logic component.
pub struct LogicService {
    config: LogicConfig,
    /// The durable state: users, sessions, conversations, messages, cursors.
    store: Arc<dyn Store>,
    /// Message ids.
    ids: Arc<Snowflake>,
    /// Where each online device is connected.
    routes: Arc<dyn RouteTable>,
    /// How to reach the gateway a route names.
    gateways: Arc<dyn GatewayDirectory>,
    /// Acknowledged delivery positions, written in batches.
    cursors: Arc<CursorBuffer>,
    /// Facts that never change once true, so a send need not ask the store again:
    /// user name -> id, and 1:1 conversations known to exist.
    known: KnownFacts,
}

/// Immutable facts cached in memory (bounded: cleared when full).
#[derive(Default)]
struct KnownFacts {
    user_ids: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    conversations: std::sync::Mutex<HashSet<String>>,
    /// (conversation, user) seen to be a member: used only to authorize delivery
    /// acknowledgements, which move nothing but that user's own cursor. Sends and
    /// reads always ask the store, so a removed member loses access at once.
    ack_members: std::sync::Mutex<HashSet<(String, u64)>>,
}

const KNOWN_FACTS_CAP: usize = 200_000;

impl KnownFacts {
    fn user_id(&self, name: &str) -> Option<u64> {
        self.user_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn remember_user(&self, name: &str, id: u64) {
        let mut map = self.user_ids.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= KNOWN_FACTS_CAP {
            map.clear();
        }
        map.insert(name.to_owned(), id);
    }

    fn acked_before(&self, conversation: &str, user: u64) -> bool {
        self.ack_members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(conversation.to_owned(), user))
    }

    fn remember_ack_member(&self, conversation: &str, user: u64) {
        let mut set = self.ack_members.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= KNOWN_FACTS_CAP {
            set.clear();
        }
        set.insert((conversation.to_owned(), user));
    }

    fn has_conversation(&self, id: &str) -> bool {
        self.conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    fn remember_conversation(&self, id: &str) {
        let mut set = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= KNOWN_FACTS_CAP {
            set.clear();
        }
        set.insert(id.to_owned());
    }
}

impl LogicService {
    /// Builds the service and starts its background cursor flush.
    pub fn new(
        config: LogicConfig,
        store: Arc<dyn Store>,
        ids: Arc<Snowflake>,
        routes: Arc<dyn RouteTable>,
        gateways: Arc<dyn GatewayDirectory>,
    ) -> Arc<LogicService> {
        let cursors = CursorBuffer::new(store.clone());
        cursors.spawn_flusher(config.cursor_flush_interval);
        Arc::new(LogicService {
            config,
            store,
            ids,
            routes,
            gateways,
            cursors,
            known: KnownFacts::default(),
        })
    }

    /// Writes buffered state; call on shutdown.
    pub async fn flush(&self) {
        if let Err(e) = self.cursors.flush().await {
            tracing::warn!(error = %e, "final cursor flush failed");
        }
    }

    async fn login(&self, req: AuthRequest) -> Reply<(client::LoginResponse, Device)> {
        let login = req.login.unwrap_or_default();
        let kind = client::DeviceKind::try_from(login.device_kind).unwrap_or(client::DeviceKind::Unspecified);
        if kind == client::DeviceKind::Unspecified {
            return Err(err(
                ErrorCode::InvalidArgument,
                "device_kind: required (mobile, desktop, web or bot)",
            ));
        }
        let device_id = if login.device_id.is_empty() {
            kind.as_str_name().to_owned()
        } else {
            login.device_id
        };
        if device_id.len() > 128 {
            return Err(err(ErrorCode::InvalidArgument, "device_id: at most 128 bytes"));
        }
        let bad_credentials = || err(ErrorCode::AuthFailed, "unknown user or wrong password");
        let (user, token, expires_ms, session) = if !login.token.is_empty() {
            let hash = auth::token_hash(&login.token);
            let session = self.store.session(&hash).await.map_err(store_err)?;
            let session = session.ok_or_else(|| err(ErrorCode::AuthFailed, "session token is unknown or revoked"))?;
            if session.expires_ms <= now_ms() {
                return Err(err(
                    ErrorCode::AuthFailed,
                    "session token expired: log in with the password",
                ));
            }
            let user = self
                .store
                .user_by_id(session.user_id)
                .await
                .map_err(store_err)?
                .ok_or_else(bad_credentials)?;
            if !login.user.is_empty() && login.user != user.name {
                return Err(err(ErrorCode::AuthFailed, "session token belongs to another user"));
            }
            (user, login.token, session.expires_ms, hash)
        } else {
            let user = self
                .store
                .user_by_name(&login.user)
                .await
                .map_err(store_err)?
                .ok_or_else(bad_credentials)?;
            let (phc, password) = (user.password_hash.clone(), login.password);
            let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &phc))
                .await
                .map_err(|_| err(ErrorCode::Internal, "password check failed"))?;
            if !ok {
                return Err(bad_credentials());
            }
            let token = auth::new_token();
            let hash = auth::token_hash(&token);
            let expires_ms = now_ms() + self.config.session_ttl.as_millis() as u64;
            let record = SessionRecord {
                user_id: user.id,
                device_id: device_id.clone(),
                expires_ms,
            };
            self.store.create_session(&hash, record).await.map_err(store_err)?;
            (user, token, expires_ms, hash)
        };
        let device = Device {
            user_id: user.id,
            user: user.name.clone(),
            kind: kind as i32,
            device_id,
            gateway_id: req.gateway_id,
            conn_id: req.conn_id,
            session,
        };
        match self.routes.bind(&device, self.config.kick_policy).await {
            Ok(replaced) => {
                for old in replaced {
                    self.kick(&old, format!("logged in again on another {} device", kind_name(kind)))
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, user = %user.name, "route not recorded; the device relies on sync"),
        }
        tracing::info!(user = %user.name, device = %device.device_id, kind = kind_name(kind), "logged in");
        let response = client::LoginResponse {
            user_id: user.id,
            token,
            token_expires_unix_ms: expires_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            protocol_version: login.client_version.clamp(1, PROTOCOL_VERSION as u32),
            gateway_id: device.gateway_id.clone(),
        };
        Ok((response, device))
    }

    async fn kick(&self, device: &Device, reason: String) {
        let Some(gateway) = self.gateways.gateway(&device.gateway_id) else {
            return;
        };
        let request = KickRequest {
            conn_id: device.conn_id,
            reason,
        };
        if let Err(e) = gateway.kick(Request::new(request)).await {
            tracing::warn!(gateway = %device.gateway_id, error = %e, "kick failed");
        }
    }

    /// Dispatches one client command.
    async fn dispatch(&self, device: Option<Device>, command: Command, body: &[u8]) -> Reply<Vec<u8>> {
        if command == Command::Register {
            return self.register(decode(body)?).await.map(|r| r.encode_to_vec());
        }
        let me = device.ok_or_else(|| err(ErrorCode::NotAuthenticated, "log in first"))?;
        let reply = match command {
            Command::Logout => self.logout(&me).await?.encode_to_vec(),
            Command::Send => self.send(&me, decode(body)?).await?.encode_to_vec(),
            Command::PushAck => {
                self.push_ack(&me, decode(body)?).await?;
                Vec::new()
            }
            Command::Sync => self.sync(&me, decode(body)?).await?.encode_to_vec(),
            Command::History => self.history(&me, decode(body)?).await?.encode_to_vec(),
            Command::MarkRead => self.mark_read(&me, decode(body)?).await?.encode_to_vec(),
            Command::Conversations => self.conversations(&me).await?.encode_to_vec(),
            Command::GroupCreate => self.group_create(&me, decode(body)?).await?.encode_to_vec(),
            Command::GroupAddMembers => self.group_add(&me, decode(body)?).await?.encode_to_vec(),
            Command::GroupRemoveMembers => self.group_remove(&me, decode(body)?).await?.encode_to_vec(),
            Command::GroupList => self.group_list(&me).await?.encode_to_vec(),
            Command::GroupMembers => self.group_members(&me, decode(body)?).await?.encode_to_vec(),
            other => {
                return Err(err(
                    ErrorCode::UnknownCommand,
                    format!("{other:?} is not a request the server serves"),
                ));
            }
        };
        Ok(reply)
    }

    async fn register(&self, req: client::RegisterRequest) -> Reply<client::RegisterResponse> {
        valid_user_name(&req.user)?;
        if req.password.len() < 8 || req.password.len() > 1024 {
            return Err(err(ErrorCode::InvalidArgument, "password: 8 to 1024 bytes"));
        }
        let cost = self.config.hash_cost;
        let password = req.password;
        let phc = tokio::task::spawn_blocking(move || auth::hash_password(&password, cost))
            .await
            .map_err(|_| err(ErrorCode::Internal, "hashing failed"))?
            .map_err(|e| err(ErrorCode::Internal, e))?;
        let user = self
            .store
            .create_user(&req.user, &phc, now_ms())
            .await
            .map_err(store_err)?;
        tracing::info!(user = %user.name, id = user.id, "registered");
        Ok(client::RegisterResponse { user_id: user.id })
    }

    async fn logout(&self, me: &Device) -> Reply<client::LogoutResponse> {
        self.store.delete_session(&me.session).await.map_err(store_err)?;
        if let Err(e) = self.routes.unbind(me).await {
            tracing::warn!(error = %e, "route removal failed; it expires");
        }
        Ok(client::LogoutResponse {})
    }

    async fn user_named(&self, name: &str) -> Reply<UserRecord> {
        let user = self
            .store
            .user_by_name(name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| err(ErrorCode::NotFound, format!("user {name:?} not found")))?;
        self.known.remember_user(&user.name, user.id);
        Ok(user)
    }

    /// Checks that `me` may read and write `conversation`.
    async fn authorize(&self, me: &Device, conversation: &str) -> Reply<()> {
        let parsed = conversation::parse(conversation).ok_or_else(|| {
            err(
                ErrorCode::InvalidArgument,
                format!("malformed conversation id {conversation:?}"),
            )
        })?;
        let member = match parsed {
            Parsed::Direct(a, b) if a != me.user_id && b != me.user_id => false,
            _ => self
                .store
                .is_member(conversation, me.user_id)
                .await
                .map_err(store_err)?,
        };
        if member {
            Ok(())
        } else {
            Err(err(
                ErrorCode::Forbidden,
                format!("you are not a member of {conversation}"),
            ))
        }
    }

    async fn send(&self, me: &Device, req: client::SendRequest) -> Reply<client::SendResponse> {
        use client::send_request::Target;
        if req.text.is_empty() || req.text.len() > self.config.max_text_bytes {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("text: 1 to {} bytes", self.config.max_text_bytes),
            ));
        }
        if req.client_msg_id.len() > 128 {
            return Err(err(ErrorCode::InvalidArgument, "client_msg_id: at most 128 bytes"));
        }
        let (conversation, group_id) = match req.target {
            Some(Target::ToUser(name)) => {
                let peer = match self.known.user_id(&name) {
                    Some(id) => id,
                    None => self.user_named(&name).await?.id,
                };
                let conversation = conversation::direct(me.user_id, peer);
                if !self.known.has_conversation(&conversation) {
                    self.store
                        .ensure_direct(&conversation, me.user_id, peer)
                        .await
                        .map_err(store_err)?;
                    self.known.remember_conversation(&conversation);
                }
                (conversation, 0)
            }
            Some(Target::GroupId(id)) => {
                let conversation = conversation::group(id);
                if self.store.group(id).await.map_err(store_err)?.is_none() {
                    return Err(err(ErrorCode::NotFound, format!("group {id} not found")));
                }
                self.authorize(me, &conversation).await?;
                (conversation, id)
            }
            Some(Target::Conversation(conversation)) => {
                self.authorize(me, &conversation).await?;
                let group_id = match conversation::parse(&conversation) {
                    Some(Parsed::Group(id)) => id,
                    _ => 0,
                };
                (conversation, group_id)
            }
            None => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "target: to_user, group_id or conversation required",
                ));
            }
        };
        let id = self
            .ids
            .next_id()
            .map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
        let message = client::Message {
            conversation,
            seq: 0,
            id,
            sender_id: me.user_id,
            sender: me.user.clone(),
            client_msg_id: req.client_msg_id,
            sent_unix_ms: now_ms(),
            text: req.text,
            group_id,
            sender_device: me.device_id.clone(),
        };
        let appended = self.store.append(NewMessage { message }).await.map_err(store_err)?;
        let m = &appended.message;
        let response = client::SendResponse {
            conversation: m.conversation.clone(),
            seq: m.seq,
            id: m.id,
            sent_unix_ms: m.sent_unix_ms,
            duplicate: appended.duplicate,
        };
        if !appended.duplicate {
            // Every device of every member gets it, the sender's devices included:
            // cursors move only with the devices' own cumulative acks.
            let this = self.clone_handles();
            tokio::spawn(async move { this.fan_out(appended.message).await });
        }
        Ok(response)
    }

    fn clone_handles(&self) -> FanOut {
        FanOut {
            store: self.store.clone(),
            routes: self.routes.clone(),
            gateways: self.gateways.clone(),
            large_group: self.config.large_group_threshold,
        }
    }

    async fn push_ack(&self, me: &Device, ack: client::PushAck) -> Reply<()> {
        if !self.known.acked_before(&ack.conversation, me.user_id) {
            self.authorize(me, &ack.conversation).await?;
            self.known.remember_ack_member(&ack.conversation, me.user_id);
        }
        self.cursors
            .advance(me.user_id, &me.device_id, &ack.conversation, ack.seq);
        Ok(())
    }

    async fn sync(&self, me: &Device, req: client::SyncRequest) -> Reply<client::SyncResponse> {
        let limit = match req.limit as usize {
            0 => self.config.max_page,
            n => n.min(self.config.max_page),
        };
        let explicit: BTreeMap<String, u64> = req.cursors.into_iter().map(|c| (c.conversation, c.seq)).collect();
        let stored = self
            .cursors
            .cursors(me.user_id, &me.device_id)
            .await
            .map_err(store_err)?;
        let mut conversations = self.store.user_conversations(me.user_id).await.map_err(store_err)?;
        conversations.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        let mut response = client::SyncResponse::default();
        for c in conversations {
            let from = explicit
                .get(&c.conversation)
                .or_else(|| stored.get(&c.conversation))
                .copied()
                .unwrap_or(0)
                .min(c.last_seq);
            let missing = (c.last_seq - from) as usize;
            if missing > 0 {
                let room = limit - response.messages.len();
                if room == 0 {
                    response.more = true;
                } else {
                    let page = self
                        .store
                        .messages_after(&c.conversation, from, room)
                        .await
                        .map_err(store_err)?;
                    response.more |= page.len() < missing;
                    response.messages.extend(page);
                }
            }
            response.cursors.push(client::Cursor {
                conversation: c.conversation,
                seq: from,
            });
        }
        Ok(response)
    }

    async fn history(&self, me: &Device, req: client::HistoryRequest) -> Reply<client::HistoryResponse> {
        self.authorize(me, &req.conversation).await?;
        let limit = match req.limit as usize {
            0 => 50,
            n => n.min(self.config.max_page),
        };
        let messages = self
            .store
            .messages_before(&req.conversation, req.before_seq, limit)
            .await
            .map_err(store_err)?;
        Ok(client::HistoryResponse { messages })
    }

    async fn mark_read(&self, me: &Device, req: client::MarkReadRequest) -> Reply<client::MarkReadResponse> {
        self.authorize(me, &req.conversation).await?;
        self.store
            .mark_read(me.user_id, &req.conversation, req.seq)
            .await
            .map_err(store_err)?;
        Ok(client::MarkReadResponse {})
    }

    async fn conversations(&self, me: &Device) -> Reply<client::ConversationsResponse> {
        let states = self.store.user_conversations(me.user_id).await.map_err(store_err)?;
        let mut out = Vec::with_capacity(states.len());
        for s in states {
            let (group_id, title) = match conversation::parse(&s.conversation) {
                Some(Parsed::Group(id)) => (
                    id,
                    self.store
                        .group(id)
                        .await
                        .map_err(store_err)?
                        .map(|g| g.name)
                        .unwrap_or_default(),
                ),
                Some(Parsed::Direct(a, b)) => {
                    let peer = if a == me.user_id { b } else { a };
                    (
                        0,
                        self.store
                            .user_by_id(peer)
                            .await
                            .map_err(store_err)?
                            .map(|u| u.name)
                            .unwrap_or_default(),
                    )
                }
                None => (0, String::new()),
            };
            let read_seq = s.read_seq.min(s.last_seq);
            out.push(client::ConversationSummary {
                unread: s.last_seq - read_seq,
                conversation: s.conversation,
                last_seq: s.last_seq,
                read_seq,
                group_id,
                title,
            });
        }
        Ok(client::ConversationsResponse { conversations: out })
    }

    async fn resolve_names(&self, names: &[String]) -> Reply<Vec<u64>> {
        let mut ids = Vec::with_capacity(names.len());
        let mut seen = HashSet::new();
        for name in names {
            let name = name.trim();
            if !name.is_empty() && seen.insert(name.to_owned()) {
                ids.push(self.user_named(name).await?.id);
            }
        }
        Ok(ids)
    }

    async fn group_create(&self, me: &Device, req: client::GroupCreateRequest) -> Reply<client::GroupCreateResponse> {
        let name = req.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(err(ErrorCode::InvalidArgument, "name: 1 to 200 bytes"));
        }
        let mut members = self.resolve_names(&req.members).await?;
        if !members.contains(&me.user_id) {
            members.push(me.user_id);
        }
        if members.len() > self.config.max_group_members {
            return Err(self.too_many_members());
        }
        let group = self
            .store
            .create_group(name, me.user_id, &members)
            .await
            .map_err(store_err)?;
        tracing::info!(group = group.id, members = members.len(), "group created");
        Ok(client::GroupCreateResponse {
            group: Some(group_body(&group)),
        })
    }

    fn too_many_members(&self) -> client::Error {
        err(
            ErrorCode::InvalidArgument,
            format!("members: at most {} per group", self.config.max_group_members),
        )
    }

    async fn member_group(&self, me: &Device, id: u64) -> Reply<crate::store::GroupRecord> {
        let group = self.store.group(id).await.map_err(store_err)?;
        let group = group.ok_or_else(|| err(ErrorCode::NotFound, format!("group {id} not found")))?;
        self.authorize(me, &conversation::group(id)).await?;
        Ok(group)
    }

    async fn group_add(
        &self,
        me: &Device,
        req: client::GroupMembersChange,
    ) -> Reply<client::GroupMembersChangeResponse> {
        let group = self.member_group(me, req.group_id).await?;
        let users = self.resolve_names(&req.members).await?;
        let conversation = conversation::group(group.id);
        let current = self.store.members(&conversation).await.map_err(store_err)?;
        let new = users.iter().filter(|u| !current.contains(u)).count();
        if current.len() + new > self.config.max_group_members {
            return Err(self.too_many_members());
        }
        self.store.add_members(&conversation, &users).await.map_err(store_err)?;
        Ok(client::GroupMembersChangeResponse {})
    }

    async fn group_remove(
        &self,
        me: &Device,
        req: client::GroupMembersChange,
    ) -> Reply<client::GroupMembersChangeResponse> {
        let group = self.member_group(me, req.group_id).await?;
        let users = self.resolve_names(&req.members).await?;
        let leaving_only = users.iter().all(|u| *u == me.user_id);
        if group.owner_id != me.user_id && !leaving_only {
            return Err(err(
                ErrorCode::Forbidden,
                "only the group owner may remove other members",
            ));
        }
        if group.owner_id == me.user_id && users.contains(&me.user_id) {
            return Err(err(ErrorCode::InvalidArgument, "the owner cannot leave the group"));
        }
        self.store
            .remove_members(&conversation::group(group.id), &users)
            .await
            .map_err(store_err)?;
        Ok(client::GroupMembersChangeResponse {})
    }

    async fn group_list(&self, me: &Device) -> Reply<client::GroupListResponse> {
        let mut groups = Vec::new();
        for c in self.store.user_conversations(me.user_id).await.map_err(store_err)? {
            if let Some(Parsed::Group(id)) = conversation::parse(&c.conversation)
                && let Some(group) = self.store.group(id).await.map_err(store_err)?
            {
                groups.push(group_body(&group));
            }
        }
        Ok(client::GroupListResponse { groups })
    }

    async fn group_members(
        &self,
        me: &Device,
        req: client::GroupMembersRequest,
    ) -> Reply<client::GroupMembersResponse> {
        let group = self.member_group(me, req.group_id).await?;
        let mut members = Vec::new();
        for id in self
            .store
            .members(&conversation::group(group.id))
            .await
            .map_err(store_err)?
        {
            if let Some(user) = self.store.user_by_id(id).await.map_err(store_err)? {
                members.push(user.name);
            }
        }
        members.sort();
        Ok(client::GroupMembersResponse { members })
    }
}

fn group_body(g: &crate::store::GroupRecord) -> client::Group {
    client::Group {
        id: g.id,
        name: g.name.clone(),
        owner_id: g.owner_id,
        conversation: conversation::group(g.id),
    }
}

fn kind_name(kind: client::DeviceKind) -> &'static str {
    match kind {
        client::DeviceKind::Mobile => "mobile",
        client::DeviceKind::Desktop => "desktop",
        client::DeviceKind::Web => "web",
        client::DeviceKind::Bot => "bot",
        client::DeviceKind::Unspecified => "unspecified",
    }
}

/// What fan-out needs, detached from the request so it can run after the ack.
struct FanOut {
    store: Arc<dyn Store>,
    routes: Arc<dyn RouteTable>,
    gateways: Arc<dyn GatewayDirectory>,
    /// From this many members on, gateways fan out to their own local members.
    large_group: usize,
}

impl FanOut {
    /// Pushes a stored message to every online device of every member: one push
    /// call per gateway. Failures only delay delivery: devices resync.
    async fn fan_out(self, message: client::Message) {
        let members = match self.store.members(&message.conversation).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fan-out: members unavailable; devices will sync");
                return;
            }
        };
        if members.len() >= self.large_group {
            // One batch per gateway naming the members; each gateway finds its own.
            for gateway_id in self.gateways.all() {
                let Some(gateway) = self.gateways.gateway(&gateway_id) else {
                    continue;
                };
                let batch = PushBatch {
                    messages: vec![message.clone()],
                    conn_ids: Vec::new(),
                    user_ids: members.clone(),
                };
                if let Err(e) = gateway.push(Request::new(batch)).await {
                    tracing::warn!(gateway = %gateway_id, error = %e, "push failed; devices will sync");
                }
            }
            return;
        }
        let mut by_gateway: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for member in members {
            match self.routes.devices(member).await {
                Ok(devices) => {
                    for d in devices {
                        by_gateway.entry(d.gateway_id).or_default().push(d.conn_id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "fan-out: routes unavailable"),
            }
        }
        let messages = vec![message];
        for (gateway_id, conn_ids) in by_gateway {
            let Some(gateway) = self.gateways.gateway(&gateway_id) else {
                continue;
            };
            let batch = PushBatch {
                messages: messages.clone(),
                conn_ids,
                user_ids: Vec::new(),
            };
            if let Err(e) = gateway.push(Request::new(batch)).await {
                tracing::warn!(gateway = %gateway_id, error = %e, "push failed; devices will sync");
            }
        }
    }
}

#[tonic::async_trait]
impl internal::logic_server::Logic for LogicService {
    async fn authenticate(&self, request: Request<AuthRequest>) -> Result<Response<AuthReply>, Status> {
        let reply = match self.login(request.into_inner()).await {
            Ok((response, device)) => AuthReply {
                response: Some(response),
                device: Some(device),
                error: None,
            },
            Err(e) => AuthReply {
                response: None,
                device: None,
                error: Some(e),
            },
        };
        Ok(Response::new(reply))
    }

    async fn call(&self, request: Request<ClientCall>) -> Result<Response<ClientReply>, Status> {
        let call = request.into_inner();
        let reply = match u8::try_from(call.command).ok().and_then(Command::from_u8) {
            Some(command) => self.dispatch(call.device, command, &call.body).await,
            None => Err(err(
                ErrorCode::UnknownCommand,
                format!("unknown command {}", call.command),
            )),
        };
        Ok(Response::new(match reply {
            Ok(body) => ClientReply { body, error: None },
            Err(error) => ClientReply {
                body: Vec::new(),
                error: Some(error),
            },
        }))
    }

    async fn disconnect(&self, request: Request<Disconnected>) -> Result<Response<Empty>, Status> {
        if let Some(device) = request.into_inner().device
            && let Err(e) = self.routes.unbind(&device).await
        {
            tracing::warn!(error = %e, "route removal failed; it expires");
        }
        Ok(Response::new(Empty {}))
    }

    async fn acks(&self, request: Request<AckBatch>) -> Result<Response<Empty>, Status> {
        // Mostly in-memory cursor moves; the first ack of a member in a conversation
        // checks membership in the store, so a few run at once.
        let refused: Vec<client::Error> = futures_util::stream::iter(request.into_inner().acks)
            .map(|ack| async move {
                let device = ack.device.as_ref()?;
                let push_ack = client::PushAck {
                    conversation: ack.conversation,
                    seq: ack.seq,
                };
                self.push_ack(device, push_ack).await.err()
            })
            .buffer_unordered(16)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if let Some(last) = refused.last() {
            tracing::debug!(refused = refused.len(), last = %last, "acknowledgements refused; those cursors stay");
        }
        Ok(Response::new(Empty {}))
    }

    async fn refresh(&self, request: Request<internal::RefreshRoutes>) -> Result<Response<Empty>, Status> {
        let refresh = request.into_inner();
        match self.routes.refresh(&refresh.devices).await {
            Ok(()) => Ok(Response::new(Empty {})),
            Err(e) => {
                tracing::warn!(gateway = %refresh.gateway_id, error = %e, "route refresh failed");
                Err(Status::unavailable(e.to_string()))
            }
        }
    }
}
