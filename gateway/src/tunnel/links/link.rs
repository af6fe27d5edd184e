//! One tunnel connection to a peer site ([`Link`]), QUIC or yamux over TCP+TLS, and how long
//! it may serve ([`link_age`]).

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::super::mux;
use super::super::splice::TunnelStream;

/// One tunnel connection to a peer site.
#[derive(Clone)]
pub enum Link {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A yamux session over TCP+TLS; `closed` fires when the session ends.
    Mux {
        /// Opens streams.
        mux: mux::Mux,
        /// Cancelled when the session is gone.
        closed: CancellationToken,
        /// When the certificate the peer authenticated with expires, if it could be read.
        peer_not_after: Option<SystemTime>,
        /// A consensus side link (ALPN `fedgw-consensus/1`): it carries only streams of
        /// class consensus, beside a main link to the same peer ([`super::consensus`]).
        consensus: bool,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({})", self.transport())
    }
}

impl Link {
    /// `quic` or `tcp`.
    pub fn transport(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
            Link::Mux { .. } => "tcp",
        }
    }

    /// Whether this is a consensus side link ([`super::consensus`]), not a peer's main link.
    pub fn is_consensus(&self) -> bool {
        matches!(
            self,
            Link::Mux {
                consensus: true,
                ..
            }
        )
    }

    /// When the peer's certificate, as presented in the handshake, expires.
    pub(super) fn peer_not_after(&self) -> Option<SystemTime> {
        match self {
            Link::Quic(c) => c
                .peer_identity()?
                .downcast::<Vec<CertificateDer<'static>>>()
                .ok()
                .and_then(|certs| not_after(certs.first()?)),
            Link::Mux { peer_not_after, .. } => *peer_not_after,
        }
    }

    /// Closes the link and every stream on it.
    pub(super) fn close(&self, code: u32, reason: &'static str) {
        match self {
            Link::Quic(c) => c.close(quinn::VarInt::from_u32(code), reason.as_bytes()),
            Link::Mux { closed, .. } => closed.cancel(),
        }
    }

    /// Whether the link is up: not closed by either side, lost, or past its end of life.
    pub fn is_alive(&self) -> bool {
        match self {
            Link::Quic(c) => c.close_reason().is_none(),
            Link::Mux { closed, .. } => !closed.is_cancelled(),
        }
    }

    pub(super) async fn open(&self) -> std::io::Result<TunnelStream> {
        match self {
            Link::Quic(c) => {
                let (s, r) = c.open_bi().await.map_err(std::io::Error::other)?;
                Ok(TunnelStream::Quic(s, r))
            }
            Link::Mux { mux, .. } => {
                let (r, w) = mux.open()?;
                Ok(TunnelStream::Mux(r, w))
            }
        }
    }

    pub(super) async fn closed(&self) {
        match self {
            Link::Quic(c) => {
                c.closed().await;
            }
            Link::Mux { closed, .. } => closed.cancelled().await,
        }
    }
}

/// How long a link authenticated by a certificate valid until `peer_not_after` takes new
/// streams: `max` (half the leaf lifetime, or `tunnel.max_link_ms`), or half the certificate's
/// remaining validity at `now` if that is shorter. The link is closed, with whatever streams it
/// still carries, at twice this age: never after the certificate expires, so no link outlives
/// the certificate that authenticated it (docs/DESIGN.md section 4), and a proxied connection
/// started just before the link retired still has the same time again to finish.
pub fn link_age(max: Duration, now: SystemTime, peer_not_after: Option<SystemTime>) -> Duration {
    match peer_not_after {
        Some(t) => max.min(t.duration_since(now).unwrap_or_default() / 2),
        None => max,
    }
}

/// The `notAfter` of a DER certificate; `None` if it does not parse.
pub(super) fn not_after(cert: &[u8]) -> Option<SystemTime> {
    fedgw_certs::pki::not_after(cert).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_takes_new_streams_for_the_shorter_of_its_maximum_and_half_the_peer_certificate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        // no certificate date: the configured maximum
        assert_eq!(link_age(12 * hour, now, None), 12 * hour);
        // a fresh 24 h leaf: the maximum (half the leaf lifetime) is the shorter
        assert_eq!(link_age(12 * hour, now, Some(now + 24 * hour)), 12 * hour);
        // a leaf with 10 h left: 5 h, so the link closes (at twice that) when the leaf expires
        assert_eq!(link_age(12 * hour, now, Some(now + 10 * hour)), 5 * hour);
        // an expired leaf: retired and closed at once
        assert_eq!(link_age(12 * hour, now, Some(now - hour)), Duration::ZERO);
    }

    #[test]
    fn the_peer_certificate_expiry_is_read_from_its_der() {
        let now = SystemTime::now();
        let root = fedgw_certs::pki::CertificateAuthority::new_root("acme", "acme.test", now)
            .expect("root");
        let leaf = root
            .issue_node_leaf(
                &["n1.acme.test".to_owned()],
                "acme",
                "test",
                Duration::from_secs(600),
                now,
            )
            .expect("leaf");
        let read = not_after(&leaf.chain[0]).expect("notAfter");
        let off = read
            .duration_since(leaf.not_after)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(1),
            "{read:?} vs {:?}",
            leaf.not_after
        );
        assert_eq!(not_after(b"not a certificate"), None);
    }
}
