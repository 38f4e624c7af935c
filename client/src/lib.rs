//! The FastIM client SDK.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fastim_client::ClientError> {
//! use fastim_client::{Client, ClientConfig, Event, Target};
//! let (client, mut events) = Client::connect(ClientConfig::new("127.0.0.1:7000", "alice", "secret-pw")).await?;
//! client.send_text(Target::User("bob".into()), "hi bob").await?;
//! while let Some(Event::Message(m)) = events.recv().await {
//!     println!("{}: {}", m.sender, m.text);
//! }
//! # Ok(()) }
//! ```
//!
//! What the client does for you:
//! - logs in (password first, then the session token on reconnects) and sends
//!   heartbeats at the interval the server asks for;
//! - reconnects when the connection drops, with exponential backoff and jitter,
//!   trying each configured server in turn, and resyncs what it missed;
//! - sends with a client message id and retries until acknowledged, so a message
//!   is sent once even when the ack was lost;
//! - hands every message to [`Event::Message`] exactly once, in sequence order per
//!   conversation, acknowledging it to the server ([`delivery`]).
//!
//! [`connection`] is the raw frame layer, also used by tests.
#![forbid(unsafe_code)]

pub mod connection;
pub mod delivery;
pub mod lsb;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastim_proto::client::{self as pb, DeviceKind, ErrorCode};
use fastim_proto::{Command, Frame, PROTOCOL_VERSION};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};

use connection::{FrameReader, FrameWriter};
use delivery::Delivery;

pub use fastim_proto::client::Message;

/// What went wrong, in words a user can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No server could be reached.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error.
    #[error("{}", .0.message)]
    Server(pb::Error),
    /// The connection dropped while waiting.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server spoke something that is not the FastIM protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was closed, or kicked out by a newer login.
    #[error("client closed: {0}")]
    Closed(String),
    /// The client's own settings are unusable (e.g. an unreadable CA file).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// Whether retrying the same call may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Disconnected(_) | ClientError::Timeout(_) | ClientError::Unreachable(_) => true,
            ClientError::Server(e) => e.retriable || e.code() == ErrorCode::Unavailable,
            ClientError::Protocol(_) | ClientError::Closed(_) | ClientError::Config(_) => false,
        }
    }

    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Servers to try in turn: `host:port` (TCP) or `ws://host:port/` (WebSocket);
    /// `tls://host:port` and `wss://host:port/` inside TLS.
    pub servers: Vec<String>,
    /// TLS settings for `tls://` and `wss://` servers (`None`: the system's roots);
    /// see [`connection::tls_config`].
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    /// An LSB (`http://host:port`): when set, each connect asks it for the least
    /// loaded gateway first, and falls back to `servers` when it cannot answer.
    pub lsb: Option<String>,
    /// With an LSB: connect over WebSocket rather than TCP.
    pub prefer_websocket: bool,
    /// User name.
    pub user: String,
    /// Password (used for the first login and when the token stops working).
    pub password: String,
    /// Kind of this device; a newer login of the same kind kicks this one.
    pub device_kind: DeviceKind,
    /// Stable id of this device; the server keeps delivery cursors per device.
    pub device_id: String,
    /// Reconnect after a dropped connection.
    pub reconnect: bool,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Time to wait for one response.
    pub request_timeout: Duration,
    /// Time `send_text` keeps retrying before it gives up.
    pub send_timeout: Duration,
    /// Largest frame body accepted from the server.
    pub max_frame_body: usize,
    /// Receive messages: sync after each login and accept pushes. One-shot
    /// senders turn it off and get no [`Event::Message`].
    pub receive: bool,
}

impl ClientConfig {
    /// Defaults for one server, user and password: a mobile device.
    pub fn new(server: &str, user: &str, password: &str) -> ClientConfig {
        ClientConfig {
            servers: vec![server.to_owned()],
            tls: None,
            lsb: None,
            prefer_websocket: false,
            user: user.to_owned(),
            password: password.to_owned(),
            device_kind: DeviceKind::Mobile,
            device_id: String::new(),
            reconnect: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_frame_body: 16 * 1024 * 1024,
            receive: true,
        }
    }
}

/// Something that happened to the client.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message, exactly once and in order within its conversation.
    Message(Message),
    /// Logged in (first time or after a reconnect).
    Connected {
        /// The gateway that serves this connection.
        gateway_id: String,
    },
    /// The connection dropped; the client reconnects if configured to.
    Disconnected(String),
    /// A newer login of the same device kind (or the server) closed this client for good.
    Kicked(String),
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A 1:1 chat with this user.
    User(String),
    /// A group.
    Group(u64),
    /// A conversation by id.
    Conversation(String),
}

/// State shared by the client handle and its connection task.
struct Shared {
    config: ClientConfig,
    next_request: AtomicU32,
    /// Requests waiting for their response, by request id.
    pending: Mutex<HashMap<u32, oneshot::Sender<Result<Frame, ClientError>>>>,
    /// Frames to write on the current connection; `None` while disconnected.
    out: watch::Sender<Option<mpsc::Sender<Frame>>>,
    delivery: Mutex<Delivery>,
    events: mpsc::UnboundedSender<Event>,
    /// Session token from the last login.
    token: Mutex<String>,
    user_id: AtomicU64,
    /// Set by `close` or a kick: stop reconnecting.
    closed: AtomicBool,
    /// A sync is running; a second request to sync sets `sync_again`.
    syncing: AtomicBool,
    sync_again: AtomicBool,
}

/// A connected client. Cheap to clone; the connection lives while a clone does.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// An established, logged-in connection.
struct Session {
    reader: FrameReader,
    writer: FrameWriter,
    login: pb::LoginResponse,
}

impl Client {
    /// Connects to the first reachable server, logs in, starts syncing, and returns
    /// the client with its event stream. Fails at once on a wrong password or when
    /// no server is reachable.
    pub async fn connect(config: ClientConfig) -> Result<(Client, mpsc::UnboundedReceiver<Event>), ClientError> {
        if config.servers.is_empty() && config.lsb.is_none() {
            return Err(ClientError::Unreachable("no server address given".into()));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            next_request: AtomicU32::new(1),
            pending: Mutex::new(HashMap::new()),
            out: watch::channel(None).0,
            delivery: Mutex::new(Delivery::default()),
            events,
            token: Mutex::new(String::new()),
            user_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            sync_again: AtomicBool::new(false),
        });
        let mut last_error = None;
        let mut session = None;
        for i in 0..shared.config.servers.len().max(1) {
            match shared.establish(i).await {
                Ok(s) => {
                    session = Some((i, s));
                    break;
                }
                Err(e @ ClientError::Server(_)) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        let Some((server, session)) = session else {
            return Err(last_error.unwrap_or_else(|| ClientError::Unreachable("no server".into())));
        };
        let client = Client { shared: shared.clone() };
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(run(shared, server, session, ready_tx));
        let _ = ready_rx.await;
        Ok((client, rx))
    }

    /// The logged-in user's id.
    pub fn user_id(&self) -> u64 {
        self.shared.user_id.load(Ordering::Relaxed)
    }

    /// Sends a text message and returns the server's acknowledgement once it is
    /// durable. Retries with the same client message id across reconnects until
    /// `send_timeout`, so the message is stored once.
    pub async fn send_text(&self, target: Target, text: &str) -> Result<pb::SendResponse, ClientError> {
        let mut id = [0u8; 16];
        rand::rng().fill(&mut id);
        let client_msg_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        self.send_with_id(target, text, &client_msg_id).await
    }

    /// Like [`Client::send_text`] with a caller-chosen client message id.
    pub async fn send_with_id(
        &self,
        target: Target,
        text: &str,
        client_msg_id: &str,
    ) -> Result<pb::SendResponse, ClientError> {
        use pb::send_request::Target as T;
        let target = match target {
            Target::User(u) => T::ToUser(u),
            Target::Group(g) => T::GroupId(g),
            Target::Conversation(c) => T::Conversation(c),
        };
        let request = pb::SendRequest {
            target: Some(target),
            client_msg_id: client_msg_id.to_owned(),
            text: text.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + self.shared.config.send_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.request(Command::Send, &request).await {
                Err(e) if e.is_retriable() && tokio::time::Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Creates a group with these members (the caller is added).
    pub async fn create_group(&self, name: &str, members: &[String]) -> Result<pb::Group, ClientError> {
        let request = pb::GroupCreateRequest {
            name: name.to_owned(),
            members: members.to_vec(),
        };
        let response: pb::GroupCreateResponse = self.request(Command::GroupCreate, &request).await?;
        response
            .group
            .ok_or_else(|| ClientError::Protocol("group missing in response".into()))
    }

    /// Adds members to a group.
    pub async fn add_members(&self, group_id: u64, members: &[String]) -> Result<(), ClientError> {
        let request = pb::GroupMembersChange {
            group_id,
            members: members.to_vec(),
        };
        self.request::<_, pb::GroupMembersChangeResponse>(Command::GroupAddMembers, &request)
            .await
            .map(|_| ())
    }

    /// Removes members from a group (the owner removes others; anyone may leave).
    pub async fn remove_members(&self, group_id: u64, members: &[String]) -> Result<(), ClientError> {
        let request = pb::GroupMembersChange {
            group_id,
            members: members.to_vec(),
        };
        self.request::<_, pb::GroupMembersChangeResponse>(Command::GroupRemoveMembers, &request)
            .await
            .map(|_| ())
    }

    /// Groups the user belongs to.
    pub async fn groups(&self) -> Result<Vec<pb::Group>, ClientError> {
        let response: pb::GroupListResponse = self.request(Command::GroupList, &pb::GroupListRequest {}).await?;
        Ok(response.groups)
    }

    /// Member names of a group.
    pub async fn group_members(&self, group_id: u64) -> Result<Vec<String>, ClientError> {
        let response: pb::GroupMembersResponse = self
            .request(Command::GroupMembers, &pb::GroupMembersRequest { group_id })
            .await?;
        Ok(response.members)
    }

    /// Older messages of a conversation, newest first (`before_seq == 0`: from the newest).
    pub async fn history(&self, conversation: &str, before_seq: u64, limit: u32) -> Result<Vec<Message>, ClientError> {
        let request = pb::HistoryRequest {
            conversation: conversation.to_owned(),
            before_seq,
            limit,
        };
        let response: pb::HistoryResponse = self.request(Command::History, &request).await?;
        Ok(response.messages)
    }

    /// Conversations with their unread counts.
    pub async fn conversations(&self) -> Result<Vec<pb::ConversationSummary>, ClientError> {
        let response: pb::ConversationsResponse = self
            .request(Command::Conversations, &pb::ConversationsRequest {})
            .await?;
        Ok(response.conversations)
    }

    /// Marks a conversation read up to `seq`.
    pub async fn mark_read(&self, conversation: &str, seq: u64) -> Result<(), ClientError> {
        let request = pb::MarkReadRequest {
            conversation: conversation.to_owned(),
            seq,
        };
        self.request::<_, pb::MarkReadResponse>(Command::MarkRead, &request)
            .await
            .map(|_| ())
    }

    /// Revokes the session token and closes the client.
    pub async fn logout(&self) -> Result<(), ClientError> {
        let result = self
            .request::<_, pb::LogoutResponse>(Command::Logout, &pb::LogoutRequest {})
            .await
            .map(|_| ());
        self.close();
        result
    }

    /// Closes the connection and stops reconnecting.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.out.send_replace(None);
    }

    /// Sends a request and decodes its response.
    pub async fn request<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        command: Command,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let frame = self.shared.request(command, body).await?;
        Resp::decode(frame.body).map_err(|e| ClientError::Protocol(format!("undecodable response: {e}")))
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn request(self: &Arc<Self>, command: Command, body: &impl prost::Message) -> Result<Frame, ClientError> {
        let timeout = self.config.request_timeout;
        let mut out_rx = self.out.subscribe();
        let out = tokio::time::timeout(timeout, async {
            loop {
                if self.is_closed() {
                    return Err(ClientError::Closed("client closed".into()));
                }
                if let Some(out) = out_rx.borrow_and_update().clone() {
                    return Ok(out);
                }
                if out_rx.changed().await.is_err() {
                    return Err(ClientError::Closed("client closed".into()));
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout("not connected".into()))??;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        if out.send(Frame::new(command, id, body)).await.is_err() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        let result = tokio::time::timeout(timeout, rx).await;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        match result {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Disconnected(
                "connection closed before the response".into(),
            )),
            Err(_) => Err(ClientError::Timeout(format!(
                "no response to {command:?} in {timeout:?}"
            ))),
        }
    }

    /// Connects to server `index` and logs in (token first if we have one).
    async fn establish(&self, index: usize) -> Result<Session, ClientError> {
        let from_lsb = match &self.config.lsb {
            Some(lsb) => lsb::best_gateway(lsb, self.config.prefer_websocket).await,
            None => None,
        };
        let server = match (&from_lsb, self.config.servers.is_empty()) {
            (Some(server), _) => server,
            (None, true) => return Err(ClientError::Unreachable("the LSB gave no gateway".into())),
            (None, false) => &self.config.servers[index % self.config.servers.len()],
        };
        let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.login(server, &token).await {
            Err(ClientError::Server(e)) if !token.is_empty() && e.code() == ErrorCode::AuthFailed => {
                self.login(server, "").await
            }
            other => other,
        }
    }

    async fn login(&self, server: &str, token: &str) -> Result<Session, ClientError> {
        let timeout = self.config.request_timeout;
        let (mut reader, mut writer) = tokio::time::timeout(
            timeout,
            connection::connect_with(server, self.config.max_frame_body, self.config.tls.as_ref()),
        )
        .await
        .map_err(|_| ClientError::Unreachable(format!("{server}: connect timed out")))??;
        let login = pb::LoginRequest {
            user: self.config.user.clone(),
            password: if token.is_empty() {
                self.config.password.clone()
            } else {
                String::new()
            },
            token: token.to_owned(),
            device_kind: self.config.device_kind as i32,
            device_id: self.config.device_id.clone(),
            client_version: PROTOCOL_VERSION as u32,
        };
        writer.write(&Frame::new(Command::Login, 1, &login)).await?;
        let frame = tokio::time::timeout(timeout, reader.read())
            .await
            .map_err(|_| ClientError::Timeout("no answer to LOGIN".into()))??
            .ok_or_else(|| ClientError::Disconnected("server closed the connection during login".into()))?;
        if frame.command() == Some(Command::Error) {
            let error: pb::Error = frame.decode().map_err(|e| ClientError::Protocol(e.to_string()))?;
            return Err(ClientError::Server(error));
        }
        let login: pb::LoginResponse = frame.decode().map_err(|e| ClientError::Protocol(e.to_string()))?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = login.token.clone();
        self.user_id.store(login.user_id, Ordering::Relaxed);
        Ok(Session { reader, writer, login })
    }

    /// Hands messages to the delivery state, emits the deliverable ones, acks,
    /// and starts a sync when there is a gap.
    fn accept(self: &Arc<Self>, messages: Vec<Message>, out: &mpsc::Sender<Frame>) {
        if !self.config.receive {
            return;
        }
        let accepted = self
            .delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accept(messages, &mut |m| self.emit(m));
        self.follow_up(accepted, out);
    }

    /// Hands one message to the application. Called only with the delivery state
    /// locked, so concurrent accepts (push reader, sync) cannot reorder what they
    /// release.
    fn emit(&self, message: Message) {
        let _ = self.events.send(Event::Message(message));
    }

    /// Acknowledges what was delivered and syncs the gaps.
    fn follow_up(self: &Arc<Self>, accepted: delivery::Accepted, out: &mpsc::Sender<Frame>) {
        for (conversation, seq) in accepted.acks {
            let _ = out.try_send(Frame::new(Command::PushAck, 0, &pb::PushAck { conversation, seq }));
        }
        if !accepted.gaps.is_empty() {
            self.spawn_sync();
        }
    }

    /// Syncs everything missed since the client's cursors (coalescing requests).
    fn spawn_sync(self: &Arc<Self>) {
        if !self.config.receive {
            return;
        }
        if self.syncing.swap(true, Ordering::SeqCst) {
            self.sync_again.store(true, Ordering::SeqCst);
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                shared.sync_again.store(false, Ordering::SeqCst);
                if let Err(e) = shared.sync().await {
                    tracing::debug!(error = %e, "sync failed; retried after reconnect");
                }
                if !shared.sync_again.load(Ordering::SeqCst) || shared.is_closed() {
                    break;
                }
            }
            shared.syncing.store(false, Ordering::SeqCst);
        });
    }

    async fn sync(self: &Arc<Self>) -> Result<(), ClientError> {
        loop {
            let cursors = self.delivery.lock().unwrap_or_else(|e| e.into_inner()).cursors();
            let request = pb::SyncRequest {
                cursors: cursors
                    .into_iter()
                    .map(|(conversation, seq)| pb::Cursor { conversation, seq })
                    .collect(),
                limit: 0,
            };
            let frame = self.request(Command::Sync, &request).await?;
            let response: pb::SyncResponse = frame.decode().map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Some(out) = self.out.borrow().clone() else {
                return Err(ClientError::Disconnected("connection lost during sync".into()));
            };
            let released: Vec<delivery::Accepted> = {
                let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
                response
                    .cursors
                    .iter()
                    .map(|c| delivery.baseline(&c.conversation, c.seq, &mut |m| self.emit(m)))
                    .collect()
            };
            for accepted in released {
                self.follow_up(accepted, &out);
            }
            self.accept(response.messages, &out);
            if !response.more {
                return Ok(());
            }
        }
    }

    fn fail_pending(&self, error: ClientError) {
        let pending: Vec<_> = self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(error.clone()));
        }
    }
}

/// How a connection ended.
enum End {
    /// Reconnect after the usual backoff.
    Lost(String),
    /// The server asked us to reconnect (draining): go now, to another server.
    Moved,
    /// Stop for good: kicked by the server.
    Stop(String),
    /// Stop for good: the application closed the client.
    Closed,
}

/// The connection task: serves the current session, then reconnects.
async fn run(shared: Arc<Shared>, mut server: usize, first: Session, ready: oneshot::Sender<()>) {
    let mut session = Some(first);
    let mut ready = Some(ready);
    let mut backoff = shared.config.min_backoff;
    loop {
        if let Some(s) = session.take() {
            backoff = shared.config.min_backoff;
            let end = serve(&shared, s, ready.take()).await;
            shared.out.send_replace(None);
            shared.fail_pending(ClientError::Disconnected("connection lost".into()));
            match end {
                End::Stop(reason) => {
                    shared.closed.store(true, Ordering::SeqCst);
                    let _ = shared.events.send(Event::Kicked(reason));
                    return;
                }
                End::Closed => return,
                End::Lost(reason) => {
                    let _ = shared.events.send(Event::Disconnected(reason));
                }
                End::Moved => {
                    let _ = shared
                        .events
                        .send(Event::Disconnected("server asked to reconnect".into()));
                    server += 1;
                    // Spread reconnects a little even when told to go now.
                    let jitter = rand::rng().random_range(0..=shared.config.min_backoff.as_millis() as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                    backoff = Duration::ZERO;
                }
            }
        }
        if shared.is_closed() || !shared.config.reconnect {
            shared.closed.store(true, Ordering::SeqCst);
            return;
        }
        if !backoff.is_zero() {
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::time::sleep(jittered).await;
        }
        match shared.establish(server).await {
            Ok(s) => session = Some(s),
            Err(ClientError::Server(e)) if e.code() == ErrorCode::AuthFailed => {
                shared.closed.store(true, Ordering::SeqCst);
                let _ = shared
                    .events
                    .send(Event::Kicked(format!("login refused: {}", e.message)));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnect failed");
                server += 1;
                backoff = (backoff * 2).clamp(shared.config.min_backoff, shared.config.max_backoff);
            }
        }
    }
}

/// Serves one logged-in session until it ends.
async fn serve(shared: &Arc<Shared>, session: Session, ready: Option<oneshot::Sender<()>>) -> End {
    let Session {
        mut reader,
        mut writer,
        login,
    } = session;
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(1024);
    shared.out.send_replace(Some(out_tx.clone()));
    let _ = shared.events.send(Event::Connected {
        gateway_id: login.gateway_id.clone(),
    });
    shared.spawn_sync();
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let mut closed_rx = shared.out.subscribe();
    let interval = Duration::from_millis(login.heartbeat_interval_ms.max(100) as u64);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            frame = out_rx.recv() => {
                let Some(frame) = frame else { return End::Lost("closed".into()) };
                if let Err(e) = writer.write(&frame).await {
                    return End::Lost(e.to_string());
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = writer.write(&Frame::new(Command::Ping, 0, &pb::Ping {})).await {
                    return End::Lost(e.to_string());
                }
            }
            _ = closed_rx.changed() => {
                if shared.is_closed() {
                    writer.close().await;
                    return End::Closed;
                }
            }
            frame = reader.read() => {
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return End::Lost("server closed the connection".into()),
                    Err(e) => return End::Lost(e.to_string()),
                };
                match frame.command() {
                    Some(Command::Push) => {
                        if let Ok(push) = frame.decode::<pb::Push>() {
                            shared.accept(push.messages, &out_tx);
                        }
                    }
                    Some(Command::Kick) => {
                        let kick: pb::Kick = frame.decode().unwrap_or_default();
                        return End::Stop(kick.reason);
                    }
                    Some(Command::Reconnect) => return End::Moved,
                    _ if frame.is_response() => {
                        if frame.request_id == 0 {
                            // A connection-level error: the server closes next.
                            if let Ok(error) = frame.decode::<pb::Error>() {
                                tracing::warn!(error = %error, "server error");
                            }
                            continue;
                        }
                        let waiter = shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&frame.request_id);
                        if let Some(waiter) = waiter {
                            let result = if frame.command() == Some(Command::Error) {
                                match frame.decode::<pb::Error>() {
                                    Ok(error) => Err(ClientError::Server(error)),
                                    Err(e) => Err(ClientError::Protocol(e.to_string())),
                                }
                            } else {
                                Ok(frame)
                            };
                            let _ = waiter.send(result);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
