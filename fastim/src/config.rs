//! From flags to the components' typed configurations, and the `--config` file.

use std::time::Duration;

use anyhow::{Context, anyhow};
use fastim_gateway::GatewayConfig;
use fastim_logic::LogicConfig;
use fastim_logic::auth::HashCost;

use crate::cli::{GatewayFlags, LogicFlags};

/// Loads `FASTIM_*=value` lines from the file named by `--config FILE`,
/// `--config=FILE` or `FASTIM_CONFIG` into the environment, without overriding
/// variables that are already set. Runs before the flags are parsed, so that clap
/// sees the values as environment defaults.
pub fn load_config_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let from_flag = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=")
            .map(str::to_owned)
            .or_else(|| (a == "--config").then(|| args.get(i + 1).cloned()).flatten())
    });
    let Some(path) = from_flag.or_else(|| std::env::var("FASTIM_CONFIG").ok()) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("--config: cannot read {path}"))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("--config {path}, line {}: expected FASTIM_NAME=value", n + 1))?;
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        if !key.starts_with("FASTIM_") {
            return Err(anyhow!(
                "--config {path}, line {}: {key} is not a FASTIM_* setting",
                n + 1
            ));
        }
        if std::env::var_os(key).is_none() {
            set_env(key, value);
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn set_env(key: &str, value: &str) {
    // SAFETY: called from `main` before any other thread exists.
    unsafe { std::env::set_var(key, value) }
}

/// A comma-separated flag value as a list (blanks dropped).
pub fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn logic(flags: &LogicFlags) -> anyhow::Result<LogicConfig> {
    let config = LogicConfig {
        heartbeat_interval: Duration::from_millis(flags.heartbeat_ms),
        session_ttl: Duration::from_secs(flags.session_ttl_secs),
        hash_cost: HashCost {
            memory_kib: flags.argon2_memory_kib,
            iterations: flags.argon2_iterations,
        },
        kick_policy: flags.kick_policy.parse().map_err(|e| anyhow!("--kick-policy: {e}"))?,
        large_group_threshold: flags.large_group_threshold.max(1),
        ..LogicConfig::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid logic configuration: {e}"))?;
    Ok(config)
}

pub fn gateway(id: &str, flags: &GatewayFlags) -> anyhow::Result<GatewayConfig> {
    let config = GatewayConfig {
        id: id.to_owned(),
        tcp_addr: Some(flags.tcp),
        ws_addr: Some(flags.ws),
        max_frame_body: flags.max_frame_body,
        auth_timeout: Duration::from_millis(flags.auth_timeout_ms),
        outbound_queue: flags.outbound_queue,
        retransmit_after: Duration::from_millis(flags.retransmit_ms),
        frames_per_sec: flags.frames_per_sec,
        frame_burst: flags.frame_burst,
        max_connections: flags.max_connections,
        drain_rate: flags.drain_rate,
        drain_timeout: Duration::from_secs(flags.drain_timeout_secs),
        tls: match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => {
                Some(fastim_gateway::tls::server_config(cert, key).map_err(|e| anyhow!("TLS: {e}"))?)
            }
            _ => None,
        },
        ..GatewayConfig::default()
    };
    config
        .validate()
        .map_err(|e| anyhow!("invalid gateway configuration: {e}"))?;
    Ok(config)
}
