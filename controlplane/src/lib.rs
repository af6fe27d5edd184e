//! fedgw-controlplane: what the control plane writes for chain clients.
//!
//! [`render`] turns one site's view of the consortium's nodes into the files GoQuorum, Besu and
//! Tessera read. Pure functions: values in, text out; the gateway's `fedgw render` and (later)
//! the Kubernetes controller write the text where clients mount it.

pub mod render;
