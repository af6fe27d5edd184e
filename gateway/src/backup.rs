//! The backup archive of `fedgw backup` and `fedgw restore` (docs/DESIGN.md, "Backups"): a
//! data dir's configuration, certificates, keys and a consistent store snapshot in one file,
//! encrypted with a key derived from a passphrase. Sealing and opening are pure functions over
//! bytes; the CLI reads and writes the files.
//!
//! ```text
//! "FEDGWBAK"                     8 bytes, magic
//! version                        u16 big-endian, 1
//! header length                  u32 big-endian, at most 4 KiB
//! header                         JSON: kdf "argon2id", m_kib, t, p, salt (base64, 16 bytes),
//!                                nonce (base64, 12 bytes), created_unix, org, site,
//!                                body_len, body_sha256 (hex)
//! body                           ChaCha20-Poly1305(key, nonce, payload JSON,
//!                                  associated data = magic ‖ version ‖ header length ‖ header)
//! ```
//!
//! The key is Argon2id(passphrase, salt, m_kib, t, p) → 32 bytes. The payload is
//! `{"files": {"fedgw.toml": base64, ...}, "store": <store snapshot>}`; file names are only
//! those of [`FILES`], so no archive can write outside the data dir. The body's SHA-256 in the
//! header tells a damaged archive (checksum mismatch) from a wrong passphrase (checksum fine,
//! decryption fails).

use std::collections::BTreeMap;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::store::Snapshot;

/// The archive's magic bytes.
pub const MAGIC: &[u8; 8] = b"FEDGWBAK";
/// The archive format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Largest archive accepted, in bytes: the largest store snapshot and 16 MiB for the files.
pub const MAX_ARCHIVE_BYTES: u64 = crate::store::MAX_SNAPSHOT_BYTES as u64 + (16 << 20);
/// Largest single data-dir file put into or taken from an archive, in bytes.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// The data-dir files an archive may hold, and whether each is secret (written 0600).
pub const FILES: [(&str, bool); 8] = [
    ("fedgw.toml", false),
    ("root-ca.pem", false),
    ("root-ca.key", true),
    ("org-ca.pem", false),
    ("org-ca.key", true),
    ("gateway.pem", false),
    ("gateway.key", true),
    ("genesis.json", false),
];

/// Argon2id cost written into new archives: 64 MiB, 3 passes, 1 lane (about 0.2 s).
const M_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;
/// Highest costs an archive may ask for when opened (1 GiB, 16 passes, 8 lanes), so a crafted
/// header cannot make `restore` take unbounded memory or time.
const MAX_M_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// What an archive holds once opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// Data-dir file name (one of [`FILES`]) → bytes, base64 in the payload.
    #[serde(with = "b64_map")]
    pub files: BTreeMap<String, Vec<u8>>,
    /// The store.
    pub store: Snapshot,
}

/// The archive header (cleartext, authenticated as associated data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `argon2id`.
    pub kdf: String,
    /// Argon2 memory cost in KiB.
    pub m_kib: u32,
    /// Argon2 passes.
    pub t: u32,
    /// Argon2 lanes.
    pub p: u32,
    /// Argon2 salt, base64 of 16 bytes.
    pub salt: String,
    /// ChaCha20-Poly1305 nonce, base64 of 12 bytes.
    pub nonce: String,
    /// When the archive was written, Unix seconds.
    pub created_unix: u64,
    /// The org of the backed-up gateway.
    pub org: String,
    /// Its site.
    pub site: String,
    /// Length of the body in bytes.
    pub body_len: u64,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
}

/// Why an archive could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The passphrase is empty.
    #[error("the passphrase is empty; give one with at least one character")]
    EmptyPassphrase,
    /// Not a fedgw backup, or cut short, or its header is damaged.
    #[error("{0} is not a readable fedgw backup: {1}")]
    Damaged(String, String),
    /// A backup of a format this build does not read.
    #[error(
        "the backup is format version {0}; this fedgw reads version {VERSION}: restore with the fedgw version that wrote it"
    )]
    Version(u16),
    /// The body's checksum is right but it does not decrypt.
    #[error(
        "the passphrase does not open this backup; give the passphrase used with `fedgw backup`"
    )]
    WrongPassphrase,
    /// A file name the archive may not hold.
    #[error(
        "the backup holds {0:?}, which is not a data-dir file fedgw writes; the archive is not fedgw's"
    )]
    UnexpectedFile(String),
    /// A file over [`MAX_FILE_BYTES`].
    #[error("{0} is larger than {MAX_FILE_BYTES} bytes")]
    FileTooLarge(String),
    /// The key derivation failed (parameters out of range).
    #[error("deriving the key failed: {0}")]
    Kdf(String),
}

fn damaged(what: &str) -> BackupError {
    BackupError::Damaged("the file".into(), what.to_owned())
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let params =
        argon2::Params::new(m, t, p, Some(32)).map_err(|e| BackupError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    Ok(key)
}

fn prefix(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    // the header is at most MAX_HEADER_BYTES, checked by both callers
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out
}

/// Writes `contents` as an archive encrypted under `passphrase`. `org`, `site` and `now_unix`
/// go into the header. Errors: an empty passphrase, a file not in [`FILES`] or too large.
pub fn seal(
    contents: &Contents,
    passphrase: &[u8],
    org: &str,
    site: &str,
    now_unix: u64,
) -> Result<Vec<u8>, BackupError> {
    if passphrase.is_empty() {
        return Err(BackupError::EmptyPassphrase);
    }
    check_files(&contents.files)?;
    let salt: [u8; 16] = rand::random();
    let nonce: [u8; 12] = rand::random();
    let key = derive(passphrase, &salt, M_KIB, T_COST, P_COST)?;
    let payload = Zeroizing::new(
        serde_json::to_vec(contents).expect("backup contents serialise: maps of strings"),
    );
    // the body's length is the payload's plus the 16-byte tag
    let body_len = payload.len() as u64 + 16;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header = Header {
        kdf: "argon2id".into(),
        m_kib: M_KIB,
        t: T_COST,
        p: P_COST,
        salt: b64.encode(salt),
        nonce: b64.encode(nonce),
        created_unix: now_unix,
        org: org.to_owned(),
        site: site.to_owned(),
        body_len,
        body_sha256: String::new(),
    };
    // the checksum is of the ciphertext, which depends on the associated data: encrypt with a
    // header whose checksum field is empty would not match on open, so the checksum covers the
    // body and the associated data is the header without it
    let aad_header = serde_json::to_vec(&header).expect("header serialises");
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
    let body = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &payload,
                aad: &prefix(&aad_header),
            },
        )
        .map_err(|_| BackupError::Kdf("encryption failed".into()))?;
    header.body_sha256 = hex(&sha2::Sha256::digest(&body));
    let header = serde_json::to_vec(&header).expect("header serialises");
    if header.len() > MAX_HEADER_BYTES {
        return Err(BackupError::Kdf(
            "the org and site names make the header too long".into(),
        ));
    }
    let mut out = prefix(&header);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads an archive's header without the passphrase (for messages and checks).
pub fn header(archive: &[u8]) -> Result<(Header, usize), BackupError> {
    if archive.len() < 14 || &archive[..8] != MAGIC {
        return Err(damaged("it does not start with FEDGWBAK"));
    }
    let version = u16::from_be_bytes([archive[8], archive[9]]);
    if version != VERSION {
        return Err(BackupError::Version(version));
    }
    let len = u32::from_be_bytes([archive[10], archive[11], archive[12], archive[13]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(damaged("its header is longer than 4 KiB"));
    }
    let end = 14 + len;
    let bytes = archive
        .get(14..end)
        .ok_or_else(|| damaged("it is cut short in its header"))?;
    let header: Header = serde_json::from_slice(bytes)
        .map_err(|e| damaged(&format!("its header does not parse ({e})")))?;
    Ok((header, end))
}

/// Opens an archive with `passphrase`. Errors: [`BackupError::Damaged`] (not an archive, cut
/// short, checksum mismatch), [`BackupError::Version`], [`BackupError::WrongPassphrase`],
/// [`BackupError::UnexpectedFile`] and [`BackupError::FileTooLarge`].
pub fn open(archive: &[u8], passphrase: &[u8]) -> Result<Contents, BackupError> {
    let (header, start) = self::header(archive)?;
    let body = &archive[start..];
    if body.len() as u64 != header.body_len {
        return Err(damaged(&format!(
            "its body is {} bytes, the header says {}",
            body.len(),
            header.body_len
        )));
    }
    if hex(&sha2::Sha256::digest(body)) != header.body_sha256 {
        return Err(damaged(
            "its checksum does not match (the file was changed or damaged)",
        ));
    }
    if header.kdf != "argon2id"
        || header.m_kib > MAX_M_KIB
        || header.t > MAX_T_COST
        || header.p > MAX_P_COST
    {
        return Err(damaged("its key derivation parameters are out of range"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64
        .decode(&header.salt)
        .map_err(|_| damaged("its salt is not base64"))?;
    let nonce: [u8; 12] = b64
        .decode(&header.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| damaged("its nonce is not 12 bytes of base64"))?;
    let key = derive(passphrase, &salt, header.m_kib, header.t, header.p)?;
    let aad_header = serde_json::to_vec(&Header {
        body_sha256: String::new(),
        ..header
    })
    .expect("header serialises");
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
    let payload = Zeroizing::new(
        cipher
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: body,
                    aad: &prefix(&aad_header),
                },
            )
            .map_err(|_| BackupError::WrongPassphrase)?,
    );
    let contents: Contents = serde_json::from_slice(&payload)
        .map_err(|e| damaged(&format!("its contents do not parse ({e})")))?;
    check_files(&contents.files)?;
    Ok(contents)
}

fn check_files(files: &BTreeMap<String, Vec<u8>>) -> Result<(), BackupError> {
    for (name, bytes) in files {
        if !FILES.iter().any(|(f, _)| f == name) {
            return Err(BackupError::UnexpectedFile(name.clone()));
        }
        if bytes.len() > MAX_FILE_BYTES {
            return Err(BackupError::FileTooLarge(name.clone()));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serde for `BTreeMap<String, Vec<u8>>` with base64 values.
mod b64_map {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        s.collect_map(map.iter().map(|(k, v)| (k, b64.encode(v))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                b64.decode(&v)
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{BackupError, Contents, open, seal};

    fn contents() -> Contents {
        Contents {
            files: [
                ("fedgw.toml".to_owned(), b"org = \"org1\"\n".to_vec()),
                (
                    "org-ca.key".to_owned(),
                    b"-----BEGIN PRIVATE KEY-----".to_vec(),
                ),
            ]
            .into_iter()
            .collect(),
            store: crate::store::Snapshot {
                format: crate::store::SNAPSHOT_FORMAT,
                tables: Default::default(),
            },
        }
    }

    #[test]
    fn an_archive_opens_with_its_passphrase_only() {
        let c = contents();
        let archive = seal(&c, b"correct horse", "org1", "dc1", 1_800_000_000).expect("seal");
        // the key is not in the clear
        assert!(!archive.windows(11).any(|w| w == b"BEGIN PRIVA"));
        assert_eq!(open(&archive, b"correct horse").expect("open"), c);
        assert!(matches!(
            open(&archive, b"wrong horse"),
            Err(BackupError::WrongPassphrase)
        ));
        let (header, _) = super::header(&archive).expect("header");
        assert_eq!((header.org.as_str(), header.site.as_str()), ("org1", "dc1"));
    }

    #[test]
    fn a_damaged_archive_says_so_rather_than_blaming_the_passphrase() {
        let archive = seal(&contents(), b"pw", "org1", "dc1", 1).expect("seal");
        let mut flipped = archive.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            open(&flipped, b"pw"),
            Err(BackupError::Damaged(..))
        ));
        assert!(matches!(
            open(&archive[..archive.len() - 5], b"pw"),
            Err(BackupError::Damaged(..))
        ));
        assert!(matches!(
            open(b"hello", b"pw"),
            Err(BackupError::Damaged(..))
        ));
        let mut other = archive.clone();
        other[9] = 9;
        assert!(matches!(open(&other, b"pw"), Err(BackupError::Version(9))));
        assert!(matches!(
            seal(&contents(), b"", "org1", "dc1", 1),
            Err(BackupError::EmptyPassphrase)
        ));
    }

    #[test]
    fn only_data_dir_files_go_in_or_come_out() {
        let mut c = contents();
        c.files.insert("../../etc/passwd".into(), b"x".to_vec());
        assert!(matches!(
            seal(&c, b"pw", "org1", "dc1", 1),
            Err(BackupError::UnexpectedFile(_))
        ));
    }
}
