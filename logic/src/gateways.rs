//! How logic reaches gateways to push messages and kick connections.
//!
//! Standalone has one gateway in the same process ([`LocalGateways`]); cluster mode
//! dials gateways found in the etcd registry. Both hand out the same gRPC service
//! trait, so fan-out code does not know which it talks to.

use std::sync::{Arc, OnceLock};

use fastim_proto::internal::gateway_server::Gateway;

/// Finds the gateway with a given id.
pub trait GatewayDirectory: Send + Sync + 'static {
    /// The gateway, or `None` when it is unknown (gone): its devices resync later.
    fn gateway(&self, id: &str) -> Option<Arc<dyn Gateway>>;
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
}
