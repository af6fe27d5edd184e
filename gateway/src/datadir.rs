//! The gateway's data directory: where each file lives and how it is written.
//!
//! ```text
//! DIR/fedgw.toml        configuration                          0644
//! DIR/root-ca.pem       consortium root certificate            0644
//! DIR/root-ca.key       consortium root key (founder only)     0600
//! DIR/org-ca.pem        this org's CA certificate               0644
//! DIR/org-ca.key        this org's CA key                       0600
//! DIR/gateway.pem       gateway leaf + org CA chain             0644
//! DIR/gateway.key       gateway leaf key                        0600
//! DIR/genesis.json      consortium genesis (optional)           0644
//! DIR/store.redb        membership and invite store             0600
//! DIR/admin.sock        admin API socket (while running)        0600
//! DIR/run.json          bound addresses (while running)         0644
//! ```
//!
//! Every file is written to a temporary name in the same directory, synced, and renamed, so a
//! crash never leaves a half-written key or config.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

macro_rules! paths {
    ($($(#[$doc:meta])* $name:ident => $file:literal;)*) => {
        impl DataDir {
            $($(#[$doc])* pub fn $name(&self) -> PathBuf { self.root.join($file) })*
        }
    };
}

paths! {
    /// `fedgw.toml`.
    config => "fedgw.toml";
    /// `root-ca.pem`.
    root_cert => "root-ca.pem";
    /// `root-ca.key` (founder only).
    root_key => "root-ca.key";
    /// `org-ca.pem`.
    org_cert => "org-ca.pem";
    /// `org-ca.key`.
    org_key => "org-ca.key";
    /// `gateway.pem`.
    gateway_cert => "gateway.pem";
    /// `gateway.key`.
    gateway_key => "gateway.key";
    /// `genesis.json`.
    genesis => "genesis.json";
    /// `store.redb`.
    store => "store.redb";
    /// `admin.sock`.
    admin_socket => "admin.sock";
    /// `run.json`.
    run_info => "run.json";
}

impl DataDir {
    /// A data dir at `root` (not created), made absolute against the current directory so that
    /// paths written to `run.json` stay valid for other processes.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory (mode 0700) if needed. Fails if it already holds a `fedgw.toml`.
    pub fn create_fresh(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        if self.config().exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already holds a fedgw.toml", self.root.display()),
            ));
        }
        Ok(())
    }

    /// Writes a public file (0644) atomically.
    pub fn write_public(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        write_atomic(path, contents, 0o644)
    }

    /// Writes a secret file (0600) atomically.
    pub fn write_secret(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        write_atomic(path, contents, 0o600)
    }
}

/// Writes `contents` to `path` via a temporary file in the same directory with `mode`, fsync,
/// and rename.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
