//! Well-known demo identities that must never identify a real consortium member.
//!
//! The set is the qubernetes "7nodes" example (jpmorganchase/qubernetes @ f266e62b, files
//! `7nodes/keyN/enode` and `7nodes/keyN/tm.pub`, N = 1..=7): seven node ids and seven Tessera
//! public keys whose private keys are published in the same repository. Deployments have been
//! seen reusing them, so the gateway refuses them. The values are embedded from
//! `proto/data/qubernetes-7nodes-identities.tsv` (a byte-for-byte copy of the shared sample; see
//! its header lines), whose rows are `node-name<TAB>enode-id<TAB>tessera-public-key` and whose
//! `#` lines are comments.

use std::sync::OnceLock;

use crate::enode::EnodeId;
use crate::tessera::TesseraKey;

const SEVEN_NODES_TSV: &str = include_str!("../data/qubernetes-7nodes-identities.tsv");

struct DemoSet {
    enodes: Vec<EnodeId>,
    tessera_keys: Vec<TesseraKey>,
}

fn demo_set() -> &'static DemoSet {
    static SET: OnceLock<DemoSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set = DemoSet {
            enodes: Vec::new(),
            tessera_keys: Vec::new(),
        };
        for line in SEVEN_NODES_TSV.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            // The table is compiled in and every row is checked by the tests below, so a bad
            // row here is a build defect, not bad input.
            let mut cols = line.split('\t');
            let (Some(_name), Some(id), Some(key)) = (cols.next(), cols.next(), cols.next()) else {
                panic!("embedded 7nodes table row without three columns: {line:?}");
            };
            set.enodes
                .push(id.parse().expect("embedded 7nodes enode id is valid"));
            set.tessera_keys
                .push(key.parse().expect("embedded 7nodes tessera key is valid"));
        }
        set
    })
}

/// Whether `id` is one of the seven public qubernetes 7nodes node ids.
pub fn is_demo_enode(id: &EnodeId) -> bool {
    demo_set().enodes.contains(id)
}

/// Whether `key` is one of the seven public qubernetes 7nodes Tessera public keys.
pub fn is_demo_tessera_key(key: &TesseraKey) -> bool {
    demo_set().tessera_keys.contains(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids in the order of the table (quorum-node1..7), written independently of the parser.
    const IDS: [&str; 7] = [
        "ac6b1096ca56b9f6d004b779ae3728bf83f8e22453404cc3cef16a3d9b96608bc67c4b30db88e0a5a6c6390213f7acbe1153ff6d23ce57380104288ae19373ef",
        "0ba6b9f606a43a95edc6247cdb1c1e105145817be7bcafd6b2c0ba15d58145f0dc1a194f70ba73cd6f4cdd6864edc7687f311254c7555cc32e4d45aeb1b80416",
        "579f786d4e2830bbcc02815a27e8a9bacccc9605df4dc6f20bcc1a6eb391e7225fff7cb83e5b4ecd1f3a94d8b733803f2f66b7e871961e7b029e22c155c3a778",
        "3d9ca5956b38557aba991e31cf510d4df641dce9cc26bfeb7de082f0c07abb6ede3a58410c8f249dabeecee4ad3979929ac4c7c496ad20b8cfdd061b7401b4f5",
        "3701f007bfa4cb26512d7df18e6bbd202e8484a6e11d387af6e482b525fa25542d46ff9c99db87bd419b980c24a086117a397f6d8f88e74351b41693880ea0cb",
        "eacaa74c4b0e7a9e12d2fe5fee6595eda841d6d992c35dbbcc50fcee4aa86dfbbdeff7dc7e72c2305d5a62257f82737a8cffc80474c15c611c037f52db1a3a7b",
        "239c1f044a2b03b6c4713109af036b775c5418fe4ca63b04b1ce00124af00ddab7cc088fc46020cdc783b6207efe624551be4c06a994993d8d70f684688fb7cf",
    ];
    const KEYS: [&str; 7] = [
        "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bo=",
        "QfeDAys9MPDs2XHExtc84jKGHxZg/aj52DTh0vtA3Xc=",
        "1iTZde/ndBHvzhcl7V68x44Vx7pl8nwx9LqnM/AfJUg=",
        "oNspPPgszVUFw0qmGFfWwh1uxVUXgvBxleXORHj07g8=",
        "R56gy4dn24YOjwyesTczYa8m5xhP6hF2uTMCju/1xkY=",
        "UfNSeSGySeKg11DVNEnqrUtxYRVor4+CvluI8tVv62Y=",
        "ROAZBWtSacxXQrOe3FGAqJDyJjFePR5ce4TSIzmJ0Bc=",
    ];

    fn random_u64() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u8)
    }

    #[test]
    fn table_has_the_seven_identities_in_order() {
        let set = demo_set();
        let ids: Vec<String> = set.enodes.iter().map(ToString::to_string).collect();
        let keys: Vec<String> = set.tessera_keys.iter().map(ToString::to_string).collect();
        assert_eq!(ids, IDS);
        assert_eq!(keys, KEYS);
    }

    #[test]
    fn every_7nodes_identity_is_detected() {
        for id in IDS {
            let id: EnodeId = id.parse().expect("valid id");
            assert!(is_demo_enode(&id), "{id}");
        }
        for key in KEYS {
            let key: TesseraKey = key.parse().expect("valid key");
            assert!(is_demo_tessera_key(&key), "{key}");
        }
    }

    #[test]
    fn other_identities_are_not_demo() {
        // The quorum-dev-quickstart ids are public too, but not in the refused set.
        let quickstart: EnodeId = "8208a3f344695d44e9cf2c023683cbea7b9343e2f70a5e804bd2c93858e945f8f91439eef96a4ab6c47ff06637d6fbe6472f96de1655a1bee57ea896654f3a22"
            .parse()
            .expect("valid id");
        assert!(!is_demo_enode(&quickstart));

        // Random ids and keys (std's randomly keyed hasher as the source, no rand dependency),
        // then one bit flipped in a demo id and key.
        for _ in 0..100 {
            let mut id = [0u8; 64];
            id.chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&random_u64().to_le_bytes()));
            assert!(!is_demo_enode(&EnodeId::from_bytes(id)));
            let mut key = [0u8; 32];
            key.chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&random_u64().to_le_bytes()));
            assert!(!is_demo_tessera_key(&TesseraKey::from_bytes(key)));
        }
        let demo: EnodeId = IDS[0].parse().expect("valid id");
        let mut flipped = *demo.as_bytes();
        flipped[63] ^= 1;
        assert!(!is_demo_enode(&EnodeId::from_bytes(flipped)));

        let demo: TesseraKey = KEYS[6].parse().expect("valid key");
        let mut flipped = *demo.as_bytes();
        flipped[0] ^= 0x80;
        assert!(!is_demo_tessera_key(&TesseraKey::from_bytes(flipped)));
    }
}
