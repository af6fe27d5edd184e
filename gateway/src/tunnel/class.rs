//! Priority classes of tunnel streams: what a proxied connection carries decides which of the
//! link's streams are sent first when the link is the bottleneck.
//!
//! Three classes, highest first: **consensus** (raft, and any port the operator marks: a raft
//! heartbeat that waits behind a block sync for an election time-out, 1-2 s in GoQuorum, makes
//! followers start an election), **interactive** (Tessera and every other port unless
//! configured), **bulk** (devp2p `p2p`: block sync moves megabytes at a time). QBFT/IBFT
//! messages share the devp2p connection with block sync and cannot be told apart by port.
//!
//! QUIC links give each class a stream priority (`SendStream::set_priority`, higher first;
//! quinn round-robins streams of one priority). yamux links schedule frames by class in the
//! session ([`super::mux`]). Each gateway classifies what it sends by its own configuration
//! (`[tunnel] priority`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A stream's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Consensus messages (raft): sent before everything else.
    Consensus,
    /// Request/response services (Tessera, RPC): after consensus, before bulk.
    Interactive,
    /// Bulk transfers (devp2p block sync): whatever the link has left.
    Bulk,
}

/// Number of classes.
pub const CLASSES: usize = 3;

impl Class {
    /// Every class, highest first (so `ALL[c.index()] == c`).
    pub const ALL: [Class; CLASSES] = [Class::Consensus, Class::Interactive, Class::Bulk];

    /// 0 for the highest class, 2 for the lowest.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label in metrics and `fedgw status`.
    pub fn label(self) -> &'static str {
        match self {
            Class::Consensus => "consensus",
            Class::Interactive => "interactive",
            Class::Bulk => "bulk",
        }
    }

    /// The QUIC send-stream priority (quinn: higher is sent first; new streams have 0).
    pub fn quic_priority(self) -> i32 {
        match self {
            Class::Consensus => 2,
            Class::Interactive => 1,
            Class::Bulk => 0,
        }
    }

    /// The built-in class of a port name: `raft` is consensus, `p2p` bulk, anything else
    /// interactive.
    pub fn default_for(port: &str) -> Class {
        match port {
            "raft" => Class::Consensus,
            "p2p" => Class::Bulk,
            _ => Class::Interactive,
        }
    }
}

impl crate::metrics::Label for Class {
    fn label(self) -> &'static str {
        Class::label(self)
    }
}

/// `[tunnel] priority`: classes by port, overriding [`Class::default_for`]. A key is a port
/// name (`raft`, `p2p`, `tessera`: every node's port of that name) or `org/node/port` (one
/// node's port); the more specific key wins. Example:
///
/// ```toml
/// [tunnel.priority]
/// tessera = "bulk"
/// "org2/validator1/p2p" = "consensus"
/// ```
pub type Priorities = BTreeMap<String, Class>;

/// The class of `org`'s node `node`, port `port` under `priorities`.
pub fn class_of(priorities: &Priorities, org: &str, node: &str, port: &str) -> Class {
    priorities
        .get(&format!("{org}/{node}/{port}"))
        .or_else(|| priorities.get(port))
        .copied()
        .unwrap_or_else(|| Class::default_for(port))
}

/// Checks the keys of `[tunnel] priority`: a port name or `org/node/port`, no part empty.
///
/// # Errors
///
/// The first bad key, as a message for the configuration error.
pub fn check(priorities: &Priorities) -> Result<(), String> {
    for key in priorities.keys() {
        let parts: Vec<&str> = key.split('/').collect();
        let ok = matches!(parts.len(), 1 | 3)
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 63 && !p.contains(char::is_whitespace));
        if !ok {
            return Err(format!(
                "tunnel.priority key {key:?} is neither a port name nor org/node/port"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_take_their_configured_class_the_more_specific_key_first() {
        let none = Priorities::new();
        assert_eq!(class_of(&none, "o", "n", "raft"), Class::Consensus);
        assert_eq!(class_of(&none, "o", "n", "p2p"), Class::Bulk);
        assert_eq!(class_of(&none, "o", "n", "tessera"), Class::Interactive);
        let mut p = Priorities::new();
        p.insert("tessera".into(), Class::Bulk);
        p.insert("p2p".into(), Class::Interactive);
        p.insert("o/v1/p2p".into(), Class::Consensus);
        assert_eq!(class_of(&p, "o", "n", "tessera"), Class::Bulk);
        assert_eq!(class_of(&p, "o", "n", "p2p"), Class::Interactive);
        assert_eq!(class_of(&p, "o", "v1", "p2p"), Class::Consensus);
        assert_eq!(class_of(&p, "x", "v1", "p2p"), Class::Interactive);
        assert!(check(&p).is_ok());
        for bad in ["", "a/b", "a//c", "a/b/c/d", "a b"] {
            let mut p = Priorities::new();
            p.insert(bad.into(), Class::Bulk);
            assert!(check(&p).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classes_parse_from_toml_and_order_highest_first() {
        let p: Priorities =
            toml::from_str("raft = \"bulk\"\n\"o/n/p2p\" = \"consensus\"\n").expect("parse");
        assert_eq!(p["raft"], Class::Bulk);
        assert_eq!(p["o/n/p2p"], Class::Consensus);
        assert!(toml::from_str::<Priorities>("raft = \"urgent\"").is_err());
        assert!(Class::Consensus < Class::Interactive && Class::Interactive < Class::Bulk);
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        assert!(Class::Consensus.quic_priority() > Class::Interactive.quic_priority());
        assert!(Class::Interactive.quic_priority() > Class::Bulk.quic_priority());
    }
}
