//! The site projection: what this site serves from the membership view. Every node of the view
//! becomes a DNS name (docs/DESIGN.md section 7) and, at this site, either a far-end target
//! (this site's own nodes) or a local address with near-end listeners (every other org's
//! nodes, docs/DESIGN.md section 8); every gateway a DNS name and a peer to link with.
//!
//! ```text
//!  view ──changed_since──▶ keeper ──▶ allocations (store) ──▶ plan::project_node ──▶ Delta
//!  store (site entries) ──────┘                                                      │
//!                                      DNS zone (set/remove names) ◀─────────────────┤
//!                                      tunnels (targets, routes added/removed) ◀─────┘
//! ```
//!
//! [`plan`] is the projection as pure values, [`keeper`] the task that applies it.

pub mod keeper;
pub mod plan;
pub mod shared;
