//! Enode ids from node keys: a geth/GoQuorum/Besu `nodekey` file holds a secp256k1 private key
//! as 64 hex digits; the enode id is the matching public key, uncompressed, without its `0x04`
//! prefix (64 bytes).

use k256::SecretKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;

/// Why a node key or an enode id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not hex, or not the expected number of digits.
    #[error("want {0} hex digits")]
    Hex(usize),
    /// The value is not a valid secp256k1 private key (zero or not below the group order).
    #[error("not a valid secp256k1 private key")]
    Scalar,
}

fn hex_bytes<const N: usize>(text: &str) -> Result<[u8; N], KeyError> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.len() != 2 * N || !t.is_ascii() {
        return Err(KeyError::Hex(2 * N));
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(t.as_bytes().chunks(2)) {
        let s = std::str::from_utf8(pair).map_err(|_| KeyError::Hex(2 * N))?;
        *o = u8::from_str_radix(s, 16).map_err(|_| KeyError::Hex(2 * N))?;
    }
    Ok(out)
}

/// The enode id of the private key in `nodekey` (64 hex digits; surrounding whitespace and a
/// `0x` prefix are allowed, as the file may end in a newline).
pub fn enode_id_from_nodekey(nodekey: &str) -> Result<[u8; 64], KeyError> {
    let mut secret = hex_bytes::<32>(nodekey)?;
    let key = SecretKey::from_slice(&secret).map_err(|_| KeyError::Scalar);
    secret.fill(0);
    let point = key?.public_key().to_encoded_point(false);
    let bytes = point.as_bytes();
    let mut id = [0u8; 64];
    // an uncompressed SEC1 point is 0x04 ‖ x (32) ‖ y (32)
    id.copy_from_slice(bytes.get(1..65).ok_or(KeyError::Scalar)?);
    Ok(id)
}

/// Parses an inline enode id (128 hex digits, optional `0x`).
pub fn parse_enode_id(text: &str) -> Result<[u8; 64], KeyError> {
    hex_bytes::<64>(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SEC 2 (secp256k1): the public key of private key 1 is the generator G, of 2 is 2G.
    const G: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                     483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";
    const G2: &str = "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5\
                      1ae168fea63dc339a3c58419466ceaeef7f632653266d0e1236431a950cfe52a";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_vectors() {
        let one = format!("{}1\n", "0".repeat(63));
        assert_eq!(hex(&enode_id_from_nodekey(&one).expect("1")), G);
        let two = format!("0x{}2", "0".repeat(63));
        assert_eq!(hex(&enode_id_from_nodekey(&two).expect("2")), G2);
        assert_eq!(hex(&parse_enode_id(&format!("0x{G}")).expect("id")), G);
    }

    #[test]
    fn bad_keys_are_errors() {
        assert_eq!(enode_id_from_nodekey(""), Err(KeyError::Hex(64)));
        assert_eq!(
            enode_id_from_nodekey(&"zz".repeat(32)),
            Err(KeyError::Hex(64))
        );
        assert_eq!(
            enode_id_from_nodekey(&"0".repeat(64)),
            Err(KeyError::Scalar)
        );
        assert_eq!(
            enode_id_from_nodekey(&"f".repeat(64)),
            Err(KeyError::Scalar),
            "above the group order"
        );
        assert_eq!(
            enode_id_from_nodekey("é".repeat(32).as_str()),
            Err(KeyError::Hex(64))
        );
        assert_eq!(parse_enode_id(&"a".repeat(127)), Err(KeyError::Hex(128)));
    }
}
