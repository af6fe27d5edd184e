//! `fedgw backup` and `fedgw restore`: a data dir's configuration, certificates, keys and a
//! consistent store snapshot in one passphrase-encrypted file ([`crate::backup`]). While the
//! gateway runs (it holds the store's lock) the snapshot comes over its admin socket.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use fedgw_proto::v1 as pb;
use zeroize::Zeroizing;

use super::admin_conn::{Admin, connect_if_running};
use super::{AdminDirArg, CliError, exit, usage};
use crate::backup::{self, BackupError, Contents};
use crate::datadir::DataDir;
use crate::store::{MAX_SNAPSHOT_BYTES, Snapshot, Store};

/// `fedgw backup` and `fedgw restore`.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Write a backup of this data dir to one encrypted file: fedgw.toml, certificates, the CA
    /// and gateway keys, and a consistent snapshot of the store (taken over the admin socket
    /// while `fedgw run` is up). Keep it offline: it holds the org CA key.
    Backup {
        #[command(flatten)]
        dir: AdminDirArg,
        /// The archive to write (created 0600; an existing file is replaced).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Read the passphrase from the first line of this file [default: prompt on the
        /// terminal].
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a backup into a new, empty data dir; then `fedgw run --data-dir DIR`.
    Restore {
        /// The archive `fedgw backup` wrote.
        file: PathBuf,
        /// The data dir to create (must not hold a fedgw file yet).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Read the passphrase from the first line of this file [default: prompt on the
        /// terminal].
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

/// Runs a [`BackupCommand`].
pub(crate) async fn backup(command: BackupCommand) -> Result<(), CliError> {
    match command {
        BackupCommand::Backup {
            dir,
            out,
            passphrase_file,
        } => write_backup(&dir, &out, passphrase_file.as_deref()).await,
        BackupCommand::Restore {
            file,
            data_dir,
            passphrase_file,
        } => restore(&file, &DataDir::new(data_dir), passphrase_file.as_deref()),
    }
}

/// The store snapshot document from the running gateway, bounded by [`MAX_SNAPSHOT_BYTES`].
pub(super) async fn fetch_snapshot(admin: &mut Admin) -> Result<Vec<u8>, CliError> {
    let mut stream = admin_call!(admin, snapshot(pb::SnapshotRequest {}));
    let mut document = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(|s| admin.error(s))? {
        if document.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
            return Err(CliError::new(
                exit::FAILURE,
                anyhow::anyhow!(
                    "the store snapshot is larger than {} MiB, more than a backup holds",
                    MAX_SNAPSHOT_BYTES >> 20
                ),
            ));
        }
        document.extend_from_slice(&chunk.data);
    }
    Ok(document)
}

async fn write_backup(
    args: &AdminDirArg,
    out: &Path,
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    let config = crate::config::Config::load(&dir.config())
        .map_err(|e| usage(format!("{e} (is --data-dir a gateway's data dir?)")))?;
    let passphrase = passphrase(passphrase_file, true)?;
    let store: Snapshot = match connect_if_running(args).await {
        Some(mut admin) => {
            let document = fetch_snapshot(&mut admin).await?;
            serde_json::from_slice(&document)
                .context("the gateway's store snapshot does not parse")?
        }
        None => {
            let store = Store::open(&dir.store()).with_context(|| {
                format!("opening {} (no gateway is running)", dir.store().display())
            })?;
            store.snapshot().context("reading the store")?
        }
    };
    let mut files = std::collections::BTreeMap::new();
    for (name, _) in backup::FILES {
        let path = dir.root().join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(name.to_owned(), bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::new(
                    exit::FAILURE,
                    anyhow::Error::new(e).context(format!("reading {}", path.display())),
                ));
            }
        }
    }
    let contents = Contents { files, store };
    let archive = write_archive(out, &contents, &passphrase, &config)?;
    outln!(
        "wrote {} ({} bytes): {} files and the store ({} records); it holds the CA keys, keep it offline",
        out.display(),
        archive.len(),
        contents.files.len(),
        contents.store.tables.get("records").map_or(0, |t| t.len())
    )
}

fn restore(file: &Path, dir: &DataDir, passphrase_file: Option<&Path>) -> Result<(), CliError> {
    let (archive, passphrase) = open_archive(file, dir, "backup", passphrase_file)?;
    let contents =
        backup::open(&archive, passphrase.as_bytes()).map_err(|e| archive_error(file, e))?;
    dir.create_fresh()
        .with_context(|| format!("creating {}", dir.root().display()))?;
    if let Err(e) = write_restored(dir, &contents) {
        // leave no half-restored dir behind: a second attempt would refuse it
        for (name, _) in backup::FILES {
            let _ = std::fs::remove_file(dir.root().join(name));
        }
        let _ = std::fs::remove_file(dir.store());
        return Err(e);
    }
    outln!(
        "restored {} files and the store into {}; start it with `fedgw run --data-dir {}`",
        contents.files.len(),
        dir.root().display(),
        dir.root().display()
    )
}

/// Writes the archive's files (keys 0600) and store into the fresh `dir`, then reads the whole
/// store back as `fedgw run` will.
fn write_restored(dir: &DataDir, contents: &Contents) -> Result<(), CliError> {
    for (name, secret) in backup::FILES {
        let Some(bytes) = contents.files.get(name) else {
            continue;
        };
        let path = dir.root().join(name);
        let written = if secret {
            dir.write_secret(&path, bytes)
        } else {
            dir.write_public(&path, bytes)
        };
        written.with_context(|| format!("writing {}", path.display()))?;
    }
    dir.create_store_file()
        .with_context(|| format!("creating {}", dir.store().display()))?;
    let store =
        Store::open(&dir.store()).with_context(|| format!("opening {}", dir.store().display()))?;
    store
        .load_snapshot(&contents.store)
        .with_context(|| format!("writing {}", dir.store().display()))?;
    drop(store);
    // the whole store reads back, as `fedgw run` will read it
    Store::open(&dir.store()).with_context(|| format!("checking {}", dir.store().display()))?;
    Ok(())
}

/// Seals `contents` with `passphrase` (labelled with the config's org and site) and writes the
/// archive to `out` atomically, mode 0600. Returns the archive.
pub(super) fn write_archive(
    out: &Path,
    contents: &Contents,
    passphrase: &str,
    config: &crate::config::Config,
) -> Result<Vec<u8>, CliError> {
    let now = crate::store::unix(std::time::SystemTime::now());
    let archive = backup::seal(
        contents,
        passphrase.as_bytes(),
        &config.org,
        &config.site,
        now,
    )
    .map_err(|e| CliError::new(exit::FAILURE, e))?;
    crate::datadir::write_atomic(out, &archive, 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(archive)
}

/// Reads the archive `file` (a backup or a replica bundle, named by `what` in errors) for
/// unpacking into `dir`: refuses a `dir` that already holds a data dir, reads at most
/// [`backup::MAX_ARCHIVE_BYTES`] (a larger file is refused without reading it all), checks the
/// header so a damaged file fails before the passphrase prompt, then asks for the passphrase.
pub(super) fn open_archive(
    file: &Path,
    dir: &DataDir,
    what: &str,
    passphrase_file: Option<&Path>,
) -> Result<(Vec<u8>, Zeroizing<String>), CliError> {
    use std::io::Read as _;
    if let Some(existing) = dir.occupied() {
        return Err(usage(format!(
            "{} already holds {}; unpack the {what} into a new, empty directory",
            dir.root().display(),
            existing.display()
        )));
    }
    let max = backup::MAX_ARCHIVE_BYTES;
    let mut archive = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut archive))
        .with_context(|| format!("reading {}", file.display()))?;
    if archive.len() as u64 > max {
        return Err(usage(format!(
            "{} is larger than any fedgw {what} ({max} bytes)",
            file.display()
        )));
    }
    backup::header(&archive).map_err(|e| archive_error(file, e))?;
    let passphrase = passphrase(passphrase_file, false)?;
    Ok((archive, passphrase))
}

fn archive_error(file: &Path, e: BackupError) -> CliError {
    let e = match e {
        BackupError::Damaged(_, why) => BackupError::Damaged(file.display().to_string(), why),
        e => e,
    };
    CliError::new(exit::FAILURE, e)
}

/// The passphrase: the first line of `file`, or typed at the terminal (twice when `confirm`).
pub(super) fn passphrase(
    file: Option<&Path>,
    confirm: bool,
) -> Result<Zeroizing<String>, CliError> {
    let text = match file {
        Some(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("reading the passphrase file {}", path.display()))?;
            if meta.len() > 4096 {
                return Err(usage(format!(
                    "the passphrase file {} is over 4 KiB; put the passphrase alone on its first line",
                    path.display()
                )));
            }
            let all = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the passphrase file {}", path.display()))?,
            );
            Zeroizing::new(all.lines().next().unwrap_or_default().to_owned())
        }
        None if std::io::stdin().is_terminal() => {
            let first = Zeroizing::new(
                rpassword::prompt_password("backup passphrase: ")
                    .context("reading the passphrase from the terminal")?,
            );
            if confirm {
                let again = Zeroizing::new(
                    rpassword::prompt_password("again: ")
                        .context("reading the passphrase from the terminal")?,
                );
                if *again != *first {
                    return Err(usage("the two passphrases differ; run the command again"));
                }
            }
            first
        }
        None => {
            return Err(usage(
                "no terminal to ask for the passphrase; give --passphrase-file FILE",
            ));
        }
    };
    if text.is_empty() {
        return Err(usage(
            "the passphrase is empty; put it on the first line of --passphrase-file",
        ));
    }
    Ok(text)
}
