//! The control plane's integration tests, one test binary: each module was a test binary of its
//! own and keeps its name (`cargo nextest run -p fedgw-controlplane --test it -E
//! 'test(/^reconcile::/)'`). Every module but `render` needs the `controller` feature.

#[cfg(feature = "controller")]
mod support;

#[cfg(feature = "controller")]
mod apiserver;
#[cfg(feature = "controller")]
mod binary;
#[cfg(feature = "controller")]
mod controller;
#[cfg(feature = "controller")]
mod deploy;
#[cfg(feature = "controller")]
mod leader;
#[cfg(feature = "controller")]
mod reconcile;
mod render;
