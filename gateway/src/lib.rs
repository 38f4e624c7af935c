//! FastIM gateway: where client connections live.
//!
//! - [`server`] accepts TCP connections (FastIM frames) and WebSocket connections
//!   (one frame per binary message) and drains them on shutdown.
//! - [`connection`] is the task of one connection: login deadline, heartbeats,
//!   forwarding commands to logic, writing pushes, resending unacknowledged ones.
//! - [`registry`] maps connection ids to their tasks' bounded queues; logic's
//!   push and kick calls ([`Gateway`] implements the internal `Gateway` gRPC
//!   service) go through it.
//! - [`transport`] hides TCP vs WebSocket.
//! - [`acks`] batches the clients' delivery acknowledgements to logic, off the
//!   connections' request path.
//!
//! A gateway keeps no state but its connections: identities come from logic at
//! LOGIN, messages are durable in logic's store before they are pushed here.
#![forbid(unsafe_code)]

pub mod acks;
pub mod config;
pub mod connection;
pub mod registry;
pub mod remote;
pub mod server;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use fastim_proto::internal::gateway_server;
use fastim_proto::internal::logic_server::Logic;
use fastim_proto::internal::{Empty, KickRequest, PushBatch, PushResult};
use tonic::{Request, Response, Status};

use acks::AckForwarder;
pub use config::GatewayConfig;
use registry::{Outbound, Queued, Registry};

/// A gateway: its configuration, its connections and the logic it forwards to.
pub struct Gateway {
    /// Validated settings.
    pub config: GatewayConfig,
    /// The logic API: in-process in standalone, a gRPC client in cluster mode.
    pub logic: Arc<dyn Logic>,
    /// Live connections.
    pub registry: Registry,
    /// Delivery acknowledgements on their way to logic.
    pub acks: AckForwarder,
}

impl Gateway {
    /// A gateway forwarding to `logic`. Call it inside a Tokio runtime (it starts
    /// the acknowledgement forwarder).
    pub fn new(config: GatewayConfig, logic: Arc<dyn Logic>) -> Arc<Gateway> {
        Arc::new(Gateway {
            config,
            acks: AckForwarder::start(logic.clone()),
            logic,
            registry: Registry::default(),
        })
    }

    /// Number of live connections (authenticated or not).
    pub fn connection_count(&self) -> usize {
        self.registry.len()
    }
}

/// The handle logic holds: push and kick go into connection queues.
#[tonic::async_trait]
impl gateway_server::Gateway for Gateway {
    async fn push(&self, request: Request<PushBatch>) -> Result<Response<PushResult>, Status> {
        let batch = request.into_inner();
        let messages: Arc<[_]> = batch.messages.into();
        let mut missing = Vec::new();
        let mut conns = batch.conn_ids;
        if !batch.user_ids.is_empty() {
            conns.extend(self.registry.connections_of(&batch.user_ids));
        }
        for conn in conns {
            match self.registry.deliver(conn, Outbound::Push(messages.clone())) {
                Queued::Ok => {}
                Queued::Overflow => tracing::info!(conn, "push queue full; closing the slow reader"),
                Queued::Missing => missing.push(conn),
            }
        }
        Ok(Response::new(PushResult { missing }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<Empty>, Status> {
        let kick = request.into_inner();
        self.registry.deliver(kick.conn_id, Outbound::Kick(kick.reason));
        Ok(Response::new(Empty {}))
    }
}
