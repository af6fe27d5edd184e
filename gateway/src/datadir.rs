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

    /// The first of the files `init` or `join` write (configuration, keys, certificates, store,
    /// run files) that already exists here, if any: a directory holding one is not fresh. Other
    /// entries (a volume's `lost+found`, say) do not count.
    pub fn occupied(&self) -> Option<PathBuf> {
        [
            self.config(),
            self.root_key(),
            self.root_cert(),
            self.org_key(),
            self.org_cert(),
            self.gateway_key(),
            self.gateway_cert(),
            self.genesis(),
            self.store(),
            self.admin_socket(),
            self.run_info(),
        ]
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok())
    }

    /// Creates the directory with mode 0700 whatever the umask if it does not exist (see
    /// [`create_private_dir`]). Fails with [`std::io::ErrorKind::AlreadyExists`] if it is
    /// [`occupied`](Self::occupied).
    pub fn create_fresh(&self) -> std::io::Result<()> {
        create_private_dir(&self.root)?;
        if let Some(file) = self.occupied() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", file.display()),
            ));
        }
        Ok(())
    }

    /// Creates `store.redb` empty with mode 0600 if it does not exist yet, so that the store
    /// never exists with the umask's mode (redb creates its file 0666 less the umask).
    pub fn create_store_file(&self) -> std::io::Result<()> {
        create_private_file(&self.store())
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

/// Creates `dir` (and missing parents) if it does not exist and sets it to mode 0700 whatever
/// the umask: a umask of 000 would open it to every local user, one of 0277 would make it
/// unwritable for its owner. Parents created on the way get 0700 less the umask. A directory that
/// exists already keeps its mode (it may be `.` or a shared parent); the secrets written into it
/// are 0600 on their own.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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

/// Creates `path` empty with mode 0600 (whatever the umask) if it does not exist yet; an existing
/// file is left as it is. For files a library creates itself with the umask's mode (redb: 0666
/// less the umask) that must stay private.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
