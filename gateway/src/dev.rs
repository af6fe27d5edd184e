//! Developer tooling the `fedgw` command line calls and `fedgw run` never does: [`lab`] starts a
//! whole consortium of gateway processes on loopback (`fedgw lab`), [`standin`] serves stand-in
//! nodes and probes them (`fedgw stand-in`, `fedgw probe`), [`geth`] prepares real GoQuorum nodes
//! and their network namespaces (`fedgw lab --geth`, the opt-in GoQuorum tests). Nothing outside
//! this module, the command line and those tests imports it.

pub mod geth;
pub mod lab;
pub mod standin;
