//! The development commands: `fedgw lab` (a consortium on one machine, docs/DESIGN.md section
//! 11) and `fedgw stand-in` (echo and `GET /upcheck` servers standing in for nodes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{CliError, exit, usage, wait_for_signal};

/// `fedgw stand-in`.
pub(super) async fn stand_in(echo: Vec<SocketAddr>, http: Vec<SocketAddr>) -> Result<(), CliError> {
    if echo.is_empty() && http.is_empty() {
        return Err(usage("give at least one --echo or --http address"));
    }
    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = CancellationToken::new();
    let bound = crate::dev::standin::serve(&echo, &http, &tracker, &shutdown)
        .await
        .map_err(|e| CliError::new(exit::FAILURE, e))?;
    let shown: Vec<String> = bound.iter().map(ToString::to_string).collect();
    outln!("stand-in serving {}", shown.join(" "))?;
    wait_for_signal().await;
    shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    Ok(())
}

/// `fedgw lab`.
pub(super) async fn lab(
    orgs: usize,
    dir: Option<PathBuf>,
    check: bool,
    consortium: String,
    domain: String,
    geth: Option<PathBuf>,
) -> Result<(), CliError> {
    let temporary = dir.is_none();
    let dir = match dir {
        Some(d) => d,
        None => crate::dev::lab::temporary_dir().context("creating a lab directory")?,
    };
    let bin = std::env::current_exe().context("locating the fedgw binary")?;
    outln!("fedgw lab: {orgs} orgs in {}", dir.display())?;
    // SIGTERM too, so `kill` stops the gateways rather than orphaning them
    let failed = crate::dev::lab::run(
        crate::dev::lab::LabOptions {
            orgs,
            dir: dir.clone(),
            consortium,
            domain,
            check,
            bin,
            geth,
        },
        wait_for_signal(),
    )
    .await
    .map_err(usage)?;
    if temporary && check {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if failed > 0 {
        return Err(CliError::new(
            exit::FAILURE,
            anyhow::anyhow!("{failed} lab step(s) failed"),
        ));
    }
    Ok(())
}
