//! The shared vocabulary: what a source says about one cluster's services.
//!
//! Sources (file, Kubernetes) translate their inputs into these types; the catalog merges them
//! and the zone view turns them into DNS answers. Everything here is validated at the boundary
//! (names are lowercase DNS labels, IPs are parsed), so later stages never re-check.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

/// A cluster's name: a lowercase DNS label, unique in the config.
pub type ClusterId = Arc<str>;

/// One cluster's services as its source last saw them. A persistent map, so that a copy is O(1)
/// and a patch costs O(log n): snapshots share everything that did not change.
pub type Slice = imbl::HashMap<ServiceKey, Arc<Service>>;

/// `<name>.<namespace>`: the identity of a service across the fleet. Services with the same key
/// in several clusters are one service (KEP-1645).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one cluster says about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// A selector-backed or headless service: both answer with endpoint IPs, because pod IPs
    /// route across the fleet and ClusterIPs do not.
    Endpoints {
        ports: Vec<Port>,
        endpoints: Vec<Endpoint>,
        /// What the service itself asks for (Service annotations, file keys).
        policy: AnswerPolicy,
    },
    /// `type: ExternalName`: answered with a CNAME.
    ExternalName(Name),
}

impl Service {
    /// Endpoints that DNS answers with (ready, or not ready but published).
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let endpoints: &[Endpoint] = match self {
            Service::Endpoints { endpoints, .. } => endpoints,
            Service::ExternalName(_) => &[],
        };
        endpoints.iter().filter(|e| e.ready)
    }

    pub fn ports(&self) -> &[Port] {
        match self {
            Service::Endpoints { ports, .. } => ports,
            Service::ExternalName(_) => &[],
        }
    }
}

/// How a service's answers use locality. `None` fields inherit (config override, then the
/// global `locality` settings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnswerPolicy {
    pub policy: Option<Policy>,
    /// At most this many addresses (or SRV targets) per answer.
    pub max_answers: Option<u16>,
}

impl AnswerPolicy {
    /// `self`, with what it leaves unset taken from `other`.
    pub fn or(self, other: AnswerPolicy) -> AnswerPolicy {
        AnswerPolicy {
            policy: self.policy.or(other.policy),
            max_answers: self.max_answers.or(other.max_answers),
        }
    }
}

/// Which endpoints an answer carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every ready endpoint, nearest first.
    #[default]
    All,
    /// Only the nearest tier that has a ready endpoint: regional failover.
    Nearest,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s.trim() {
            "all" => Some(Policy::All),
            "nearest" => Some(Policy::Nearest),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The SRV label, without the underscore.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn from_label(label: &str) -> Option<Protocol> {
        match label.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A port on the endpoints (the EndpointSlice port, i.e. the target port): SRV answers carry
/// pod IPs, so the service's own port would be wrong whenever targetPort differs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// Only named ports get SRV records, as in Kubernetes DNS.
    pub name: Option<Arc<str>>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The EndpointSlice hostname (a DNS label), used for the per-endpoint name.
    pub hostname: Option<Arc<str>>,
    /// Topology zone, e.g. `us-central1-a`.
    pub zone: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    /// Whether DNS answers with it: ready, or published although not ready. Terminating
    /// endpoints never are.
    pub ready: bool,
}

/// One shared copy of a topology name (a zone, a node): there are few of them and a million
/// endpoints naming them, so each endpoint holds a pointer instead of its own string. Only for
/// such bounded sets: interned strings live as long as the process.
pub fn intern(s: &str) -> Arc<str> {
    static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(mut names) = NAMES.lock() else {
        return s.into();
    };
    if let Some(n) = names.get(s) {
        return n.clone();
    }
    let n: Arc<str> = s.into();
    names.insert(n.clone());
    n
}

/// The label of an endpoint without a hostname: its address with dashes (`10-8-1-5`; IPv6
/// fully expanded, `fd00-0000-0000-0000-0000-0000-0000-0005`, so the label never starts or
/// ends with a dash and maps back to exactly one address).
pub fn ip_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}-{}-{}-{}", o[0], o[1], o[2], o[3])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!(
                "{:04x}-{:04x}-{:04x}-{:04x}-{:04x}-{:04x}-{:04x}-{:04x}",
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
            )
        }
    }
}

/// Whether `s` is a lowercase RFC 1123 label (what Kubernetes calls a DNS label).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a valid Kubernetes port name (IANA service name: ≤ 15 characters, lowercase
/// letters, digits and dashes, at least one letter, no leading, trailing or double dash).
pub fn is_port_name(s: &str) -> bool {
    is_dns_label(s)
        && s.len() <= 15
        && !s.contains("--")
        && s.bytes().any(|c| c.is_ascii_lowercase())
}

/// Where a cluster's entry came from: the config file, or a discovered Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClusterOrigin {
    #[default]
    Config,
    /// An Istio remote secret (`istioctl create-remote-secret`) in the local cluster.
    IstioSecret { namespace: String, name: String },
}

impl ClusterOrigin {
    /// The kind alone (a metric label): `config` or `istio-secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterOrigin::Config => "config",
            ClusterOrigin::IstioSecret { .. } => "istio-secret",
        }
    }
}

impl fmt::Display for ClusterOrigin {
    /// `config`, or `istio-secret <namespace>/<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterOrigin::Config => f.write_str("config"),
            ClusterOrigin::IstioSecret { namespace, name } => {
                write!(f, "istio-secret {namespace}/{name}")
            }
        }
    }
}

/// What operators see of one cluster (`/debug/catalog`, metrics, readiness).
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub name: ClusterId,
    pub origin: ClusterOrigin,
    pub region: Option<String>,
    pub zones: Vec<String>,
    pub state: SourceState,
    /// Has this cluster's source delivered a complete slice at least once?
    pub synced_once: bool,
    pub slice: Slice,
    pub endpoints: usize,
    /// Unix seconds of the last change of this cluster's data.
    pub last_change_unix: Option<u64>,
    pub last_error: Option<String>,
    /// Inputs rejected as invalid (e.g. file reloads), ever.
    pub rejected: u64,
    /// Whole-slice replacements (initial lists, relists, reloads), ever.
    pub relists: u64,
    /// Failures talking to the source (watch errors, unreachable API server), ever.
    pub errors: u64,
    /// Malformed objects (or parts of objects) skipped, ever.
    pub skipped: u64,
}

/// The state of a cluster's source, as the catalog and operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Not yet listed once; the cluster has no data.
    Syncing,
    /// Up to date with its source.
    Synced,
    /// Lost its source; the last data is served and marked stale. `since` is a unix time.
    Stale { since_unix: u64 },
    /// Stale for longer than `expire_after`: the data was dropped.
    Expired,
}

impl SourceState {
    pub fn name(&self) -> &'static str {
        match self {
            SourceState::Syncing => "syncing",
            SourceState::Synced => "synced",
            SourceState::Stale { .. } => "stale",
            SourceState::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_labels() {
        let cases: &[(&str, &str)] = &[
            ("10.8.1.5", "10-8-1-5"),
            ("fd00::5", "fd00-0000-0000-0000-0000-0000-0000-0005"),
            ("::1", "0000-0000-0000-0000-0000-0000-0000-0001"),
        ];
        for (ip, label) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_label(ip), *label);
            assert!(is_dns_label(label));
        }
    }

    #[test]
    fn labels() {
        for ok in ["a", "db-0", "x1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_port_name("grpc-xds"));
        assert!(!is_port_name("15010"));
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("abcdefghijklmnop"));
    }
}
