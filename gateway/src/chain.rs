//! The chain behind the gateways: talking to a site's own chain nodes over their local JSON-RPC
//! endpoints and keeping the consortium's raft cluster in step with its registered nodes.
//!
//! [`rpc`] is a bounded JSON-RPC client; [`peering`] keeps this site's nodes peered with the
//! other orgs' nodes as they come and go; [`raft`] decides, from the membership view, the raft
//! cluster as a local node reports it and the site's own nodes, which raft calls this site makes.
//! The decisions are pure functions; [`keeper`] runs them in `fedgw run` and does the IO;
//! [`status`] reads the local nodes for `fedgw chain status`; [`validators`] makes the local
//! QBFT/IBFT validators vote for the validator changes the consortium approved.

pub mod audit;
pub mod keeper;
pub mod peering;
pub mod raft;
pub mod rpc;
pub mod status;
pub mod validators;
