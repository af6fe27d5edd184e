//! A node's Ethereum address, the identity QBFT and IBFT validator sets are made of.
//!
//! Derivation (Ethereum yellow paper, appendix F, `A(pr)`; geth `crypto.PubkeyToAddress`): the
//! last 20 bytes of Keccak-256 (the original Keccak padding, not FIPS 202 SHA3-256) over the
//! 64-byte uncompressed secp256k1 public key without its `0x04` prefix, which is exactly the
//! enode id. GoQuorum's `istanbul_getValidators` and Besu's `qbft_getValidatorsByBlockNumber`
//! list these addresses as `0x` and 40 hex digits.

use std::fmt;
use std::str::FromStr;

use sha3::{Digest, Keccak256};

use super::EnodeId;

/// A 20-byte Ethereum address. Text form: `0x` and 40 hex digits; [`FromStr`] reads either case
/// (EIP-55 checksums are not checked), [`Display`](fmt::Display) writes lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 20]);

/// Why a text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an address is \"0x\" and 40 hex digits")]
pub struct AddressError;

impl Address {
    /// Wraps 20 raw bytes.
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl EnodeId {
    /// The node's address: the last 20 bytes of Keccak-256 of the 64-byte public key.
    pub fn address(&self) -> Address {
        let hash = Keccak256::digest(self.as_bytes());
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        Address(out)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(AddressError)?;
        if digits.len() != 40 {
            return Err(AddressError);
        }
        let mut out = [0u8; 20];
        for (b, pair) in out.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (super::hex_value(pair[0]), super::hex_value(pair[1]))
            else {
                return Err(AddressError);
            };
            *b = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex: &str) -> EnodeId {
        hex.parse().expect("a point on the curve")
    }

    /// Private key 1: the public key is the curve's generator G (SEC 2 section 2.4.1); its
    /// address 0x7e5f4552091a69125d5dfcb7b8c2659029395bdf is the widely published one.
    #[test]
    fn generator_point_gives_the_address_of_private_key_one() {
        let g = id(concat!(
            "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
            "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
        ));
        assert_eq!(
            g.address().to_string(),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
    }

    /// Consensys/quorum-dev-quickstart @ b7a3c642 (both files, byte for byte): the QBFT genesis lists
    /// its 4 validators' addresses in `extraData` (RLP: 32 vanity bytes, then the address list);
    /// they are the addresses of the first 4 nodes of the quickstart's `static-nodes.json`.
    #[test]
    fn quickstart_validators_are_the_addresses_of_its_first_four_nodes() {
        let nodes = crate::enode::parse_static_nodes(include_str!(
            "../../data/goquorum-static-nodes.raft.json"
        ))
        .expect("the quickstart static nodes parse");
        let genesis: serde_json::Value =
            serde_json::from_str(include_str!("../../data/goquorum-genesis.qbft.json"))
                .expect("the genesis is JSON");
        let extra = genesis["extraData"].as_str().expect("extraData");
        // f87a (list) a0 + 32 vanity bytes, f854 (list of 4 × (94 + 20 bytes))
        let list = &extra[2 + 4 + 2 + 64 + 4..];
        let from_genesis: Vec<String> = (0..4)
            .map(|i| format!("0x{}", &list[i * 42 + 2..i * 42 + 42]))
            .collect();
        let derived: Vec<String> = nodes[..4]
            .iter()
            .map(|u| u.id.address().to_string())
            .collect();
        assert_eq!(derived, from_genesis);
        assert_eq!(derived[0], "0x93917cadbace5dfce132b991732c6cda9bcc5b8a");
    }

    #[test]
    fn text_form_round_trips_and_refuses_bad_shapes() {
        let a: Address = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
            .parse()
            .expect("mixed case reads");
        assert_eq!(a.to_string(), "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf");
        for bad in [
            "",
            "0x",
            "7e5f4552091a69125d5dfcb7b8c2659029395bdf",
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bd",
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdfaa",
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdg",
        ] {
            assert_eq!(bad.parse::<Address>(), Err(AddressError), "{bad:?}");
        }
        let json: Vec<Address> =
            serde_json::from_str(r#"["0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"]"#)
                .expect("a JSON list of addresses");
        assert_eq!(json, vec![a]);
    }
}
