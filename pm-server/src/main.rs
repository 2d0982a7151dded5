//! `pm-server`: runs the pm reference server (`serve`, the default) or applies database
//! migrations (`migrate`). Configuration: see [`pm_server::config`].
//!
//! Logs go to stderr; `migrate` reports its result on stdout.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use pm_core::store::Stores;
use pm_server::AppState;
use pm_server::config::Config;
use tokio::sync::watch;

mod cli;

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(cli.config.env_filter())
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for journald/log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command_or_default() {
        Command::Serve => serve(&cli.config).await,
        Command::Migrate => migrate(&cli.config).await,
    }
}

/// Opens the configured database and brings its schema up to date.
async fn open_and_migrate(config: &Config) -> anyhow::Result<Stores> {
    let url = config.database_url_redacted();
    let stores = pm_core::store::open(&config.database_url)
        .await
        .with_context(|| format!("opening database {url}"))?;
    stores
        .admin
        .migrate()
        .await
        .with_context(|| format!("migrating {} database {url}", stores.admin.backend()))?;
    Ok(stores)
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let stores = open_and_migrate(config).await?;
    println!(
        "migrated {} database {}: all pm-core migrations applied, schema is up to date",
        stores.admin.backend(),
        config.database_url_redacted()
    );
    Ok(())
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let stores = open_and_migrate(config).await?;
    let backend = stores.admin.backend();
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {} (PM_BIND)", config.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, backend, database = %config.database_url_redacted(), "pm-server listening");

    // The signal fans out twice: to axum (stop accepting, drain) and to the grace timer below.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let server = pm_server::serve(listener, AppState::new(stores), stopped(stop_rx.clone()));
    let grace = config.shutdown_timeout;
    let deadline = async move {
        stopped(stop_rx).await;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining in-flight requests");
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res.context("serving HTTP")?,
        () = deadline => {
            tracing::warn!("in-flight requests still running after {}; closing them", fmt_secs(grace));
        }
    }
    tracing::info!("pm-server stopped");
    Ok(())
}

/// Completes once the stop flag is raised (or its sender is gone, which only happens after).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Completes on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
