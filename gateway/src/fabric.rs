//! Hyperledger Fabric: identities from the org CA and client configs from the view
//! (docs/fabric.md).
//!
//! - [`msp`]: the local MSP folder of a peer, orderer, client or admin (`fedgw cert
//!   fabric-msp`) and the org's verifying MSP (`fedgw cert fabric-org-msp`), as files.
//! - [`render`] and [`view`] (from `fedgw_controlplane::fabric`, which the Kubernetes
//!   controller shares): the common connection profile, configtx.yaml `Organizations` and the
//!   etcdraft consenter list, pure functions over [`render::FabricOrg`], and the adapter from
//!   members and node records to them; MSP ID rules ([`default_msp_id`], [`validate_msp_id`]).
//!
//! Everything here takes values and returns values; the CLI reads the data dir and the admin
//! socket and writes the files.

pub mod msp;

pub use fedgw_controlplane::fabric::{
    MAX_MSP_ID_LEN, MspIdError, default_msp_id, render, validate_msp_id, view,
};
