//! Developer tooling the `fedgw` command line calls and `fedgw run` never does: [`lab`] starts a
//! whole consortium of gateway processes on loopback (`fedgw lab`), [`standin`] serves stand-in
//! nodes and probes them (`fedgw stand-in`, `fedgw probe`). Nothing outside this module and the
//! command line imports it.

pub mod lab;
pub mod standin;
