//! How logic reaches gateways to push messages and kick connections.
//!
//! Standalone has one gateway in the same process ([`LocalGateways`]); cluster mode
//! dials gateways found in the etcd registry. Both hand out the same gRPC service
//! trait, so fan-out code does not know which it talks to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fastim_proto::internal::gateway_client::GatewayClient;
use fastim_proto::internal::gateway_server::Gateway;
use fastim_proto::internal::{Empty, KickRequest, PushBatch, PushResult};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Finds the gateway with a given id.
pub trait GatewayDirectory: Send + Sync + 'static {
    /// The gateway, or `None` when it is unknown (gone): its devices resync later.
    fn gateway(&self, id: &str) -> Option<Arc<dyn Gateway>>;
    /// Ids of every live gateway (for large-group fan-out).
    fn all(&self) -> Vec<String>;
}

/// The one in-process gateway of standalone mode. It is set after construction,
/// because the gateway needs logic and logic needs the gateway.
#[derive(Default)]
pub struct LocalGateways {
    id: OnceLock<String>,
    gateway: OnceLock<Arc<dyn Gateway>>,
}

impl LocalGateways {
    /// Installs the gateway; later calls are ignored.
    pub fn set(&self, id: &str, gateway: Arc<dyn Gateway>) {
        let _ = self.id.set(id.to_owned());
        let _ = self.gateway.set(gateway);
    }
}

impl GatewayDirectory for LocalGateways {
    fn gateway(&self, id: &str) -> Option<Arc<dyn Gateway>> {
        (self.id.get().map(String::as_str) == Some(id))
            .then(|| self.gateway.get().cloned())
            .flatten()
    }

    fn all(&self) -> Vec<String> {
        self.id.get().cloned().into_iter().collect()
    }
}

/// Finds a gateway's internal gRPC address by its id (cluster mode: the etcd registry).
pub type Resolver = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;
/// Lists the ids of the live gateways.
pub type Lister = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Gateways reached over gRPC, found through a [`Resolver`]. Clients are created on
/// first use and replaced when a gateway id moves to another address.
pub struct RemoteGateways {
    resolve: Resolver,
    list: Lister,
    clients: Mutex<HashMap<String, (String, Arc<RemoteGateway>)>>,
}

impl RemoteGateways {
    /// Gateways found through `resolve`, listed by `list`.
    pub fn new(resolve: Resolver, list: Lister) -> RemoteGateways {
        RemoteGateways {
            resolve,
            list,
            clients: Mutex::new(HashMap::new()),
        }
    }
}

impl GatewayDirectory for RemoteGateways {
    fn gateway(&self, id: &str) -> Option<Arc<dyn Gateway>> {
        let Some(addr) = (self.resolve)(id) else {
            self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            return None;
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, client)) = clients.get(id)
            && *known == addr
        {
            return Some(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let client = Arc::new(RemoteGateway {
            client: GatewayClient::new(endpoint.connect_lazy()),
        });
        clients.insert(id.to_owned(), (addr, client.clone()));
        Some(client)
    }

    fn all(&self) -> Vec<String> {
        (self.list)()
    }
}

/// One remote gateway's `Gateway` service.
pub struct RemoteGateway {
    client: GatewayClient<Channel>,
}

#[tonic::async_trait]
impl Gateway for RemoteGateway {
    async fn push(&self, request: Request<PushBatch>) -> Result<Response<PushResult>, Status> {
        self.client.clone().push(request).await
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<Empty>, Status> {
        self.client.clone().kick(request).await
    }
}
