//! fedgw-proto: the `fedgw.v1` protobuf package (proto/fedgw/v1/*.proto) and its generated
//! prost messages and tonic clients and servers.
//!
//! [`domain`] holds the checked forms of wire records ([`domain::Node`]).
//!
//! Services: `Join` (ALPN `fedgw-join/1`, server-authenticated TLS), `Federation` (ALPN `h2`,
//! mutual TLS) and `Admin` (Unix socket in the data dir).

pub mod demo_keys;
pub mod domain;
pub mod enode;
pub mod rpc_url;
pub mod service;
pub mod tessera;

/// The version a `JoinRequest` carries.
pub const JOIN_PROTOCOL_VERSION: u32 = 1;

/// Largest join request accepted, in bytes (a CSR and a few endpoints).
pub const MAX_JOIN_REQUEST_BYTES: usize = 64 * 1024;
/// Largest join response accepted, in bytes (certificates plus a genesis file).
pub const MAX_JOIN_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest federation or admin message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Generated code for package `fedgw.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fedgw.v1");
}
