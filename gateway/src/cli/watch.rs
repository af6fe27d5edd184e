//! `fedgw render --watch`: keeps a rendered file current outside Kubernetes. The command
//! follows the gateway's `WatchStatus` stream (one message now, then one per view change),
//! renders again on each, rewrites the file only when its content changes, and then runs the
//! `--hook` command. A gateway that is down or restarts is waited for (100 ms, doubling to
//! 10 s); a usage error (a bad `fedgw.toml`, say) ends the command.

use std::path::Path;
use std::time::Duration;

use fedgw_proto::v1 as pb;
use tokio::process::Command;

use super::admin_conn::connect;
use super::{AdminDirArg, CliError, exit};

/// First wait after the gateway could not be reached or the stream ended.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Longest a hook may run; then it is killed and reported.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Renders with `render` on every view change until the process is stopped. `render` returns
/// whether it rewrote `out`; after a rewrite `hook` (a `sh -c` command line, with
/// `FEDGW_RENDERED` set to `out`) runs. Returns only with a usage error of `render`.
pub async fn run(
    args: &AdminDirArg,
    out: &Path,
    hook: Option<&str>,
    mut render: impl AsyncFnMut() -> Result<bool, CliError>,
) -> Result<(), CliError> {
    let mut wait = FIRST_RETRY;
    loop {
        match follow(args, out, hook, &mut render).await {
            Err(e) if e.code == exit::USAGE => return Err(e),
            Err(e) => eprintln!("render --watch: {e}; trying again in {wait:?}"),
            Ok(()) => {
                eprintln!("render --watch: the gateway closed the stream; trying again in {wait:?}")
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}

/// One connection's worth of watching: renders on every message until the stream ends.
async fn follow(
    args: &AdminDirArg,
    out: &Path,
    hook: Option<&str>,
    render: &mut impl AsyncFnMut() -> Result<bool, CliError>,
) -> Result<(), CliError> {
    let mut admin = connect(args).await?;
    let mut stream = match admin.client.watch_status(pb::StatusRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(s) => return Err(admin.error(s)),
    };
    while let Some(_status) = stream.message().await.map_err(|s| admin.error(s))? {
        if render().await?
            && let Some(hook) = hook
        {
            run_hook(hook, out).await;
        }
    }
    Ok(())
}

/// Runs `hook` through `sh -c`, bounded by [`HOOK_TIMEOUT`]; its failure is reported and the
/// watch goes on.
async fn run_hook(hook: &str, out: &Path) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("FEDGW_RENDERED", out)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(HOOK_TIMEOUT, child).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => eprintln!("render --watch: the hook `{hook}` failed ({status})"),
        Ok(Err(e)) => eprintln!("render --watch: cannot run the hook `{hook}`: {e}"),
        Err(_) => eprintln!(
            "render --watch: the hook `{hook}` ran longer than {HOOK_TIMEOUT:?} and was stopped"
        ),
    }
}
