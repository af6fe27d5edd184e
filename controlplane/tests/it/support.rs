//! Fakes shared by the test modules: a stateful Kubernetes API server, a gateway admin API, and
//! the controller scenario run against either API server.

#![allow(dead_code, reason = "each test module uses part of the fakes")]

pub mod fake_api;
pub mod fake_gateway;
pub mod scenario;
