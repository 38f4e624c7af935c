//! The route table: which gateway holds each online device of a user.
//!
//! Logic writes a route when a device logs in and removes it when the connection
//! closes; fan-out reads it to find where to push. Standalone keeps it in memory
//! ([`MemoryRoutes`]); cluster mode keeps it in Redis ([`redis::RedisRoutes`]) with
//! TTLs refreshed by the gateways' periodic announcements. A route is only ever a
//! hint: a message is durable before it is routed, and a device that misses a push
//! catches up by syncing.

pub mod redis;

use std::collections::HashMap;
use std::sync::Mutex;

use fastim_proto::internal::Device;

/// Which older logins a new login replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KickPolicy {
    /// A new login kicks the older login of the same device kind (default).
    #[default]
    SameKind,
    /// A new login kicks every other login of the user.
    SingleDevice,
    /// Logins never kick each other.
    Never,
}

impl std::str::FromStr for KickPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "same-kind" => Ok(KickPolicy::SameKind),
            "single-device" => Ok(KickPolicy::SingleDevice),
            "never" => Ok(KickPolicy::Never),
            other => Err(format!(
                "unknown kick policy {other:?} (expected same-kind, single-device or never)"
            )),
        }
    }
}

/// A route-table failure (cluster backends); the caller treats the route as unknown.
#[derive(Debug, thiserror::Error)]
#[error("route table unavailable: {0}")]
pub struct RouteError(pub String);

/// Where each online device is connected.
#[tonic::async_trait]
pub trait RouteTable: Send + Sync + 'static {
    /// Records `device` and returns the routes it replaces under `policy`; the
    /// caller kicks those connections.
    async fn bind(&self, device: &Device, policy: KickPolicy) -> Result<Vec<Device>, RouteError>;
    /// Removes the route of exactly this connection (a newer login's route stays).
    async fn unbind(&self, device: &Device) -> Result<(), RouteError>;
    /// Every online device of a user.
    async fn devices(&self, user_id: u64) -> Result<Vec<Device>, RouteError>;
    /// Re-announces devices that are still connected (no kicks): refreshes their
    /// expiry and restores routes a restarted store lost.
    async fn refresh(&self, devices: &[Device]) -> Result<(), RouteError>;
}

pub(crate) fn same_connection(a: &Device, b: &Device) -> bool {
    a.gateway_id == b.gateway_id && a.conn_id == b.conn_id
}

/// The in-memory route table of standalone mode.
#[derive(Default)]
pub struct MemoryRoutes {
    by_user: Mutex<HashMap<u64, Vec<Device>>>,
}

#[tonic::async_trait]
impl RouteTable for MemoryRoutes {
    async fn bind(&self, device: &Device, policy: KickPolicy) -> Result<Vec<Device>, RouteError> {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let routes = map.entry(device.user_id).or_default();
        let replaced: Vec<Device> = routes
            .extract_if(.., |old| match policy {
                KickPolicy::SameKind => old.kind == device.kind,
                KickPolicy::SingleDevice => true,
                KickPolicy::Never => false,
            })
            .collect();
        routes.push(device.clone());
        Ok(replaced)
    }

    async fn unbind(&self, device: &Device) -> Result<(), RouteError> {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(routes) = map.get_mut(&device.user_id) {
            routes.retain(|d| !same_connection(d, device));
            if routes.is_empty() {
                map.remove(&device.user_id);
            }
        }
        Ok(())
    }

    async fn devices(&self, user_id: u64) -> Result<Vec<Device>, RouteError> {
        let map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(&user_id).cloned().unwrap_or_default())
    }

    async fn refresh(&self, devices: &[Device]) -> Result<(), RouteError> {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        for device in devices {
            let routes = map.entry(device.user_id).or_default();
            if !routes.iter().any(|d| same_connection(d, device)) {
                routes.push(device.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: u64, kind: i32, conn: u64) -> Device {
        Device {
            user_id: user,
            kind,
            conn_id: conn,
            gateway_id: "g1".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn same_kind_replaces_only_that_kind() {
        let routes = MemoryRoutes::default();
        assert!(
            routes
                .bind(&device(1, 1, 10), KickPolicy::SameKind)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            routes
                .bind(&device(1, 2, 11), KickPolicy::SameKind)
                .await
                .unwrap()
                .is_empty()
        );
        let replaced = routes.bind(&device(1, 1, 12), KickPolicy::SameKind).await.unwrap();
        assert_eq!(replaced, vec![device(1, 1, 10)]);
        // The kicked connection's late unbind must not remove the new route.
        routes.unbind(&device(1, 1, 10)).await.unwrap();
        let mut conns: Vec<u64> = routes.devices(1).await.unwrap().iter().map(|d| d.conn_id).collect();
        conns.sort();
        assert_eq!(conns, vec![11, 12]);
    }

    #[tokio::test]
    async fn policies() {
        let routes = MemoryRoutes::default();
        routes.bind(&device(1, 1, 1), KickPolicy::Never).await.unwrap();
        assert!(
            routes
                .bind(&device(1, 1, 2), KickPolicy::Never)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            routes
                .bind(&device(1, 3, 3), KickPolicy::SingleDevice)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!("never".parse::<KickPolicy>().unwrap(), KickPolicy::Never);
        assert!("bogus".parse::<KickPolicy>().is_err());
    }
}
