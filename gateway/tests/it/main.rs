//! The gateway's integration tests, one test binary (one link of the gateway for all of them):
//! each module was a test binary of its own and keeps its name, so a test is found as
//! `cli::…`, `tunnel::…` (`cargo nextest run -p fedgw-gateway --test it -E 'test(/^tunnel::/)'`).
//!
//! [`support`] starts gateways in-process; [`common::procs`] serves the modules that run real
//! `fedgw` processes, [`common::netns`] the modules that run them in network namespaces.

mod common {
    pub mod netns;
    pub mod procs;
}
mod support;

mod audit;
mod audit_cli;
mod bootstrap;
mod chain;
mod cli;
mod consensus;
mod console;
mod dns;
mod fabric;
mod fabric_network;
mod ha;
mod ha_netns;
mod ingress;
mod join_service;
mod links;
mod membership;
mod monitoring;
mod ops;
mod port;
mod processes;
mod quorum;
mod replicas;
mod services;
mod sitestate;
mod tunnel;
mod upgrade;
mod validators;
