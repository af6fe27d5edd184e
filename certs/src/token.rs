//! Join tokens and the proof of possession a joiner sends (docs/DESIGN.md section 5).
//!
//! Text form, printed by `fedgw invite` and pasted into `fedgw join`:
//!
//! ```text
//! fedgw1.<token-id>.<secret>@<host:port>#sha256:<pin>
//! ```
//!
//! - `token-id`: 16 lowercase hex digits (8 random bytes); public, names the invite;
//! - `secret`: 32 random bytes, base64url without padding (43 characters);
//! - `host:port`: where the inviting gateway listens (a DNS name, IPv4, or `[IPv6]`);
//! - `pin`: SHA-256 of the consortium root's SubjectPublicKeyInfo, base64url without padding.
//!
//! The inviter stores only [`verifier_key`] of the secret, a one-way HMAC derivation: enough to
//! check a proof, not enough to rebuild the token. The joiner proves possession with
//! [`join_proof`], an HMAC-SHA256 over every field of its request and over a value exported from
//! its TLS session, so a proof cannot be replayed on another connection.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The version prefix of the token text.
pub const TOKEN_PREFIX: &str = "fedgw1.";
/// Maximum accepted token text length, in bytes.
pub const MAX_TOKEN_LEN: usize = 512;
/// The TLS exporter label (RFC 8446 section 7.5) binding a join proof to its connection.
pub const JOIN_EXPORTER_LABEL: &[u8] = b"EXPORTER-fedgw-join-v1";
const VERIFIER_KEY_INFO: &[u8] = b"fedgw join verifier key v1";
const PROOF_DOMAIN: &[u8] = b"fedgw join proof v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a token text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text is longer than [`MAX_TOKEN_LEN`].
    #[error("token is too long")]
    TooLong,
    /// The text does not start with `fedgw1.`.
    #[error("not a fedgw join token (expected it to start with \"fedgw1.\")")]
    Prefix,
    /// A separator (`.`, `@`, `#sha256:`) is missing.
    #[error("malformed token: missing {0:?}")]
    Missing(&'static str),
    /// The token id is not 16 lowercase hex digits.
    #[error("malformed token id")]
    TokenId,
    /// The secret is not 32 bytes of unpadded base64url.
    #[error("malformed token secret")]
    Secret,
    /// The endpoint is not `host:port` with a valid host and a non-zero port.
    #[error("malformed token endpoint")]
    Endpoint,
    /// The pin is not 32 bytes of unpadded base64url.
    #[error("malformed root pin")]
    Pin,
}

/// A token id as a fixed-size value: the 8 bytes behind its 16 lowercase hex digits. Tables
/// keyed by token id (the join rate limiter) hold these, so an entry's size never depends on
/// what a caller sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; 8]);

impl TokenId {
    /// Length of a token id's text form.
    pub const TEXT_LEN: usize = 16;

    /// Parses the text form: exactly 16 lowercase hex digits, nothing else (`None` otherwise,
    /// whatever the length).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != Self::TEXT_LEN {
            return None;
        }
        let mut out = [0u8; 8];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *byte = (lower_hex(pair[0])? << 4) | lower_hex(pair[1])?;
        }
        Some(Self(out))
    }
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The public id of the invite (16 lowercase hex digits, see [`TokenId`]).
    pub id: String,
    secret: Zeroizing<[u8; 32]>,
    /// `host:port` of the inviting gateway.
    pub endpoint: String,
    /// SHA-256 of the consortium root's SubjectPublicKeyInfo.
    pub root_pin: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Creates a token with a fresh random id and secret.
    pub fn generate(endpoint: &str, root_pin: [u8; 32]) -> Result<Self, TokenError> {
        validate_endpoint(endpoint)?;
        let id_bytes: [u8; 8] = rand::random();
        let id = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            id,
            secret: Zeroizing::new(rand::random()),
            endpoint: endpoint.to_owned(),
            root_pin,
        })
    }

    /// Parses the text form. Leading and trailing whitespace is ignored; everything else must
    /// match exactly.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        let (id, rest) = rest.split_once('.').ok_or(TokenError::Missing("."))?;
        let (secret, rest) = rest.split_once('@').ok_or(TokenError::Missing("@"))?;
        let (endpoint, pin) = rest
            .split_once("#sha256:")
            .ok_or(TokenError::Missing("#sha256:"))?;
        if TokenId::parse(id).is_none() {
            return Err(TokenError::TokenId);
        }
        let secret = decode_32(secret).ok_or(TokenError::Secret)?;
        validate_endpoint(endpoint)?;
        let root_pin = decode_32(pin).ok_or(TokenError::Pin)?;
        Ok(Self {
            id: id.to_owned(),
            secret: Zeroizing::new(secret),
            endpoint: endpoint.to_owned(),
            root_pin,
        })
    }

    /// The text form. It contains the secret: print it for the operator, never log it.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}.{}@{}#sha256:{}",
            self.id,
            URL_SAFE_NO_PAD.encode(*self.secret),
            self.endpoint,
            URL_SAFE_NO_PAD.encode(self.root_pin)
        ))
    }

    /// The verifier key the inviter stores for this token (see [`verifier_key`]).
    pub fn verifier_key(&self) -> [u8; 32] {
        verifier_key(&self.secret)
    }
}

/// Encodes a root pin as it appears in tokens: base64url without padding.
pub fn encode_pin(pin: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(pin)
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 43 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    bytes.try_into().ok()
}

/// Checks `host:port`: port 1..=65535; host an IPv4 address, a bracketed IPv6 address, or a DNS
/// name of LDH labels (either case).
pub fn validate_endpoint(endpoint: &str) -> Result<(), TokenError> {
    let (host, port) = endpoint.rsplit_once(':').ok_or(TokenError::Endpoint)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('0') => {}
        _ => return Err(TokenError::Endpoint),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| TokenError::Endpoint);
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(TokenError::Endpoint)
    }
}

/// The key an inviter stores for a token: HMAC-SHA256 keyed by the secret over a fixed label.
pub fn verifier_key(secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(VERIFIER_KEY_INFO);
    mac.finalize().into_bytes().into()
}

/// The fields of a join request that its proof covers.
#[derive(Debug, Clone, Copy)]
pub struct JoinTranscript<'a> {
    /// Invite id from the token.
    pub token_id: &'a str,
    /// The org name the joiner asks for.
    pub org: &'a str,
    /// The joiner's site label.
    pub site: &'a str,
    /// The org CA CSR, DER.
    pub csr_der: &'a [u8],
    /// The joiner's advertised gateway endpoints.
    pub advertise: &'a [String],
    /// The Fabric MSP ID asked for; empty: none (then not in the MAC, as before it existed).
    pub fabric_msp_id: &'a str,
    /// 32 bytes exported from the TLS session with [`JOIN_EXPORTER_LABEL`].
    pub channel_binding: &'a [u8],
}

fn transcript_mac(verifier_key: &[u8; 32], t: &JoinTranscript<'_>) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(verifier_key).expect("HMAC accepts any key length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(PROOF_DOMAIN);
    field(t.token_id.as_bytes());
    field(t.org.as_bytes());
    field(t.site.as_bytes());
    field(t.csr_der);
    field(&(t.advertise.len() as u64).to_be_bytes());
    for a in t.advertise {
        field(a.as_bytes());
    }
    if !t.fabric_msp_id.is_empty() {
        field(b"fabric_msp_id");
        field(t.fabric_msp_id.as_bytes());
    }
    field(t.channel_binding);
    mac
}

/// Computes the proof of possession a joiner sends: HMAC-SHA256 with the token's verifier key
/// over the length-prefixed transcript fields.
pub fn join_proof(token: &JoinToken, t: &JoinTranscript<'_>) -> [u8; 32] {
    transcript_mac(&token.verifier_key(), t)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time against the stored verifier key.
pub fn verify_join_proof(verifier_key: &[u8; 32], t: &JoinTranscript<'_>, proof: &[u8]) -> bool {
    transcript_mac(verifier_key, t).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::generate("gw.example.com:7443", [7; 32]).expect("valid endpoint")
    }

    #[test]
    fn token_ids_are_sixteen_lowercase_hex_digits_and_nothing_else() {
        let t = token();
        assert!(TokenId::parse(&t.id).is_some(), "{}", t.id);
        assert_eq!(
            TokenId::parse("00ff10a0b0c0d0e9"),
            Some(TokenId([0x00, 0xff, 0x10, 0xa0, 0xb0, 0xc0, 0xd0, 0xe9]))
        );
        let long = "a".repeat(60_000);
        for bad in [
            "",
            "00ff10a0b0c0d0e",
            "00ff10a0b0c0d0e90",
            "00FF10A0B0C0D0E9",
            "00ff10a0b0c0d0eg",
            "00ff10a0b0c0d0\u{e9}",
            long.as_str(),
        ] {
            assert_eq!(TokenId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        let t = token();
        let text = t.to_text();
        let back = JoinToken::parse(&text).expect("parses");
        assert_eq!(back, t);
        assert_eq!(back.verifier_key(), t.verifier_key());
        assert!(!format!("{t:?}").contains(&URL_SAFE_NO_PAD.encode(*t.secret)));
    }

    #[test]
    fn endpoints() {
        for ok in [
            "1.2.3.4:7443",
            "[::1]:1",
            "gw-a.org1.acme.example:65535",
            "host:7443",
        ] {
            assert_eq!(validate_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "1.2.3.4",
            ":7443",
            "h:0",
            "h:65536",
            "h:07443",
            "[::1:7443",
            "a b:1",
            "-a:1",
            "h:x",
        ] {
            assert_eq!(validate_endpoint(bad), Err(TokenError::Endpoint), "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_are_typed_errors() {
        let good = token().to_text().to_string();
        let (head, tail) = good.split_once('@').expect("has @");
        let cases: Vec<(String, TokenError)> = vec![
            ("x".repeat(600), TokenError::TooLong),
            ("fedgw2.".to_owned() + &good[7..], TokenError::Prefix),
            (good.replace('@', "!"), TokenError::Missing("@")),
            (
                good.replace("#sha256:", "#md5:"),
                TokenError::Missing("#sha256:"),
            ),
            (
                good.replacen(&good[7..23], "ABCDEFABCDEFABCD", 1),
                TokenError::TokenId,
            ),
            (format!("{}x@{tail}", head), TokenError::Secret),
            (
                format!("{head}@gw:0#sha256:{}", &good[good.len() - 43..]),
                TokenError::Endpoint,
            ),
            (format!("{good}A"), TokenError::Pin),
            ("fedgw1.abc".to_owned(), TokenError::Missing(".")),
        ];
        for (text, want) in cases {
            assert_eq!(JoinToken::parse(&text).map(|_| ()), Err(want), "{text}");
        }
    }

    #[test]
    fn proof_binds_every_field() {
        let tok = token();
        let adv = vec!["10.0.0.1:7443".to_owned()];
        let t = JoinTranscript {
            token_id: &tok.id,
            org: "org2",
            site: "dc1",
            csr_der: b"csr",
            advertise: &adv,
            fabric_msp_id: "",
            channel_binding: &[1; 32],
        };
        let proof = join_proof(&tok, &t);
        let key = tok.verifier_key();
        assert!(verify_join_proof(&key, &t, &proof));
        let other_adv = vec!["10.0.0.2:7443".to_owned()];
        let variants = [
            JoinTranscript { org: "org3", ..t },
            JoinTranscript { site: "dc2", ..t },
            JoinTranscript {
                csr_der: b"csr2",
                ..t
            },
            JoinTranscript {
                advertise: &other_adv,
                ..t
            },
            JoinTranscript {
                channel_binding: &[2; 32],
                ..t
            },
            JoinTranscript {
                token_id: "0000000000000000",
                ..t
            },
            JoinTranscript {
                fabric_msp_id: "Org2MSP",
                ..t
            },
        ];
        for v in &variants {
            assert!(!verify_join_proof(&key, v, &proof), "{v:?}");
        }
        assert!(!verify_join_proof(&key, &t, &proof[..31]));
        assert!(!verify_join_proof(&token().verifier_key(), &t, &proof));
    }
}
