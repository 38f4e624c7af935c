//! Logic over gRPC, for gateways in cluster mode.
//!
//! [`RemoteLogic`] implements the same `Logic` service trait the gateway calls in
//! standalone mode, over a channel that balances requests across every logic node
//! it is told about ([`LogicEndpoints`]; the `fastim gateway` command feeds it from
//! the etcd registry). A node that disappears is removed from the balance; calls in
//! flight to it fail with UNAVAILABLE and clients retry.

use std::collections::BTreeMap;
use std::time::Duration;

use fastim_proto::internal::logic_client::LogicClient;
use fastim_proto::internal::logic_server::Logic;
use fastim_proto::internal::{
    AckBatch, AuthReply, AuthRequest, ClientCall, ClientReply, Disconnected, Empty, RefreshRoutes,
};
use tokio::sync::mpsc;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The `Logic` service of a set of remote logic nodes.
#[derive(Clone)]
pub struct RemoteLogic {
    client: LogicClient<Channel>,
}

/// Keeps the balanced channel's endpoint set equal to a given address list.
pub struct LogicEndpoints {
    changes: mpsc::Sender<Change<String, Endpoint>>,
    current: BTreeMap<String, ()>,
}

/// An endpoint for an internal `host:port` address.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(15))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

impl RemoteLogic {
    /// A balanced client with no endpoints yet, and the handle that sets them.
    pub fn balanced() -> (RemoteLogic, LogicEndpoints) {
        let (channel, changes) = Channel::balance_channel(64);
        (
            RemoteLogic {
                client: LogicClient::new(channel),
            },
            LogicEndpoints {
                changes,
                current: BTreeMap::new(),
            },
        )
    }
}

impl LogicEndpoints {
    /// Makes `addrs` the set of logic nodes.
    pub async fn set(&mut self, addrs: impl IntoIterator<Item = String>) {
        let wanted: BTreeMap<String, ()> = addrs.into_iter().map(|a| (a, ())).collect();
        for gone in self.current.keys().filter(|a| !wanted.contains_key(*a)) {
            tracing::info!(logic = %gone, "logic node left");
            let _ = self.changes.send(Change::Remove(gone.clone())).await;
        }
        for new in wanted.keys().filter(|a| !self.current.contains_key(*a)) {
            match endpoint(new) {
                Ok(e) => {
                    tracing::info!(logic = %new, "logic node joined");
                    let _ = self.changes.send(Change::Insert(new.clone(), e)).await;
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a logic node"),
            }
        }
        self.current = wanted;
    }

    /// Number of known logic nodes.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether no logic node is known.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[tonic::async_trait]
impl Logic for RemoteLogic {
    async fn authenticate(&self, request: Request<AuthRequest>) -> Result<Response<AuthReply>, Status> {
        self.client.clone().authenticate(request).await
    }

    async fn call(&self, request: Request<ClientCall>) -> Result<Response<ClientReply>, Status> {
        self.client.clone().call(request).await
    }

    async fn disconnect(&self, request: Request<Disconnected>) -> Result<Response<Empty>, Status> {
        self.client.clone().disconnect(request).await
    }

    async fn refresh(&self, request: Request<RefreshRoutes>) -> Result<Response<Empty>, Status> {
        self.client.clone().refresh(request).await
    }

    async fn acks(&self, request: Request<AckBatch>) -> Result<Response<Empty>, Status> {
        self.client.clone().acks(request).await
    }
}
