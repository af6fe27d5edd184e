//! fedgw-certs: the consortium PKI.
//!
//! - [`pki`]: root CA, org CA issuance from a CSR (pathLen=0, one DNS name constraint),
//!   gateway and node leaves;
//! - [`token`]: join tokens and the joiner's proof of possession;
//! - [`identity`]: the org a verified peer certificate speaks for;
//! - [`ids`]: gateway and node identities (`org/site`, `org/node`), parsed and checked once;
//! - [`verify`]: rustls verifiers for federation peers (with a replaceable revocation set) and
//!   for a joiner that only knows the root's pin;
//! - [`tls`]: rustls server and client configs for the gateway port.
//!
//! No IO: callers read and write files and sockets.

pub mod envelope;
pub mod identity;
pub mod ids;
pub mod names;
pub mod pki;
pub mod tls;
pub mod token;
pub mod verify;

pub use identity::{PeerIdentity, peer_identity};
pub use pki::{CertificateAuthority, IssuedLeaf, PkiError};
pub use token::{JoinToken, TokenError};
pub use verify::{IssuedSet, PeerVerifier, PinnedRootVerifier, RevocationSet};
