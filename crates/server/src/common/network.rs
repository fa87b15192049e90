//! A sandbox's network egress as every face that makes sandboxes takes it (the native API's
//! `network`, and the same object on the ROCK and AgentRun faces' create requests).

use cella_engine::network::NetworkPolicy;
use serde::{Deserialize, Serialize};

/// A sandbox's network egress. Without it (or with `egress: false`) a sandbox has only its
/// own loopback. With it, connections go out through a user-mode network stack, never to the
/// host itself, nor to link-local, private or reserved ranges unless `allow` names them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(as = Network)]
pub struct NetworkView {
    pub egress: bool,
    /// Destinations allowed (every public one when empty): `host`, `address` or `cidr`,
    /// each with an optional `:port` or `:first-last`, e.g. `pypi.org:443`, `10.1.0.0/16`.
    /// A host name is resolved when the sandbox is made.
    pub allow: Vec<String>,
    /// Destinations refused, in the same forms; they win over `allow`.
    pub deny: Vec<String>,
    /// Most bandwidth each way, Mbit/s (default and most: `network.max_bandwidth_mbps`).
    pub bandwidth_mbps: Option<u64>,
}

impl From<NetworkView> for NetworkPolicy {
    fn from(n: NetworkView) -> NetworkPolicy {
        NetworkPolicy {
            egress: n.egress,
            allow: n.allow,
            deny: n.deny,
            bandwidth_mbps: n.bandwidth_mbps,
        }
    }
}

impl From<NetworkPolicy> for NetworkView {
    fn from(n: NetworkPolicy) -> NetworkView {
        NetworkView {
            egress: n.egress,
            allow: n.allow,
            deny: n.deny,
            bandwidth_mbps: n.bandwidth_mbps,
        }
    }
}
