//! `fedgw invite` and `fedgw join`: a join token made (over the admin socket, or from the
//! store while the gateway is down) and used, with the exit code of each refusal.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fedgw_certs::JoinToken;
use fedgw_proto::v1::RefusalReason;

use super::{AdminDirArg, CliError, admin_conn, exit, usage};
use crate::datadir::DataDir;
use crate::join::client::{self as join_client, JoinDirError, JoinError};
use crate::join::server::{InviteSpec, create_invite};
use crate::provision::{self, NetworkOptions};
use crate::store::Store;

pub(super) async fn invite(
    args: AdminDirArg,
    org: String,
    ttl: Duration,
    uses: u32,
    json: bool,
) -> Result<(), CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    if let Some(mut admin) = admin_conn::connect_if_running(&args).await {
        let resp = admin
            .client
            .create_invite(fedgw_proto::v1::CreateInviteRequest {
                org: org.clone(),
                ttl_secs: ttl.as_secs(),
                uses,
            })
            .await
            .map_err(|s| admin.error(s))?
            .into_inner();
        return print_invite(json, &org, &resp.token_id, &resp.token, uses, ttl);
    }
    // the gateway is down: use the store directly
    let loaded = provision::load(&dir).map_err(|e| CliError::new(exit::USAGE, e))?;
    let store = Store::open(&dir.store()).map_err(|e| CliError::new(exit::FAILURE, e))?;
    let endpoint = loaded
        .config
        .advertise
        .first()
        .cloned()
        .ok_or_else(|| usage("no advertise endpoint configured"))?;
    let (token, _) = create_invite(
        &store,
        &loaded.config,
        &loaded.root_cert,
        &endpoint,
        &InviteSpec {
            org: org.clone(),
            ttl,
            uses,
        },
        SystemTime::now(),
    )
    .map_err(|e| match e {
        crate::join::server::InviteError::Store(_) => CliError::new(exit::FAILURE, e),
        e => usage(e),
    })?;
    print_invite(json, &org, &token.id, token.to_text().as_str(), uses, ttl)
}

/// Prints a new invite: the token alone on stdout (its id and terms on stderr), or with
/// `json` one object `{"org", "token_id", "token", "uses", "ttl_s"}` on stdout.
fn print_invite(
    json: bool,
    org: &str,
    token_id: &str,
    token: &str,
    uses: u32,
    ttl: Duration,
) -> Result<(), CliError> {
    if json {
        let v = serde_json::json!({
            "org": org, "token_id": token_id, "token": token, "uses": uses,
            "ttl_s": ttl.as_secs(),
        });
        outln!("{v}")?;
        return Ok(());
    }
    eprintln!(
        "invite {token_id} for {org}: {uses} use(s), valid {}",
        humantime::format_duration(ttl)
    );
    outln!("{token}")?;
    Ok(())
}

/// Most bytes read from a token file or standard input: far more than a token
/// ([`fedgw_certs::token::MAX_TOKEN_LEN`]), so a wrong file is refused without reading it whole.
const MAX_TOKEN_INPUT: u64 = 4096;

/// The join token from its one source: the argument (`-`: standard input, and the
/// `FEDGW_JOIN_TOKEN` variable lands here too) or `--token-file`. A file or standard input gives
/// its first line, surrounding whitespace removed; a first line over [`MAX_TOKEN_INPUT`] bytes,
/// or an empty one, is a usage error.
pub(super) fn read_token(token: Option<String>, file: Option<PathBuf>) -> Result<String, CliError> {
    match (token.as_deref(), file) {
        (Some("-"), None) => token_text(std::io::stdin().lock(), "standard input"),
        (Some(_), None) => Ok(token.unwrap_or_default()),
        (None, Some(path)) => {
            let f = std::fs::File::open(&path)
                .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
            token_text(f, &path.display().to_string())
        }
        // clap's group makes exactly one of the two present
        _ => Err(usage("give the token as TOKEN, `-` or --token-file")),
    }
}

fn token_text(source: impl std::io::Read, what: &str) -> Result<String, CliError> {
    use std::io::BufRead as _;
    // one line: a token typed on a terminal ends with Enter, not with end of input
    let mut line = Vec::new();
    std::io::BufReader::new(source.take(MAX_TOKEN_INPUT + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| usage(format!("reading the token from {what}: {e}")))?;
    if line.len() as u64 > MAX_TOKEN_INPUT {
        return Err(usage(format!(
            "the first line of {what} is longer than {MAX_TOKEN_INPUT} bytes"
        )));
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| usage(format!("the token in {what} is not UTF-8 text")))?
        .trim();
    if text.is_empty() {
        return Err(usage(format!("no token in {what}")));
    }
    Ok(text.to_owned())
}

fn refusal_code(reason: RefusalReason) -> u8 {
    match reason {
        RefusalReason::UnknownToken => exit::UNKNOWN_TOKEN,
        RefusalReason::TokenExpired => exit::TOKEN_EXPIRED,
        RefusalReason::TokenUsed => exit::TOKEN_USED,
        RefusalReason::WrongOrg => exit::WRONG_ORG,
        RefusalReason::RateLimited => exit::RATE_LIMITED,
        _ => exit::REFUSED,
    }
}

pub(super) async fn join(
    token: String,
    org: String,
    dir: DataDir,
    network: NetworkOptions,
    timeout: Duration,
    json: bool,
) -> Result<(), CliError> {
    let token = JoinToken::parse(&token).map_err(usage)?;
    let last = std::sync::Mutex::new(None::<(u32, u32)>);
    let progress = |p: &fedgw_proto::v1::Pending| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != Some((p.approvals, p.needed)) {
            eprintln!(
                "waiting for approvals: {} of {} (approved by: {})",
                p.approvals,
                p.needed,
                if p.approved_by.is_empty() {
                    "nobody yet".to_owned()
                } else {
                    p.approved_by.join(", ")
                }
            );
            *last = Some((p.approvals, p.needed));
        }
    };
    let config = join_client::join_into(token, &org, &dir, &network, timeout, &progress)
        .await
        .map_err(|e| {
            let code = match &e {
                JoinDirError::Exists(_) | JoinDirError::Name(_) => exit::USAGE,
                JoinDirError::Join(JoinError::Unreachable { .. }) => exit::UNREACHABLE,
                JoinDirError::Join(JoinError::PinMismatch(_)) => exit::PIN_MISMATCH,
                JoinDirError::Join(JoinError::Refused { reason, .. }) => refusal_code(*reason),
                JoinDirError::Join(JoinError::NotApproved { .. }) => exit::NOT_APPROVED,
                _ => exit::FAILURE,
            };
            CliError::new(code, e)
        })?;
    let gateway = format!("gw-{}.{}.{}", config.site, config.org, config.domain);
    if json {
        let v = serde_json::json!({
            "consortium": config.consortium, "domain": config.domain, "org": config.org,
            "site": config.site, "gateway": gateway, "data_dir": dir.root().display().to_string(),
        });
        outln!("{v}")?;
        return Ok(());
    }
    outln!(
        "joined consortium {} ({}) as {}; gateway {gateway}; data dir {}",
        config.consortium,
        config.domain,
        config.org,
        dir.root().display()
    )?;
    Ok(())
}
