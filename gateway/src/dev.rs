//! Developer tooling the `fedgw` command line calls and `fedgw run` never does: [`lab`] starts a
//! whole consortium of gateway processes on loopback (`fedgw lab`), [`standin`] serves stand-in
//! nodes and probes them (`fedgw stand-in`, `fedgw probe`), [`geth`] prepares real GoQuorum raft
//! nodes and their network namespaces (the opt-in GoQuorum test). Nothing outside this module,
//! the command line and that test imports it.

pub mod geth;
pub mod lab;
pub mod standin;
