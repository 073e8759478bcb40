//! The config file (YAML) and its validation.
//!
//! Parsing is strict: unknown keys are errors, so a typo never silently does nothing. Every
//! error names the file, the line and the key; `check` and `serve` print it and exit 2 before
//! anything binds a socket. Flags (`--dns-addr`, `--ops-addr`) override `listen` in `main`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::model::{AnswerPolicy, ClusterId, ClusterOrigin, Policy, ServiceKey, is_dns_label};

pub const DEFAULT_ZONE: &str = "clusterset.local.";

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this config came from.
    pub path: PathBuf,
    pub zone: Name,
    pub listen: Listen,
    /// Record TTL, seconds.
    pub ttl: u32,
    /// SOA minimum: the TTL of negative answers, seconds.
    pub negative_ttl: u32,
    pub allow: Vec<IpNet>,
    pub local_cluster: Option<ClusterId>,
    pub clusters: Vec<ClusterConfig>,
    pub nameservers: Vec<Nameserver>,
    /// The largest UDP response we send, whatever the client advertises (RFC 9715: 1232
    /// avoids IP fragmentation).
    pub max_udp_payload: u16,
    /// How long the catalog waits for more events before publishing a snapshot.
    pub coalesce: Duration,
    /// How long a stale source's data is kept; `None` = forever.
    pub expire_after: Option<Duration>,
    /// Ready once every cluster has synced, or after this long whatever the rest does.
    pub ready_timeout: Duration,
    /// On SIGTERM: how long answers go on (with `/readyz` 503) before the listeners close.
    pub drain: Duration,
    /// What this instance calls itself in NSID and CHAOS `id.server`/`hostname.bind`;
    /// `None`: hidden.
    pub identity: Option<String>,
    /// The CHAOS TXT names answered.
    pub chaos: Vec<ChaosName>,
    /// Serve `_status.<svc>.<ns>.svc.<zone>` TXT provenance records.
    pub status_records: bool,
    /// Fraction of queries logged (0: off, 1: all).
    pub query_log: f64,
    pub locality: LocalityConfig,
    /// Where more clusters are found at run time (`clusters` wins over what is found).
    pub discover: Discover,
    /// Publish the local cluster's slice to Google Cloud Pub/Sub; `None`: not published.
    pub publish: Option<PublishConfig>,
}

/// The `publish` section: one instance per cluster (the holder of a Lease) publishes the
/// local cluster's slice to its own topic, for peers that read it with a `pubsub` source.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishConfig {
    /// `projects/{project}/topics/{topic}`.
    pub topic: String,
    /// A full snapshot goes out this often (and on every takeover).
    pub resync: Duration,
    /// The Lease in the local cluster that elects the publisher.
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a leader holds the lease without renewing it.
    pub lease_duration: Duration,
    /// Largest message published; snapshots are split into chunks below it.
    pub max_message_bytes: usize,
    /// Where snapshot requests go (a subscriber that lost its place asks for one here).
    pub requests_topic: Option<String>,
}

/// A `pubsub` source: a peer cluster's slice read from the topic its publisher writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubSubSourceConfig {
    /// `projects/{project}/topics/{topic}`.
    pub topic: String,
    /// A subscription made beforehand (`projects/{p}/subscriptions/{s}`); `None`: this
    /// instance creates its own and deletes it on shutdown.
    pub subscription: Option<String>,
    /// An own subscription left behind (a crash) is deleted by Pub/Sub after this long idle.
    pub subscription_expiry: Duration,
    /// Where to ask the publisher for a full snapshot (after a gap, or at start).
    pub requests_topic: Option<String>,
}

/// The `discover` section: peer clusters found at run time rather than listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discover {
    /// Istio's remote secrets in the local cluster; `None`: not read.
    pub istio_remote_secrets: Option<IstioRemoteSecrets>,
}

/// Which Secrets of the local cluster are Istio remote secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioRemoteSecrets {
    pub namespace: String,
    pub label_selector: String,
}

impl Default for IstioRemoteSecrets {
    /// Where and how `istioctl create-remote-secret` puts them.
    fn default() -> Self {
        IstioRemoteSecrets {
            namespace: "istio-system".into(),
            label_selector: "istio/multiCluster=true".into(),
        }
    }
}

/// How answers use the client's locality.
#[derive(Clone, Debug, Default)]
pub struct LocalityConfig {
    /// The global policy and answer cap (policy defaults to `all`).
    pub default: AnswerPolicy,
    /// Per-service overrides; they win over the service's own annotations.
    pub services: Vec<(ServiceKey, AnswerPolicy)>,
    /// Forwarders whose EDNS Client Subnet is believed (RFC 7871).
    pub ecs_from: Vec<IpNet>,
}

/// A range of client addresses (nodes, VMs) and, if known, their zone.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientNetwork {
    pub net: IpNet,
    pub zone: Option<String>,
}

/// A CHAOS-class name meshdns can answer (`dig CH TXT id.server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ChaosName {
    #[serde(rename = "id.server")]
    IdServer,
    #[serde(rename = "hostname.bind")]
    HostnameBind,
    #[serde(rename = "version.bind")]
    VersionBind,
}

impl ChaosName {
    pub const ALL: [ChaosName; 3] = [
        ChaosName::IdServer,
        ChaosName::HostnameBind,
        ChaosName::VersionBind,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ChaosName::IdServer => "id.server.",
            ChaosName::HostnameBind => "hostname.bind.",
            ChaosName::VersionBind => "version.bind.",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub dns: SocketAddr,
    pub ops: SocketAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub name: ClusterId,
    /// The config file, or the Secret the cluster was discovered in.
    pub origin: ClusterOrigin,
    pub region: Option<String>,
    pub zones: Vec<String>,
    pub networks: Vec<IpNet>,
    /// More client ranges of this cluster (nodes, VMs), with their zone when known.
    pub client_networks: Vec<ClientNetwork>,
    pub source: SourceConfig,
    /// Where `source` is written in the config file (line, column), for errors found later.
    pub source_at: (u64, u64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceConfig {
    Kube(KubeSourceConfig),
    /// Absolute (resolved against the config file's directory).
    File(PathBuf),
    PubSub(PubSubSourceConfig),
}

/// What a `kube` source watches. `kubeconfig: None` means in-cluster.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSourceConfig {
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    /// Namespaces to watch; empty = all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// A label selector narrowing the Services and EndpointSlices watched.
    #[serde(default)]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub export: Export,
    /// Use streaming lists (WatchList: `sendInitialEvents`) instead of LIST + WATCH for the
    /// initial sync and relists. Only where the API servers offer them (Kubernetes ≥ 1.32 with
    /// the WatchList feature enabled); otherwise the first sync never completes.
    #[serde(default)]
    pub streaming_lists: bool,
    /// A kubeconfig held in memory (a discovered Secret's), used instead of `kubeconfig`.
    /// Never read from the config file. Part of the source's identity: a rotated token or a
    /// new endpoint is a changed source, restarted alone.
    #[serde(skip)]
    pub inline_kubeconfig: Option<InlineKubeconfig>,
}

/// A kubeconfig's text. It carries credentials, so `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct InlineKubeconfig(pub std::sync::Arc<str>);

impl fmt::Debug for InlineKubeconfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineKubeconfig({} bytes)", self.0.len())
    }
}

/// Which services a Kubernetes source publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    #[default]
    All,
    /// Only services labelled `meshdns.io/export: "true"`.
    Labeled,
    /// Only services with an MCS `ServiceExport` of the same name.
    Serviceexport,
}

#[derive(Clone, Debug)]
pub struct Nameserver {
    pub name: Name,
    pub addresses: Vec<IpAddr>,
}

/// A config error: which file, where, which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax or type errors; serde-saphyr's message carries line, column and snippet.
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// A duration written as `5s`, `250ms`, `1m30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    zone: Option<Spanned<String>>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    ttl: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    negative_ttl: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    allow: Option<Vec<IpNet>>,
    #[serde(default)]
    local_cluster: Option<Spanned<String>>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
    #[serde(default)]
    nameservers: Option<Vec<RawNameserver>>,
    #[serde(default)]
    max_udp_payload: Option<Spanned<u16>>,
    #[serde(default)]
    coalesce: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    expire_after: Option<HumanDuration>,
    #[serde(default)]
    ready_timeout: Option<HumanDuration>,
    #[serde(default)]
    drain: Option<HumanDuration>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    chaos: Option<Vec<ChaosName>>,
    #[serde(default)]
    status_records: Option<bool>,
    #[serde(default)]
    query_log: Option<Spanned<f64>>,
    #[serde(default)]
    locality: RawLocality,
    #[serde(default)]
    discover: RawDiscover,
    #[serde(default)]
    publish: Option<Spanned<RawPublish>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    project: Spanned<String>,
    /// Default `meshdns-<local_cluster>`.
    #[serde(default)]
    topic: Option<Spanned<String>>,
    #[serde(default)]
    resync: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    lease_namespace: Option<Spanned<String>>,
    #[serde(default)]
    lease_name: Option<Spanned<String>>,
    #[serde(default)]
    lease_duration: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    max_message_bytes: Option<Spanned<usize>>,
    /// Default `meshdns-requests`; empty: no requests.
    #[serde(default)]
    requests_topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPubSubSource {
    project: Spanned<String>,
    /// Default `meshdns-<cluster>`.
    #[serde(default)]
    topic: Option<Spanned<String>>,
    #[serde(default)]
    subscription: Option<Spanned<String>>,
    #[serde(default)]
    subscription_expiry: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    requests_topic: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscover {
    /// Present (even empty, `istio_remote_secrets:`) turns discovery on with the defaults.
    #[serde(default, deserialize_with = "present")]
    istio_remote_secrets: Option<Option<RawIstioRemoteSecrets>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIstioRemoteSecrets {
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    label_selector: Option<Spanned<String>>,
}

/// A key that is present is `Some`, even when its value is empty (null).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocality {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    max_answers: Option<u16>,
    #[serde(default)]
    ecs_from: Vec<IpNet>,
    #[serde(default)]
    services: Vec<RawServicePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServicePolicy {
    namespace: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    max_answers: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientNetwork {
    net: IpNet,
    #[serde(default)]
    zone: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    dns: Option<SocketAddr>,
    #[serde(default)]
    ops: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    networks: Vec<IpNet>,
    #[serde(default)]
    client_networks: Vec<RawClientNetwork>,
    source: Spanned<RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawSource {
    Kube(KubeSourceConfig),
    File(PathBuf),
    Pubsub(Box<RawPubSubSource>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNameserver {
    name: Spanned<String>,
    #[serde(default)]
    addresses: Vec<IpAddr>,
}

/// Private, shared and loopback ranges: where cluster DNS servers live.
fn default_allow() -> Vec<IpNet> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "fc00::/7",
        "::1/128",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

impl Config {
    /// Reads and validates the config file. Paths of file sources are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid =
            |at: &serde_saphyr::Location, key: &str, message: String| ConfigError::Invalid {
                path: path.to_owned(),
                line: at.line(),
                column: at.column(),
                key: key.to_owned(),
                message,
            };
        let base = path.parent().unwrap_or(Path::new("."));

        let zone = match &raw.zone {
            None => Name::from_ascii(DEFAULT_ZONE).expect("the default zone is a valid name"),
            Some(z) => parse_fqdn(&z.value).map_err(|m| invalid(&z.referenced, "zone", m))?,
        };
        let ttl = seconds(raw.ttl.as_ref(), 5, "ttl").map_err(|(at, m)| invalid(&at, "ttl", m))?;
        let negative_ttl = seconds(raw.negative_ttl.as_ref(), ttl, "negative_ttl")
            .map_err(|(at, m)| invalid(&at, "negative_ttl", m))?;

        let mut clusters = Vec::with_capacity(raw.clusters.len());
        let mut seen = HashSet::new();
        for (i, c) in raw.clusters.into_iter().enumerate() {
            let key = format!("clusters[{i}].name");
            if !is_dns_label(&c.name.value) {
                return Err(invalid(
                    &c.name.referenced,
                    &key,
                    format!(
                        "{:?} is not a DNS label (lowercase letters, digits and '-', at most 63)",
                        c.name.value
                    ),
                ));
            }
            if !seen.insert(c.name.value.clone()) {
                return Err(invalid(
                    &c.name.referenced,
                    &key,
                    format!("duplicate cluster name {:?}", c.name.value),
                ));
            }
            let source_at = (c.source.referenced.line(), c.source.referenced.column());
            let source = match c.source.value {
                RawSource::Kube(k) => {
                    if let Some(sel) = &k.label_selector
                        && sel.trim().is_empty()
                    {
                        return Err(invalid(
                            &c.source.referenced,
                            &format!("clusters[{i}].source.kube.label_selector"),
                            "empty selector".into(),
                        ));
                    }
                    for ns in &k.namespaces {
                        if !is_dns_label(ns) {
                            return Err(invalid(
                                &c.source.referenced,
                                &format!("clusters[{i}].source.kube.namespaces"),
                                format!("{ns:?} is not a namespace name"),
                            ));
                        }
                    }
                    SourceConfig::Kube(KubeSourceConfig {
                        kubeconfig: k.kubeconfig.map(|p| base.join(p)),
                        ..k
                    })
                }
                RawSource::File(p) => SourceConfig::File(base.join(p)),
                RawSource::Pubsub(p) => {
                    let key = |k: &str| format!("clusters[{i}].source.pubsub.{k}");
                    let project = pubsub_id(&p.project.value, p.project.referenced, "project")
                        .map_err(|(at, m)| invalid(&at, &key("project"), m))?;
                    let topic = resource_name(
                        &project,
                        "topics",
                        p.topic.as_ref(),
                        &format!("meshdns-{}", c.name.value),
                    )
                    .map_err(|(at, m)| invalid(&at, &key("topic"), m))?;
                    let subscription = match &p.subscription {
                        None => None,
                        Some(s) => Some(
                            resource_name(&project, "subscriptions", Some(s), "")
                                .map_err(|(at, m)| invalid(&at, &key("subscription"), m))?,
                        ),
                    };
                    // Pub/Sub's own bounds for an expiration policy.
                    let subscription_expiry = match &p.subscription_expiry {
                        None => Duration::from_secs(24 * 3600),
                        Some(d) if (86_400..=31 * 86_400).contains(&d.value.0.as_secs()) => {
                            d.value.0
                        }
                        Some(d) => {
                            return Err(invalid(
                                &d.referenced,
                                &key("subscription_expiry"),
                                "between 1d and 31d (Pub/Sub's bounds)".into(),
                            ));
                        }
                    };
                    SourceConfig::PubSub(PubSubSourceConfig {
                        requests_topic: requests_topic(&project, p.requests_topic.as_deref()),
                        topic,
                        subscription,
                        subscription_expiry,
                    })
                }
            };
            clusters.push(ClusterConfig {
                name: c.name.value.as_str().into(),
                origin: ClusterOrigin::Config,
                region: c.region,
                zones: c.zones,
                networks: c.networks,
                client_networks: c
                    .client_networks
                    .into_iter()
                    .map(|n| ClientNetwork {
                        net: n.net.trunc(),
                        zone: n.zone,
                    })
                    .collect(),
                source,
                source_at,
            });
        }

        let local_cluster = match raw.local_cluster {
            None => None,
            Some(l) if seen.contains(&l.value) => Some(l.value.as_str().into()),
            Some(l) => {
                return Err(invalid(
                    &l.referenced,
                    "local_cluster",
                    format!("{:?} is not one of the clusters", l.value),
                ));
            }
        };

        let nameservers = match raw.nameservers {
            None => vec![Nameserver {
                name: Name::from_ascii("ns")
                    .and_then(|n| n.append_domain(&zone))
                    .map_err(|e| {
                        invalid(&serde_saphyr::Location::UNKNOWN, "zone", e.to_string())
                    })?,
                addresses: Vec::new(),
            }],
            Some(list) if list.is_empty() => {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: 0,
                    column: 0,
                    key: "nameservers".into(),
                    message: "at least one nameserver is needed for the NS record".into(),
                });
            }
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, ns) in list.into_iter().enumerate() {
                    let name = parse_fqdn(&ns.name.value).map_err(|m| {
                        invalid(&ns.name.referenced, &format!("nameservers[{i}].name"), m)
                    })?;
                    out.push(Nameserver {
                        name,
                        addresses: ns.addresses,
                    });
                }
                out
            }
        };

        let max_udp_payload = match raw.max_udp_payload {
            None => 1232,
            Some(p) if p.value >= 512 => p.value,
            Some(p) => {
                return Err(invalid(
                    &p.referenced,
                    "max_udp_payload",
                    "must be at least 512".into(),
                ));
            }
        };
        let coalesce = match raw.coalesce {
            None => Duration::from_millis(2),
            Some(c) if c.value.0 <= Duration::from_secs(1) => c.value.0,
            Some(c) => {
                return Err(invalid(
                    &c.referenced,
                    "coalesce",
                    "must be at most 1s".into(),
                ));
            }
        };

        let query_log = match raw.query_log {
            None => 0.0,
            Some(q) if (0.0..=1.0).contains(&q.value) => q.value,
            Some(q) => {
                return Err(invalid(
                    &q.referenced,
                    "query_log",
                    "a fraction of queries: between 0 and 1".into(),
                ));
            }
        };
        let identity = match raw.identity.as_deref().map(str::trim) {
            None | Some("auto") => Some(default_identity()),
            Some("") => None,
            Some(s) => Some(s.to_string()),
        };

        let mut overrides = Vec::with_capacity(raw.locality.services.len());
        for (i, s) in raw.locality.services.into_iter().enumerate() {
            for (what, v) in [("namespace", &s.namespace), ("name", &s.name)] {
                if !is_dns_label(&v.value) {
                    return Err(invalid(
                        &v.referenced,
                        &format!("locality.services[{i}].{what}"),
                        format!("{:?} is not a DNS label", v.value),
                    ));
                }
            }
            overrides.push((
                ServiceKey::new(&s.namespace.value, &s.name.value),
                AnswerPolicy {
                    policy: s.policy,
                    max_answers: s.max_answers.filter(|m| *m > 0),
                },
            ));
        }
        let mut discover = Discover::default();
        if let Some(raw) = raw.discover.istio_remote_secrets {
            let raw = raw.unwrap_or_default();
            let mut d = IstioRemoteSecrets::default();
            if let Some(ns) = raw.namespace {
                if !is_dns_label(&ns.value) {
                    return Err(invalid(
                        &ns.referenced,
                        "discover.istio_remote_secrets.namespace",
                        format!("{:?} is not a namespace name", ns.value),
                    ));
                }
                d.namespace = ns.value;
            }
            if let Some(sel) = raw.label_selector {
                if sel.value.trim().is_empty() {
                    return Err(invalid(
                        &sel.referenced,
                        "discover.istio_remote_secrets.label_selector",
                        "empty selector: every Secret of the namespace would be read".into(),
                    ));
                }
                d.label_selector = sel.value;
            }
            discover.istio_remote_secrets = Some(d);
        }

        let publish = match raw.publish {
            None => None,
            Some(p) => {
                let at = p.referenced;
                let p = p.value;
                let Some(local) = &local_cluster else {
                    return Err(invalid(
                        &at,
                        "publish",
                        "needs local_cluster: the cluster whose slice is published".into(),
                    ));
                };
                let kube_source = clusters
                    .iter()
                    .any(|c| c.name == *local && matches!(c.source, SourceConfig::Kube(_)));
                if !kube_source {
                    return Err(invalid(
                        &at,
                        "publish",
                        format!(
                            "the local cluster {local:?} needs a kube source (it holds the publisher's Lease)"
                        ),
                    ));
                }
                let project = pubsub_id(&p.project.value, p.project.referenced, "project")
                    .map_err(|(at, m)| invalid(&at, "publish.project", m))?;
                let topic = resource_name(
                    &project,
                    "topics",
                    p.topic.as_ref(),
                    &format!("meshdns-{local}"),
                )
                .map_err(|(at, m)| invalid(&at, "publish.topic", m))?;
                let lease_namespace = match p.lease_namespace {
                    Some(ns) if is_dns_label(&ns.value) => ns.value,
                    Some(ns) => {
                        return Err(invalid(
                            &ns.referenced,
                            "publish.lease_namespace",
                            format!("{:?} is not a namespace name", ns.value),
                        ));
                    }
                    None => std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|ns| is_dns_label(ns))
                        .unwrap_or_else(|| "meshdns".into()),
                };
                let lease_name = match p.lease_name {
                    Some(n) if is_dns_label(&n.value) => n.value,
                    Some(n) => {
                        return Err(invalid(
                            &n.referenced,
                            "publish.lease_name",
                            format!("{:?} is not a DNS label", n.value),
                        ));
                    }
                    None => "meshdns-publisher".into(),
                };
                let lease_duration = match p.lease_duration {
                    None => Duration::from_secs(15),
                    Some(d) if (2..=300).contains(&d.value.0.as_secs()) => d.value.0,
                    Some(d) => {
                        return Err(invalid(
                            &d.referenced,
                            "publish.lease_duration",
                            "between 2s and 5m".into(),
                        ));
                    }
                };
                let resync = match p.resync {
                    None => Duration::from_secs(60),
                    Some(d) if d.value.0 >= Duration::from_millis(100) => d.value.0,
                    Some(d) => {
                        return Err(invalid(
                            &d.referenced,
                            "publish.resync",
                            "at least 100ms".into(),
                        ));
                    }
                };
                // Pub/Sub refuses messages over 10 MB; leave room for the envelope.
                let max_message_bytes = match p.max_message_bytes {
                    None => 4 << 20,
                    Some(m) if (1024..=9 << 20).contains(&m.value) => m.value,
                    Some(m) => {
                        return Err(invalid(
                            &m.referenced,
                            "publish.max_message_bytes",
                            "between 1024 and 9437184 (Pub/Sub's limit is 10 MB)".into(),
                        ));
                    }
                };
                Some(PublishConfig {
                    requests_topic: requests_topic(&project, p.requests_topic.as_deref()),
                    topic,
                    resync,
                    lease_namespace,
                    lease_name,
                    lease_duration,
                    max_message_bytes,
                })
            }
        };

        let locality = LocalityConfig {
            default: AnswerPolicy {
                policy: Some(raw.locality.policy.unwrap_or_default()),
                max_answers: raw.locality.max_answers.filter(|m| *m > 0),
            },
            services: overrides,
            ecs_from: raw.locality.ecs_from,
        };

        Ok(Config {
            path: path.to_owned(),
            zone,
            listen: Listen {
                dns: raw
                    .listen
                    .dns
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 53))),
                ops: raw
                    .listen
                    .ops
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9153))),
            },
            ttl,
            negative_ttl,
            allow: raw.allow.unwrap_or_else(default_allow),
            local_cluster,
            clusters,
            nameservers,
            max_udp_payload,
            coalesce,
            expire_after: raw.expire_after.map(|d| d.0),
            ready_timeout: raw.ready_timeout.map_or(Duration::from_secs(30), |d| d.0),
            drain: raw.drain.map_or(Duration::from_secs(5), |d| d.0),
            identity,
            chaos: raw.chaos.unwrap_or_else(|| ChaosName::ALL.to_vec()),
            status_records: raw.status_records.unwrap_or(true),
            query_log,
            locality,
            discover,
            publish,
        })
    }
}

/// A Pub/Sub project id (or a topic/subscription id): letters, digits and `-._~%+`.
fn pubsub_id(
    s: &str,
    at: serde_saphyr::Location,
    what: &str,
) -> Result<String, (serde_saphyr::Location, String)> {
    let s = s.trim();
    let ok = (3..=255).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~%+".contains(c))
        && !s.starts_with("goog");
    if ok {
        Ok(s.to_string())
    } else {
        Err((
            at,
            format!(
                "{s:?} is not a Pub/Sub {what} id (3-255 letters, digits, '-._~%+', starting with a letter)"
            ),
        ))
    }
}

/// `projects/{project}/{kind}/{id}` from an id, a full name, or the default id.
fn resource_name(
    project: &str,
    kind: &str,
    given: Option<&Spanned<String>>,
    default: &str,
) -> Result<String, (serde_saphyr::Location, String)> {
    let Some(given) = given else {
        return Ok(format!("projects/{project}/{kind}/{default}"));
    };
    let (v, at) = (given.value.trim(), given.referenced);
    let what = kind.trim_end_matches('s');
    match v.split('/').collect::<Vec<_>>().as_slice() {
        [id] => Ok(format!(
            "projects/{project}/{kind}/{}",
            pubsub_id(id, at, what)?
        )),
        ["projects", p, k, id] if *k == kind => {
            pubsub_id(p, at, "project")?;
            pubsub_id(id, at, what)?;
            Ok(v.to_string())
        }
        _ => Err((
            at,
            format!("{v:?} is neither an id nor projects/PROJECT/{kind}/ID"),
        )),
    }
}

/// The snapshot-request topic: `meshdns-requests` unless set; empty turns requests off.
fn requests_topic(project: &str, given: Option<&str>) -> Option<String> {
    match given.map(str::trim) {
        None => Some(format!("projects/{project}/topics/meshdns-requests")),
        Some("") => None,
        Some(t) if t.starts_with("projects/") => Some(t.to_string()),
        Some(t) => Some(format!("projects/{project}/topics/{t}")),
    }
}

/// `<pod>@<node>` from the downward API (`POD_NAME`, `NODE_NAME`), else the instance's name.
fn default_identity() -> String {
    match (env_var("POD_NAME"), env_var("NODE_NAME")) {
        (Some(pod), Some(node)) => format!("{pod}@{node}"),
        _ => instance_name(),
    }
}

/// This instance's name: `$POD_NAME` (the downward API), else the host name.
pub fn instance_name() -> String {
    env_var("POD_NAME").unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "meshdns".into())
    })
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// A duration in whole seconds that fits a TTL (RFC 2181: at most 2^31 - 1).
fn seconds(
    d: Option<&Spanned<HumanDuration>>,
    default: u32,
    key: &str,
) -> Result<u32, (serde_saphyr::Location, String)> {
    let Some(d) = d else { return Ok(default) };
    let secs = d.value.0.as_secs();
    if d.value.0.subsec_nanos() != 0 || secs > i32::MAX as u64 {
        return Err((
            d.referenced,
            format!("{key} must be whole seconds between 0s and 68y"),
        ));
    }
    Ok(secs as u32)
}

/// A fully qualified domain name; the trailing dot is optional. Lowercased.
pub fn parse_fqdn(s: &str) -> Result<Name, String> {
    let s = s.trim();
    if s.is_empty() || s == "." {
        return Err("must be a domain name below the root".into());
    }
    let mut name = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a domain name: {e}"))?;
    name.set_fqdn(true);
    if name.num_labels() == 0 {
        return Err("must be a domain name below the root".into());
    }
    for label in name.iter() {
        let ok = !label.is_empty()
            && label
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
        if !ok {
            return Err(format!(
                "{s:?} is not a domain name: labels are letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(name.to_lowercase())
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns={} ops={}", self.dns, self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/meshdns/meshdns.yaml"), text)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
zone: Fleet.Example
listen: { dns: "127.0.0.1:1053", ops: "127.0.0.1:9153" }
ttl: 10s
allow: [10.0.0.0/8]
local_cluster: alpha
clusters:
  - name: alpha
    region: us-central1
    zones: [us-central1-a]
    networks: [10.8.0.0/14]
    source: { kube: {} }
  - name: beta
    source: { kube: { kubeconfig: clusters/beta, namespaces: [istio-system] } }
  - name: vms
    source: { file: vms.yaml }
"#,
        )
        .unwrap();
        assert_eq!(c.zone.to_ascii(), "fleet.example.");
        assert_eq!(c.ttl, 10);
        assert_eq!(c.negative_ttl, 10);
        assert_eq!(c.listen.dns, "127.0.0.1:1053".parse().unwrap());
        assert_eq!(c.clusters.len(), 3);
        assert_eq!(c.local_cluster.as_deref(), Some("alpha"));
        assert_eq!(
            c.clusters[2].source,
            SourceConfig::File("/etc/meshdns/vms.yaml".into())
        );
        match &c.clusters[1].source {
            SourceConfig::Kube(k) => {
                assert_eq!(
                    k.kubeconfig.as_deref(),
                    Some(Path::new("/etc/meshdns/clusters/beta"))
                );
                assert_eq!(k.namespaces, vec!["istio-system".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.nameservers[0].name.to_ascii(), "ns.fleet.example.");
    }

    #[test]
    fn defaults() {
        let c = parse("clusters: []\n").unwrap();
        assert_eq!(c.zone.to_ascii(), DEFAULT_ZONE);
        assert_eq!(c.ttl, 5);
        assert_eq!(c.listen.dns.port(), 53);
        assert!(
            c.allow
                .iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()))
        );
        assert_eq!(c.max_udp_payload, 1232);
    }

    #[test]
    fn discover_section() {
        assert_eq!(
            parse("clusters: []\n").unwrap().discover,
            Discover::default()
        );
        let defaults = IstioRemoteSecrets {
            namespace: "istio-system".into(),
            label_selector: "istio/multiCluster=true".into(),
        };
        assert_eq!(IstioRemoteSecrets::default(), defaults);
        for text in [
            "discover: { istio_remote_secrets: {} }\n",
            // Present but empty: on, with the defaults (not silently off).
            "discover:\n  istio_remote_secrets:\n",
        ] {
            assert_eq!(
                parse(text).unwrap().discover.istio_remote_secrets,
                Some(defaults.clone()),
                "{text}"
            );
        }
        let c = parse(
            "discover:\n  istio_remote_secrets: { namespace: mesh, label_selector: \"a=b\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.discover.istio_remote_secrets,
            Some(IstioRemoteSecrets {
                namespace: "mesh".into(),
                label_selector: "a=b".into()
            })
        );
        assert_eq!(
            parse("discover: {}\n").unwrap().discover,
            Discover::default()
        );
    }

    /// Each bad config yields an error that names the file, the line and the key.
    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &[&str])] = &[
            (
                "zone: a..b\n",
                &["meshdns.yaml:1:", "zone", "not a domain name"],
            ),
            (
                "ttl: 5 parsecs\n",
                &["meshdns.yaml", "line 1", "invalid duration"],
            ),
            ("ttl: 250ms\n", &["meshdns.yaml:1:", "ttl", "whole seconds"]),
            ("tll: 5s\n", &["meshdns.yaml", "line 1", "tll"]),
            ("allow: [10.0.0.0/33]\n", &["meshdns.yaml", "line 1"]),
            (
                "clusters:\n  - name: Alpha\n    source: { kube: {} }\n",
                &["meshdns.yaml:2:", "clusters[0].name", "not a DNS label"],
            ),
            (
                "clusters:\n  - name: a\n    source: { kube: {} }\n  - name: a\n    source: { kube: {} }\n",
                &["meshdns.yaml:4:", "clusters[1].name", "duplicate"],
            ),
            (
                "clusters:\n  - name: a\n    networks: [10.0.0.0/8, nonsense]\n    source: { kube: {} }\n",
                &["meshdns.yaml", "line 3"],
            ),
            (
                "clusters:\n  - name: a\n    source: { kube: { kubecfg: x } }\n",
                &["meshdns.yaml", "line 3", "kubecfg"],
            ),
            (
                "clusters:\n  - name: a\n    source: { ftp: x }\n",
                &["meshdns.yaml", "line 3", "ftp"],
            ),
            (
                "local_cluster: zeta\nclusters: []\n",
                &["meshdns.yaml:1:", "local_cluster", "zeta"],
            ),
            (
                "max_udp_payload: 100\n",
                &["meshdns.yaml:1:", "max_udp_payload"],
            ),
            ("zone: [a]\n", &["meshdns.yaml", "line 1"]),
            (
                "discover:\n  istio_remote_secrets: { namespace: istio-system, selector: x }\n",
                &["meshdns.yaml", "line 2", "selector"],
            ),
            (
                "discover:\n  consul: {}\n",
                &["meshdns.yaml", "line 2", "consul"],
            ),
            (
                "discover:\n  istio_remote_secrets: { namespace: Istio_System }\n",
                &[
                    "meshdns.yaml:2:",
                    "discover.istio_remote_secrets.namespace",
                    "not a namespace",
                ],
            ),
            (
                "discover:\n  istio_remote_secrets:\n    label_selector: \" \"\n",
                &[
                    "meshdns.yaml:3:",
                    "discover.istio_remote_secrets.label_selector",
                    "empty",
                ],
            ),
            (
                "clusters:\n  - name: a\n    source: { kube: { inline_kubeconfig: x } }\n",
                &["meshdns.yaml", "line 3", "inline_kubeconfig"],
            ),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "error for {text:?} lacks {n:?}: {e}");
            }
        }
    }

    #[test]
    fn pubsub_sources_and_publish() {
        let c = parse(
            "local_cluster: alpha\n\
             publish: { project: fleet-host, resync: 2m }\n\
             clusters:\n\
             \x20 - { name: alpha, source: { kube: {} } }\n\
             \x20 - { name: beta, source: { pubsub: { project: fleet-host } } }\n\
             \x20 - name: gamma\n\
             \x20   source:\n\
             \x20     pubsub:\n\
             \x20       project: fleet-host\n\
             \x20       topic: projects/other/topics/gamma-slice\n\
             \x20       subscription: gamma-for-alpha\n\
             \x20       requests_topic: \"\"\n",
        )
        .unwrap();
        let p = c.publish.as_ref().unwrap();
        assert_eq!(p.topic, "projects/fleet-host/topics/meshdns-alpha");
        assert_eq!(p.resync, Duration::from_secs(120));
        assert_eq!(p.lease_name, "meshdns-publisher");
        assert_eq!(p.lease_duration, Duration::from_secs(15));
        assert_eq!(
            p.requests_topic.as_deref(),
            Some("projects/fleet-host/topics/meshdns-requests")
        );
        let SourceConfig::PubSub(beta) = &c.clusters[1].source else {
            panic!("not pubsub")
        };
        assert_eq!(beta.topic, "projects/fleet-host/topics/meshdns-beta");
        assert_eq!(beta.subscription, None);
        assert_eq!(beta.subscription_expiry, Duration::from_secs(86_400));
        let SourceConfig::PubSub(gamma) = &c.clusters[2].source else {
            panic!("not pubsub")
        };
        assert_eq!(gamma.topic, "projects/other/topics/gamma-slice");
        assert_eq!(
            gamma.subscription.as_deref(),
            Some("projects/fleet-host/subscriptions/gamma-for-alpha")
        );
        assert_eq!(gamma.requests_topic, None);
    }

    #[test]
    fn bad_pubsub_settings_are_errors_naming_the_key() {
        let cases = [
            (
                "publish: { project: p1x }\nclusters: [{ name: a, source: { kube: {} } }]\n",
                "needs local_cluster",
            ),
            (
                "local_cluster: a\npublish: { project: p1x }\nclusters: [{ name: a, source: { file: a.yaml } }]\n",
                "needs a kube source",
            ),
            (
                "local_cluster: a\npublish: { project: \"no way\" }\nclusters: [{ name: a, source: { kube: {} } }]\n",
                "publish.project",
            ),
            (
                "local_cluster: a\npublish: { project: p1x, lease_duration: 1s }\nclusters: [{ name: a, source: { kube: {} } }]\n",
                "publish.lease_duration",
            ),
            (
                "local_cluster: a\npublish: { project: p1x, max_message_bytes: 20000000 }\nclusters: [{ name: a, source: { kube: {} } }]\n",
                "publish.max_message_bytes",
            ),
            (
                "clusters: [{ name: b, source: { pubsub: { project: p1x, topic: a/b } } }]\n",
                "clusters[0].source.pubsub.topic",
            ),
            (
                "clusters: [{ name: b, source: { pubsub: { project: p1x, subscription_expiry: 1h } } }]\n",
                "clusters[0].source.pubsub.subscription_expiry",
            ),
            (
                "clusters: [{ name: b, source: { pubsub: { project: p1x, typo: 1 } } }]\n",
                "typo",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "error for {text:?} lacks {want:?}: {e}");
            assert!(e.contains("meshdns.yaml:"), "no file:line in {e}");
        }
    }
}
