//! Leader election for the operator on a `coordination.k8s.io/v1` Lease, the way
//! client-go's leaderelection does it: the holder renews `renewTime` every few
//! seconds; a candidate takes the Lease over only when the holder has not renewed it
//! for `leaseDurationSeconds`. Every write carries the `resourceVersion` it read, so
//! two candidates racing for an expired Lease cannot both win (the API answers the
//! loser with 409 Conflict).
//!
//! Only the leader runs the controller; the others wait as hot standbys. A leader
//! that cannot renew before its Lease would expire stops (the process exits and is
//! restarted), so two controllers never act at once for longer than one renewal.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// What a candidate needs to know.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a standby retries).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults of client-go: 15 s lease, 2 s retry.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A candidate for the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease (acquired or renewed).
    Leading,
    /// Somebody else holds a valid Lease.
    Following(String),
}

impl LeaseLock {
    /// A candidate using `client`.
    pub fn new(client: Client, config: LeaseConfig) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One attempt to acquire or renew, at the current time.
    pub async fn try_acquire_or_renew(&self) -> kube::Result<Attempt> {
        self.try_acquire_or_renew_at(Timestamp::now()).await
    }

    /// One attempt to acquire or renew, as if it were `now`.
    pub async fn try_acquire_or_renew_at(&self, now: Timestamp) -> kube::Result<Attempt> {
        let me = &self.config.identity;
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(e) if is_conflict(&e) => Ok(Attempt::Following("(another candidate, just now)".into())),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = match &holder {
            Some(h) if h == me => self.spec(spec.acquire_time.map(|t| t.0).unwrap_or(now), now, transitions),
            Some(h) if !expired(&spec, now) => return Ok(Attempt::Following(h.clone())),
            // Free or expired: take it over.
            _ => self.spec(now, now, transitions + 1),
        };
        let mut lease = current;
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(e) if is_conflict(&e) => Ok(Attempt::Following(
                holder.unwrap_or_else(|| "(another candidate, just now)".into()),
            )),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of
    /// waiting for it to expire. Only if this candidate still holds it.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let name = lease.name_any();
        match self.api.replace(&name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Whether the holder let the Lease lapse.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed.0 + duration < now
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}
