//! Logic configuration: one typed struct, validated at start.

use std::time::Duration;

use crate::auth::HashCost;
use crate::routes::KickPolicy;

/// Settings of the logic component.
#[derive(Debug, Clone)]
pub struct LogicConfig {
    /// Heartbeat interval told to clients; a connection silent for 3 intervals is closed.
    pub heartbeat_interval: Duration,
    /// Lifetime of a session token.
    pub session_ttl: Duration,
    /// argon2id cost for new password hashes.
    pub hash_cost: HashCost,
    /// Which older logins a new login kicks.
    pub kick_policy: KickPolicy,
    /// Longest message text in bytes.
    pub max_text_bytes: usize,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// Most messages in one sync or history response.
    pub max_page: usize,
    /// How often buffered delivery cursors are written to the store.
    pub cursor_flush_interval: Duration,
    /// Groups with at least this many members are fanned out by the gateways: one
    /// batch per gateway naming the members, instead of a route lookup per member.
    pub large_group_threshold: usize,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            heartbeat_interval: Duration::from_secs(30),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            hash_cost: HashCost::default(),
            kick_policy: KickPolicy::SameKind,
            max_text_bytes: 16 * 1024,
            max_group_members: 10_000,
            max_page: 500,
            cursor_flush_interval: Duration::from_millis(200),
            large_group_threshold: 500,
        }
    }
}

impl LogicConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err("heartbeat_interval: must be at least 100ms".into());
        }
        if self.session_ttl < Duration::from_secs(60) {
            return Err("session_ttl: must be at least 60s".into());
        }
        if self.hash_cost.memory_kib < 8 || self.hash_cost.iterations < 1 {
            return Err("hash_cost: memory_kib must be >= 8 and iterations >= 1".into());
        }
        if self.max_text_bytes == 0 {
            return Err("max_text_bytes: must be positive".into());
        }
        if self.max_group_members < 2 {
            return Err("max_group_members: must be at least 2".into());
        }
        if self.max_page == 0 {
            return Err("max_page: must be positive".into());
        }
        Ok(())
    }
}
