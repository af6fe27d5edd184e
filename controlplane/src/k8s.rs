//! The Kubernetes controller (docs/DESIGN.md section 10), one per gateway pod as a sidecar, talking
//! to its gateway over the admin API on the pod's shared Unix socket. Only the replica holding
//! the `coordination.k8s.io` Lease writes.
//!
//! - [`crd`]: the `ConsortiumNode` resource;
//! - [`index`]: the pure core: watch events and the gateway's node list in, a [`index::Plan`]
//!   out;
//! - [`nodekey`]: enode ids from `nodekey` Secrets;
//! - [`lease`]: leader election;
//! - [`leader`]: the leader's gateway pod, which remote nodes' Services select;
//! - [`gateway`]: the admin API client;
//! - [`health`]: the sidecar's `/livez` and `/readyz`;
//! - [`reconcile`]: carries out a plan against the API server and the gateway;
//! - [`run`]: the watches and the loop that ties them together.

pub mod crd;
pub mod gateway;
pub mod health;
pub mod index;
pub mod leader;
pub mod lease;
pub mod nodekey;
pub mod reconcile;
pub mod run;
