//! `fastim standalone`: gateway, logic and ID allocation in one process, on the
//! embedded store. The pieces talk through the same traits as in a cluster (the
//! `Logic` and `Gateway` gRPC service traits, `Store`, `RouteTable`); only the
//! implementations differ.

use anyhow::Context;
use fastim_gateway::Gateway;
use fastim_gateway::server::{self, Listeners};
use fastim_idgen::Snowflake;
use fastim_logic::LogicService;
use fastim_logic::gateways::LocalGateways;
use fastim_logic::routes::MemoryRoutes;
use fastim_logic::store::embedded::EmbeddedStore;
use std::sync::Arc;

use crate::cli::StandaloneArgs;

pub async fn run(args: StandaloneArgs) -> anyhow::Result<i32> {
    let logic_config = crate::config::logic(&args.logic)?;
    let gateway_config = crate::config::gateway("standalone", &args.gateway)?;
    let store = EmbeddedStore::open(&args.data_dir)
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
    let ids = Arc::new(Snowflake::new(0)?);
    let newest = store.max_message_id()?;
    if newest != 0 {
        ids.not_before(Snowflake::<fastim_idgen::SystemClock>::timestamp_ms(newest));
    }
    let gateways = Arc::new(LocalGateways::default());
    let logic = LogicService::new(
        logic_config,
        Arc::new(store),
        ids,
        Arc::new(MemoryRoutes::default()),
        gateways.clone(),
    );
    let gateway_id = gateway_config.id.clone();
    let gateway = Gateway::new(gateway_config, logic.clone());
    gateways.set(&gateway_id, gateway.clone());
    let listeners = Listeners::bind(&gateway).await?;
    let tcp = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok());
    let ws = listeners.ws.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(data_dir = %args.data_dir.display(), "fastim standalone started");
    // One machine-readable line for scripts and tests that start us on port 0.
    let tls = gateway.config.tls.is_some();
    println!(
        "fastim standalone ready tcp={} ws={}://{}/ tls={tls}",
        tcp.map(|a| a.to_string()).unwrap_or_default(),
        if tls { "wss" } else { "ws" },
        ws.map(|a| a.to_string()).unwrap_or_default()
    );
    server::serve(gateway, listeners, shutdown_signal()).await;
    logic.flush().await;
    tracing::info!("fastim standalone stopped");
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
