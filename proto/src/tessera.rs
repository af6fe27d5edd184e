//! The parts of a Tessera JSON config the gateway needs: the P2P address, the peers and the
//! public keys.
//!
//! Shape read (Tessera ≥ 0.9 `serverConfigs` style, as in the qubernetes `tessera-config-9.0.json`
//! and the quorum-dev-quickstart `tessera-config-template.json`); every other field is ignored:
//!
//! ```text
//! {
//!   "serverConfigs": [ { "app": "P2P", "enabled": true, "serverAddress": "http://host:9001" }, … ],
//!   "peer": [ { "url": "http://other:9001" }, … ],
//!   "keys": { "keyData": [ { "publicKey": "<base64 of 32 bytes>", … }, … ] }
//! }
//! ```
//!
//! Values are taken as text: placeholders such as `%THIS_SERVICE_HOST%` or `${HOSTNAME}`, which
//! deployment scripts substitute at start, are kept for the caller to judge.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// Length of a Tessera public key in its text form: 32 bytes as padded standard base64.
const KEY_TEXT_LEN: usize = 44;

/// A Tessera (NaCl box, Curve25519) public key, 32 bytes.
///
/// Text form: standard base64 with padding, 44 characters (the content of Tessera's `tm.pub`).
/// [`FromStr`] accepts only the canonical encoding, so [`Display`](fmt::Display) gives back the
/// same text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TesseraKey([u8; 32]);

impl TesseraKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why a Tessera public key text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TesseraKeyError {
    /// The text is not 44 characters of canonical standard base64 with padding.
    #[error("tessera key is not padded standard base64 of 44 characters")]
    Encoding,
    /// The text decodes to a length other than 32 bytes.
    #[error("tessera key is not 32 bytes")]
    Length,
}

impl FromStr for TesseraKey {
    type Err = TesseraKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != KEY_TEXT_LEN {
            return Err(TesseraKeyError::Encoding);
        }
        let bytes = STANDARD.decode(s).map_err(|_| TesseraKeyError::Encoding)?;
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| TesseraKeyError::Length)
    }
}

impl fmt::Display for TesseraKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for TesseraKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TesseraKey({self})")
    }
}

/// What the gateway reads from a Tessera config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TesseraConfig {
    /// `serverAddress` of the enabled `serverConfigs` entry whose `app` is `P2P`, as written
    /// (e.g. `http://%THIS_SERVICE_HOST%:9001`); `None` when there is none.
    pub p2p_url: Option<String>,
    /// `peer[].url`, in file order, as written.
    pub peers: Vec<String>,
    /// `keys.keyData[].publicKey`, in file order; entries that give key paths instead are skipped.
    pub public_keys: Vec<TesseraKey>,
}

/// Why a Tessera config was refused.
#[derive(Debug, thiserror::Error)]
pub enum TesseraError {
    /// The text is not JSON.
    #[error("tessera config is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// The top-level JSON value is not an object.
    #[error("tessera config is not a json object")]
    NotAnObject,
    /// A field the gateway reads has the wrong JSON type (the name is its path, e.g. `peer`).
    #[error("tessera config field {0} has the wrong type")]
    WrongType(&'static str),
    /// More than one enabled `serverConfigs` entry has `app` `P2P`.
    #[error("tessera config has more than one P2P server")]
    DuplicateP2p,
    /// A `peer` entry has no `url` string.
    #[error("tessera config peer {index} has no url")]
    BadPeer {
        /// Zero-based position in `peer`.
        index: usize,
    },
    /// A `keys.keyData` entry has a `publicKey` that is not a valid key.
    #[error("tessera config key {index} has an invalid publicKey")]
    BadKey {
        /// Zero-based position in `keys.keyData`.
        index: usize,
        /// What is wrong with the key.
        #[source]
        source: TesseraKeyError,
    },
}

/// Parses a Tessera JSON config (see the module docs for the fields read). Missing sections give
/// `None` or empty lists; a section that is present must have the expected type.
pub fn parse_tessera_config(json: &str) -> Result<TesseraConfig, TesseraError> {
    let value: Value = serde_json::from_str(json).map_err(TesseraError::InvalidJson)?;
    let root = value.as_object().ok_or(TesseraError::NotAnObject)?;

    let mut p2p_url = None;
    for server in array_field(root, "serverConfigs", "serverConfigs")? {
        let server = server
            .as_object()
            .ok_or(TesseraError::WrongType("serverConfigs[]"))?;
        let app = string_field(server, "app", "serverConfigs[].app")?;
        let enabled = match server.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(TesseraError::WrongType("serverConfigs[].enabled")),
        };
        if app != Some("P2P") || !enabled {
            continue;
        }
        if p2p_url.is_some() {
            return Err(TesseraError::DuplicateP2p);
        }
        let address = string_field(server, "serverAddress", "serverConfigs[].serverAddress")?;
        p2p_url = address.map(str::to_owned);
    }

    let peers = array_field(root, "peer", "peer")?
        .iter()
        .enumerate()
        .map(|(index, peer)| {
            peer.get("url")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(TesseraError::BadPeer { index })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut public_keys = Vec::new();
    let key_data = match root.get("keys") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Object(keys)) => array_field(keys, "keyData", "keys.keyData")?,
        Some(_) => return Err(TesseraError::WrongType("keys")),
    };
    for (index, entry) in key_data.iter().enumerate() {
        let entry = entry
            .as_object()
            .ok_or(TesseraError::WrongType("keys.keyData[]"))?;
        if let Some(text) = string_field(entry, "publicKey", "keys.keyData[].publicKey")? {
            let key = text
                .parse()
                .map_err(|source| TesseraError::BadKey { index, source })?;
            public_keys.push(key);
        }
    }

    Ok(TesseraConfig {
        p2p_url,
        peers,
        public_keys,
    })
}

/// `obj[name]` as an array; absent or `null` reads as empty.
fn array_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &'static str,
) -> Result<&'a [Value], TesseraError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(TesseraError::WrongType(path)),
    }
}

/// `obj[name]` as a string; absent or `null` reads as `None`.
fn string_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &'static str,
) -> Result<Option<&'a str>, TesseraError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TesseraError::WrongType(path)),
    }
}

#[cfg(test)]
mod tests;
