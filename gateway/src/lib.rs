//! fedgw-gateway: the gateway daemon and the `fedgw` command line.
//!
//! [`app`] alone knows every subsystem and wires them together for `fedgw run`; [`cli`] parses
//! commands and maps failures to exit codes.

pub mod addressing;
pub mod admin;
pub mod alias;
pub mod app;
pub mod backup;
pub mod chain;
pub mod cli;
pub mod config;
pub mod console;
pub mod datadir;
pub mod dev;
pub mod diagnose;
pub mod dns;
pub mod fabric;
pub mod federation;
pub mod join;
pub mod listener;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod provision;
pub mod replica;
pub mod site;
pub mod store;
pub mod telemetry;
pub mod tunnel;
