//! `fastim operator run`: the process around [`fastim_operator::run`]: the HTTP
//! side (`/healthz`, `/readyz`, `/metrics`), the Kubernetes client, the signals.

use std::sync::Arc;

use anyhow::Context as _;
use fastim_operator::leader::LeaseConfig;
use fastim_operator::run::{Operator, RunOptions};

use crate::cli::OperatorRunArgs;
use crate::cluster::{default_id, serve_http};
use crate::http::Reply;
use crate::standalone::shutdown_signal;

pub async fn run(args: OperatorRunArgs) -> anyhow::Result<i32> {
    // Listen for SIGTERM from the start: a pod stopped while it waits exits cleanly.
    let signal = tokio::spawn(shutdown_signal());
    tokio::task::yield_now().await;
    let operator = Arc::new(Operator::default());
    let for_metrics = operator.clone();
    let (ready, _) = serve_http("operator", args.http, move |path| {
        (path == "/metrics").then(|| Reply::text(200, for_metrics.metrics_text()))
    })
    .await?;
    ready.set_waiting("the Kubernetes API");
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}: not a usable kubeconfig", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes API configuration: not in a cluster (no service account) and no KUBECONFIG or ~/.kube/config",
        )?,
    };
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
    let identity = args.identity.clone().unwrap_or_else(|| default_id("operator"));
    let lease = (!args.no_leader_election).then(|| {
        LeaseConfig::new(
            args.lease_namespace.clone().unwrap_or(default_namespace),
            args.lease_name.clone(),
            identity.clone(),
        )
    });
    if let Some(lease) = &lease {
        tracing::info!(lease = %lease.name, namespace = %lease.namespace, %identity, "campaigning for the leader Lease");
    } else {
        tracing::warn!("leader election off: run only one operator like this");
    }
    let options = RunOptions {
        namespace: args.namespace.clone(),
        lease,
        instance: Some(identity),
    };
    let waiting = Box::new(move |what: Option<&str>| match what {
        Some(what) => ready.set_waiting(what),
        None => ready.set_ready(),
    });
    operator
        .run(
            client,
            options,
            waiting,
            Box::pin(async move {
                let _ = signal.await;
            }),
        )
        .await?;
    tracing::info!("fastim operator stopped");
    Ok(0)
}
