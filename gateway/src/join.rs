//! Joining a consortium (docs/DESIGN.md section 5): the inviter's join service ([`server`]), the
//! joiner's flow ([`client`]), and the per-token attempt limiter ([`limiter`]).

pub mod client;
pub mod limiter;
pub mod server;
