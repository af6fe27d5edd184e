//! fedgw-controlplane: what the control plane writes for chain clients.
//!
//! [`render`] turns one site's view of the consortium's nodes into the files GoQuorum, Besu and
//! Tessera read, and [`fabric`] the Hyperledger Fabric connection profile and configtx.yaml
//! parts. Pure functions: values in, text out; the gateway's `fedgw render` and the Kubernetes
//! controller write the text where clients mount it.
//!
//! [`k8s`] (feature `controller`, on by default) is the Kubernetes controller that runs beside
//! each gateway pod: the `ConsortiumNode` CRD, its pure index, leader election, and the shell
//! that talks to the API server and to the gateway's admin socket.

pub mod fabric;
#[cfg(feature = "controller")]
pub mod k8s;
pub mod render;
