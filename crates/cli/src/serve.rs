//! `baton serve`: the gateway.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use baton_config::EnvFileResolver;
use clap::Args;

use crate::ConfigArgs;
use crate::setup;

/// `baton serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Listen on this address instead of `server.listen` (`127.0.0.1:0` picks a free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// The store URL, instead of `[store] url`.
    #[arg(long, env = "BATON_STORE")]
    pub store: Option<String>,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::LogFormat,
    // The store's writer thread shares the cores but mostly sleeps in its flushes, so one
    // worker per core leaves none idle; a single worker on two cores fell behind under load
    // for up to a second at a time.
    /// Worker threads that serve HTTP and run the engine. Default: one per CPU core.
    #[arg(long, env = "BATON_WORKERS")]
    pub workers: Option<usize>,
}

/// A future that resolves when SIGTERM or Ctrl-C arrives. SIGTERM's handler is installed
/// here, before the future is first polled, so a SIGTERM sent as soon as the server says it
/// listens stops it cleanly instead of killing it.
fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let Some(mut term) = term else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stopping: no new requests; finishing those under way");
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub(crate) async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let Some(config) = setup::config_file(args.config.config.as_deref(), None) else {
        eprintln!("baton serve: no config: pass -c FILE (or have ./baton.toml)");
        return Ok(ExitCode::from(2));
    };
    let loaded = match setup::load(Some(&config), &[], args.store.as_deref()) {
        Ok(l) => l,
        Err(problems) => {
            eprint!("{problems}");
            return Ok(ExitCode::from(2));
        }
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
        ])
        .ok()
        .and_then(|b| b.install_recorder().ok());
    let engine = setup::build_engine(&loaded).await?;
    let resolver = EnvFileResolver::new(loaded.gateway.base_dir.clone());
    let state = Arc::new(baton_server::AppState::new(
        &loaded,
        &setup::configured_kinds(&loaded),
        engine.clone(),
        &resolver,
        metrics,
    )?);
    let listen = args
        .listen
        .unwrap_or_else(|| loaded.gateway.server.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    // Subscribed before the engine starts, so its first changes wake the reporter at once
    // (the store's outbox holds what to report either way).
    let reports = baton_report::Reporter::new(
        &loaded.gateway,
        &resolver,
        loaded.gateway.server.public_url.clone(),
    )
    .context("setting up commit status reports")?
    .map(|reporter| {
        tracing::info!(sources = ?reporter.sources(), "reporting commit statuses");
        tokio::spawn(reporter.run(engine.clone()))
    });
    engine.start().await?;
    let stop = stop_signal();
    // Tests and scripts read this line to find the port.
    eprintln!(
        "baton serve: listening on http://{address} ({} workflows, store {})",
        loaded.workflows.len(),
        baton_store::redact_url(&loaded.gateway.store_url())
    );
    tracing::info!(%address, "listening");
    baton_server::serve(state, listener, stop).await?;
    if let Some(reports) = reports {
        reports.abort();
    }
    eprintln!("baton serve: stopped");
    Ok(ExitCode::SUCCESS)
}
