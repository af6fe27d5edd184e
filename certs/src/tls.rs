//! rustls configurations for the gateway port.
//!
//! One TCP port carries several protocols, told apart by ALPN in the ClientHello:
//!
//! | ALPN            | server config                 | client auth | used by                |
//! |-----------------|-------------------------------|-------------|------------------------|
//! | `fedgw-join/1`  | [`join_server_config`]        | none        | `fedgw join`           |
//! | `h2`            | [`federation_server_config`]  | required    | gateway-to-gateway gRPC|
//! | `fedgw/1`       | [`tunnel_server_config`]      | required    | data-plane tunnels     |
//!
//! `fedgw/1` is also the ALPN of the QUIC tunnel endpoint (UDP, same port number).
//!
//! Every config is TLS 1.3 only, with session resumption off (no tickets, no session cache), so
//! each connection re-verifies the peer against the current revocation set.

use std::sync::{Arc, RwLock};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::verify::{PeerVerifier, PinnedRootVerifier};

/// ALPN protocol id of the join endpoint.
pub const ALPN_JOIN: &[u8] = b"fedgw-join/1";
/// ALPN protocol id of federation gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of data-plane tunnels (QUIC, and TCP+TLS fallback).
pub const ALPN_TUNNEL: &[u8] = b"fedgw/1";
/// ALPN protocol id of a TCP+TLS tunnel's consensus side link: a second yamux session to the
/// same peer that carries only streams of class consensus (the gateway's
/// `tunnel::links::consensus`). The tunnel server config offers it beside [`ALPN_TUNNEL`].
pub const ALPN_TUNNEL_CONSENSUS: &[u8] = b"fedgw-consensus/1";

/// The TLS 1.3 cipher suites fedgw offers, most preferred first (RFC 8446 §9.1 makes the
/// first one mandatory to implement). AES-128-GCM leads, as in BoringSSL and Go's crypto/tls on
/// hardware with AES instructions: it costs about a fifth less CPU per byte than AES-256-GCM
/// and both ends of a fedgw connection are fedgw, where the client's order decides. Peers
/// that offer only AES-256-GCM or ChaCha20-Poly1305 are still served.
pub const CIPHER_SUITES: [rustls::SupportedCipherSuite; 3] = [
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The process-wide crypto provider: aws-lc-rs, with [`CIPHER_SUITES`] (TLS 1.3 only).
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = CIPHER_SUITES.to_vec();
    Arc::new(p)
}

/// A certificate chain and key that can be replaced while configs using it stay live (leaf
/// renewal). Clones share the same cell.
#[derive(Clone, Debug)]
pub struct ReloadableIdentity {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl ReloadableIdentity {
    /// Builds an identity from a chain (leaf first) and its PKCS#8 key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivatePkcs8KeyDer<'_>,
        provider: &CryptoProvider,
    ) -> Result<Self, rustls::Error> {
        let ck = certified_key(chain, key, provider)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(ck))),
        })
    }

    /// Replaces the chain and key; the next handshake of every config built from this identity
    /// presents the new certificate.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivatePkcs8KeyDer<'_>,
        provider: &CryptoProvider,
    ) -> Result<(), rustls::Error> {
        let ck = certified_key(chain, key, provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// The current certified key.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivatePkcs8KeyDer<'_>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, rustls::Error> {
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))?;
    Ok(CertifiedKey::new(chain, key))
}

/// Presents a [`ReloadableIdentity`], optionally with the consortium root appended to the chain
/// (the join endpoint does, so a joiner holding only the root's pin can find the root).
#[derive(Debug)]
struct IdentityResolver {
    identity: ReloadableIdentity,
    append_root: Option<CertificateDer<'static>>,
}

impl IdentityResolver {
    fn resolve(&self) -> Arc<CertifiedKey> {
        let ck = self.identity.current();
        match &self.append_root {
            None => ck,
            Some(root) => {
                let mut chain = ck.cert.clone();
                chain.push(root.clone());
                Arc::new(CertifiedKey::new(chain, ck.key.clone()))
            }
        }
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(IdentityResolver::resolve(self))
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(IdentityResolver::resolve(self))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn server_builder(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider).with_protocol_versions(&[&rustls::version::TLS13])
}

fn no_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// The federation server config: client certificate required and checked by `verifier`, ALPN
/// `h2`, no resumption.
pub fn federation_server_config(
    identity: &ReloadableIdentity,
    verifier: Arc<PeerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = server_builder(provider)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(IdentityResolver {
            identity: identity.clone(),
            append_root: None,
        }));
    no_resumption(&mut config);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The join server config: no client authentication, the chain sent with the root appended,
/// ALPN `fedgw-join/1`, no resumption.
pub fn join_server_config(
    identity: &ReloadableIdentity,
    root: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = server_builder(provider)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(IdentityResolver {
            identity: identity.clone(),
            append_root: Some(root),
        }));
    no_resumption(&mut config);
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(config)
}

/// The federation client config: presents `identity`, verifies the server with `verifier`,
/// ALPN `h2`, no resumption.
pub fn federation_client_config(
    identity: &ReloadableIdentity,
    verifier: Arc<PeerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(IdentityResolver {
            identity: identity.clone(),
            append_root: None,
        }));
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The joiner's client config: no client certificate, the server verified against the pinned
/// root by `verifier`, ALPN `fedgw-join/1`, no resumption.
pub fn join_client_config(
    verifier: Arc<PinnedRootVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    Ok(config)
}

/// The tunnel server config: as [`federation_server_config`] (client certificate required),
/// with ALPN `fedgw/1` and `fedgw-consensus/1`. Used by the TCP fallback listener and,
/// wrapped by quinn, the QUIC endpoint.
pub fn tunnel_server_config(
    identity: &ReloadableIdentity,
    verifier: Arc<PeerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = federation_server_config(identity, verifier, provider)?;
    config.alpn_protocols = vec![ALPN_TUNNEL.to_vec(), ALPN_TUNNEL_CONSENSUS.to_vec()];
    Ok(config)
}

/// The tunnel client config: as [`federation_client_config`], with ALPN `fedgw/1`.
pub fn tunnel_client_config(
    identity: &ReloadableIdentity,
    verifier: Arc<PeerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = federation_client_config(identity, verifier, provider)?;
    config.alpn_protocols = vec![ALPN_TUNNEL.to_vec()];
    Ok(config)
}
