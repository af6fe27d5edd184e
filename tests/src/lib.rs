//! Test harness for fedgw: run the `fedgw` binary with bounded waits, start gateway processes
//! and wait for their readiness file (`DIR/run.json`), stop them with SIGTERM.
//!
//! No sleeps stand in for readiness: every wait polls a condition with a deadline.

pub mod rpcfake;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Default bound for one CLI command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound for a gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    match wait_for("process exit", timeout, || child.try_wait().ok().flatten()) {
        Ok(status) => Ok(status),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Fails unless the command exited 0.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.code != Some(0) {
            bail!(
                "command failed ({:?}): {}{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// A `fedgw` binary, optionally run through a wrapper command (`ip netns exec NS`).
#[derive(Debug, Clone)]
pub struct Fedgw {
    bin: PathBuf,
    wrapper: Vec<std::ffi::OsString>,
}

impl Fedgw {
    /// Uses the binary at `bin` (in the gateway's tests: `env!("CARGO_BIN_EXE_fedgw")`).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            wrapper: Vec::new(),
        }
    }

    /// The same binary run as `WRAPPER... fedgw ARGS`, e.g. `["ip", "netns", "exec", "ns1"]`.
    /// The wrapper must exec the binary (not fork it), so the child's pid is the binary's and
    /// [`Gateway::kill`] reaches the gateway itself.
    pub fn wrapped<I, S>(&self, wrapper: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        Self {
            bin: self.bin.clone(),
            wrapper: wrapper.into_iter().map(Into::into).collect(),
        }
    }

    /// A command running the binary (through the wrapper, if any), without arguments yet.
    pub fn command(&self) -> Command {
        match self.wrapper.split_first() {
            None => Command::new(&self.bin),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
        }
    }

    /// Runs `fedgw ARGS` to completion within [`COMMAND_TIMEOUT`].
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<Run>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_reader = std::thread::spawn(move || read_all(stdout));
        let err_reader = std::thread::spawn(move || read_all(stderr));
        let status = wait_child(&mut child, COMMAND_TIMEOUT)?;
        Ok(Run {
            code: status.code(),
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        })
    }

    /// Starts `fedgw run --data-dir DIR` and waits for `DIR/run.json`. The gateway logs at
    /// `info` to `DIR.log`, or as `FEDGW_TEST_LOG` says (a `RUST_LOG` filter).
    pub fn start(&self, dir: &Path) -> anyhow::Result<Gateway> {
        let _ = std::fs::remove_file(dir.join("run.json"));
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = self
            .command()
            .arg("run")
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("FEDGW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let info = wait_for("run.json", READY_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!(
                    "gateway exited early ({status}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(Ok)
        });
        let info = match info {
            Ok(Ok(info)) => info,
            Ok(Err(e)) | Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Gateway {
            child: Some(child),
            dir: dir.to_owned(),
            log: log_path,
            info,
        })
    }
}

fn read_all(r: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

/// A running gateway process. Dropping it kills the process.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    /// Its data dir.
    pub dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The parsed `run.json`.
    pub info: serde_json::Value,
}

impl Gateway {
    /// The bound gateway address, `ip:port`.
    pub fn endpoint(&self) -> String {
        self.info["gateway"].as_str().unwrap_or_default().to_owned()
    }

    /// The bound metrics address, `ip:port`.
    pub fn metrics(&self) -> String {
        self.info["metrics"].as_str().unwrap_or_default().to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("running kill")?;
        wait_child(&mut child, Duration::from_secs(20))
    }

    /// Sends SIGKILL (no drain, no clean-up: a crash) and reaps the process.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill().context("SIGKILL")?;
        Ok(child.wait()?)
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fetches `http://ADDR/PATH` with a minimal HTTP/1.1 client; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A valid enode id for tests: the secp256k1 public key `n`·G (SEC 2 section 2.4.1), as the 128
/// lowercase hex digits of its uncompressed point without the `0x04` prefix. Distinct `n` give
/// distinct ids; `n` must not be 0 (the point at infinity has no such encoding).
pub fn enode_id(n: u64) -> String {
    enode_key(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// The 64 raw bytes (X and Y) of the id [`enode_id`] spells.
pub fn enode_key(n: u64) -> Vec<u8> {
    assert!(n != 0, "0·G is the point at infinity");
    key_bytes(k256::ProjectivePoint::GENERATOR * k256::Scalar::from(n))
}

/// The raw ids of `first`·G, (`first`+1)·G, ...: one point addition each, for tests that
/// register many nodes.
pub fn enode_keys(first: u64) -> impl Iterator<Item = Vec<u8>> {
    assert!(first != 0, "0·G is the point at infinity");
    let start = k256::ProjectivePoint::GENERATOR * k256::Scalar::from(first);
    std::iter::successors(Some(start), |p| Some(*p + k256::ProjectivePoint::GENERATOR))
        .map(key_bytes)
}

fn key_bytes(point: k256::ProjectivePoint) -> Vec<u8> {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    point.to_affine().to_encoded_point(false).as_bytes()[1..].to_vec()
}
