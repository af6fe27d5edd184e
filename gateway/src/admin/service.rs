//! The admin service's state: what every admin call reads and changes.

use std::sync::Arc;

use crate::config::Config;
use crate::membership::Membership;
use crate::store::Store;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    /// The store.
    pub store: Arc<Store>,
    /// The gateway config.
    pub config: Config,
    /// The consortium root certificate, DER.
    pub root_cert: Vec<u8>,
    /// The advertised endpoints with the bound port filled in.
    pub advertise: Vec<String>,
    /// Membership.
    pub membership: Membership,
    /// Remote nodes' local addresses at this site.
    pub allocations: Arc<std::sync::RwLock<crate::addressing::Allocations>>,
    /// The data plane.
    pub tunnels: crate::tunnel::Tunnels,
    /// Metrics (refused stream counters).
    pub metrics: crate::metrics::Metrics,
    /// The raft keeper's state.
    pub chain: crate::chain::keeper::KeeperHandle,
    /// The validator vote keeper's state.
    pub votes: crate::chain::validators::VotesHandle,
}
