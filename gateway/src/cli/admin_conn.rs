//! The CLI's connection to a running gateway's admin socket: [`connect`], and the error a
//! failed call turns into (a time-out names the socket and the limit).

use std::path::PathBuf;
use std::time::Duration;

use fedgw_proto::v1 as pb;
use pb::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{AdminDirArg, CliError, exit, usage};
use crate::datadir::DataDir;

/// A connection to a running gateway's admin socket, every call on it bounded by `timeout`.
pub(super) struct Admin {
    /// The admin API client.
    pub(super) client: AdminClient<Channel>,
    socket: PathBuf,
    timeout: Duration,
}

/// Connects to the admin socket of the gateway in `args.data_dir`; calls time out after
/// `args.admin_timeout`.
pub(super) async fn connect(args: &AdminDirArg) -> Result<Admin, CliError> {
    let socket = DataDir::new(args.data_dir.clone()).admin_socket();
    let timeout = args.admin_timeout;
    match crate::admin::connect_cli(&socket, timeout).await {
        Ok(client) => Ok(Admin {
            client,
            socket,
            timeout,
        }),
        Err(e) => Err(CliError::new(
            exit::FAILURE,
            anyhow::anyhow!(
                "cannot reach the gateway's admin socket {} (is `fedgw run` up?): {e}",
                socket.display()
            ),
        )),
    }
}

/// [`connect`] when a gateway is running in `args.data_dir` (its admin socket exists and
/// accepts), `None` otherwise.
pub(super) async fn connect_if_running(args: &AdminDirArg) -> Option<Admin> {
    let socket = DataDir::new(args.data_dir.clone()).admin_socket();
    if !socket.exists() {
        return None;
    }
    connect(args).await.ok()
}

impl Admin {
    /// The CLI error for a failed call: a call that timed out names the socket and the
    /// timeout; a refusal of the request is a usage error.
    pub(super) fn error(&self, s: tonic::Status) -> CliError {
        if timed_out(&s) {
            return CliError::new(
                exit::FAILURE,
                anyhow::anyhow!(
                    "the gateway did not answer on its admin socket {} within {} \
                     (--admin-timeout, FEDGW_ADMIN_TIMEOUT)",
                    self.socket.display(),
                    humantime::format_duration(self.timeout)
                ),
            );
        }
        status_err(s)
    }
}

/// Whether a call failed because its timeout expired: tonic's timeout layer answers
/// `Cancelled` ("Timeout expired"), a deadline `DeadlineExceeded`.
pub(super) fn timed_out(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}

fn status_err(s: tonic::Status) -> CliError {
    match s.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::AlreadyExists
        | tonic::Code::NotFound
        | tonic::Code::FailedPrecondition => usage(s.message()),
        _ => CliError::new(exit::FAILURE, anyhow::anyhow!("{}", s.message())),
    }
}
