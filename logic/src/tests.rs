//! Logic driven in-process, without a gateway: the `Logic` service trait called
//! directly, as a gateway would.

use std::sync::Arc;
use std::time::Duration;

use fastim_idgen::Snowflake;
use fastim_proto::Command;
use fastim_proto::client::{self, DeviceKind, ErrorCode};
use fastim_proto::internal::logic_server::Logic;
use fastim_proto::internal::{AuthRequest, ClientCall, Device};
use prost::Message as _;
use tonic::Request;

use crate::auth::{self, HashCost};
use crate::gateways::LocalGateways;
use crate::routes::MemoryRoutes;
use crate::store::embedded::EmbeddedStore;
use crate::store::{SessionRecord, Store};
use crate::{LogicConfig, LogicService};

struct Fixture {
    logic: Arc<LogicService>,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = LogicConfig {
        hash_cost: HashCost {
            memory_kib: 64,
            iterations: 1,
        },
        ..LogicConfig::default()
    };
    let logic = LogicService::new(
        config,
        store.clone(),
        Arc::new(Snowflake::new(1).unwrap()),
        Arc::new(MemoryRoutes::default()),
        Arc::new(LocalGateways::default()),
    );
    Fixture {
        logic,
        store,
        _dir: dir,
    }
}

impl Fixture {
    async fn register(&self, user: &str, password: &str) -> Result<Vec<u8>, client::Error> {
        let body = client::RegisterRequest {
            user: user.into(),
            password: password.into(),
        }
        .encode_to_vec();
        let call = ClientCall {
            device: None,
            command: Command::Register as u32,
            body,
        };
        let reply = self.logic.call(Request::new(call)).await.unwrap().into_inner();
        reply.error.map_or(Ok(reply.body), Err)
    }

    async fn login(&self, login: client::LoginRequest) -> Result<(client::LoginResponse, Device), client::Error> {
        let request = AuthRequest {
            login: Some(login),
            gateway_id: "g".into(),
            conn_id: 1,
        };
        let reply = self
            .logic
            .authenticate(Request::new(request))
            .await
            .unwrap()
            .into_inner();
        match reply.error {
            Some(e) => Err(e),
            None => Ok((reply.response.unwrap(), reply.device.unwrap())),
        }
    }
}

fn with_password(user: &str, password: &str) -> client::LoginRequest {
    client::LoginRequest {
        user: user.into(),
        password: password.into(),
        device_kind: DeviceKind::Mobile as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn registration_validates_names_and_passwords() {
    let f = fixture();
    assert_eq!(
        f.register("bad name", "long-enough").await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        f.register("", "long-enough").await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        f.register("alice", "short").await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    f.register("alice", "long-enough").await.unwrap();
    assert_eq!(
        f.register("alice", "long-enough").await.unwrap_err().code(),
        ErrorCode::UserExists
    );
    // The stored hash is argon2id, not the password.
    let stored = f.store.user_by_name("alice").await.unwrap().unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"));
    assert!(!stored.password_hash.contains("long-enough"));
}

#[tokio::test]
async fn tokens_expire_and_are_tied_to_their_user() {
    let f = fixture();
    f.register("alice", "long-enough").await.unwrap();
    f.register("bob", "long-enough").await.unwrap();
    let (response, device) = f.login(with_password("alice", "long-enough")).await.unwrap();
    assert_eq!(device.user, "alice");
    assert_eq!(response.heartbeat_interval_ms, 30_000);
    let expires_in = response.token_expires_unix_ms as i128
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i128;
    assert!((expires_in - Duration::from_secs(30 * 24 * 3600).as_millis() as i128).abs() < 60_000);

    let by_token = |user: &str, token: &str| client::LoginRequest {
        user: user.into(),
        token: token.into(),
        device_kind: DeviceKind::Web as i32,
        ..Default::default()
    };
    f.login(by_token("alice", &response.token)).await.unwrap();
    let other = f.login(by_token("bob", &response.token)).await.unwrap_err();
    assert_eq!(other.code(), ErrorCode::AuthFailed);

    // An expired session is refused with a reason.
    let token = auth::new_token();
    let record = SessionRecord {
        user_id: device.user_id,
        device_id: "old".into(),
        expires_ms: 1,
    };
    f.store.create_session(&auth::token_hash(&token), record).await.unwrap();
    let expired = f.login(by_token("alice", &token)).await.unwrap_err();
    assert_eq!(expired.code(), ErrorCode::AuthFailed);
    assert!(expired.message.contains("expired"), "{}", expired.message);

    let wrong = f.login(with_password("alice", "not-the-password")).await.unwrap_err();
    let unknown = f.login(with_password("nobody", "long-enough")).await.unwrap_err();
    assert_eq!(
        wrong, unknown,
        "the same answer for a wrong password and an unknown user"
    );
    let mut no_kind = with_password("alice", "long-enough");
    no_kind.device_kind = 0;
    assert_eq!(f.login(no_kind).await.unwrap_err().code(), ErrorCode::InvalidArgument);
}
