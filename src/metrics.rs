//! Prometheus metrics: one registry made in `main` and handed down.
//!
//! Query counters are updated on the request path. Everything about clusters and the catalog
//! is read from the current snapshot at scrape time (a [`Collector`]), so it can never drift
//! from what is served.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::catalog::{CatalogReader, unix_now};
use crate::discovery::Discovered;
use crate::model::{ClusterOrigin, SourceState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub qtype: String,
    pub rcode: String,
    pub transport: &'static str,
}

/// The request-path metrics.
#[derive(Debug)]
pub struct DnsMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub latency: Histogram,
    pub truncated: Counter,
    pub refused_clients: Counter,
    /// UDP answers served from the cache of encoded answers.
    pub cached: Counter,
}

impl DnsMetrics {
    /// The `meshdns_dns_queries_total` counter of one (qtype, rcode, transport).
    pub fn queries_of(&self, qtype: String, rcode: String, transport: &'static str) -> Counter {
        self.queries
            .get_or_create(&QueryLabels {
                qtype,
                rcode,
                transport,
            })
            .clone()
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub dns: Arc<DnsMetrics>,
}

impl Metrics {
    pub fn new(catalog: CatalogReader) -> Metrics {
        let mut registry = Registry::default();
        let dns = Arc::new(DnsMetrics {
            queries: Family::default(),
            // 10 µs … ~ 0.3 s
            latency: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            truncated: Counter::default(),
            refused_clients: Counter::default(),
            cached: Counter::default(),
        });
        registry.register(
            "meshdns_dns_queries",
            "DNS queries answered, by query type, response code and transport",
            dns.queries.clone(),
        );
        registry.register(
            "meshdns_dns_request_duration_seconds",
            "Time from a parsed request to its response handed to the socket",
            dns.latency.clone(),
        );
        registry.register(
            "meshdns_dns_truncated",
            "UDP responses sent with TC=1 because they did not fit",
            dns.truncated.clone(),
        );
        registry.register(
            "meshdns_dns_refused_clients",
            "Queries refused because the client is outside `allow`",
            dns.refused_clients.clone(),
        );
        registry.register(
            "meshdns_dns_cached_answers",
            "UDP answers served from the cache of encoded answers (the fast path)",
            dns.cached.clone(),
        );
        registry.register_collector(Box::new(CatalogCollector { catalog }));
        fanout().register(&mut registry);
        Metrics { registry, dns }
    }

    /// Adds discovery's metrics, read from what it publishes at scrape time.
    pub fn register_discovery(&mut self, discovered: tokio::sync::watch::Receiver<Discovered>) {
        self.registry
            .register_collector(Box::new(DiscoveryCollector { discovered }));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// Per-cluster and catalog metrics, read from the snapshot at scrape time.
struct CatalogCollector {
    catalog: CatalogReader,
}

impl std::fmt::Debug for CatalogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterOriginLabels {
    cluster: String,
    origin: &'static str,
    /// `<namespace>/<name>` of the Secret a cluster was discovered in; empty for the config.
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    cluster: String,
    state: &'static str,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (String, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (cluster, v) in values {
        let labels = ClusterLabel { cluster };
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (cluster, v) in values {
        let labels = ClusterLabel { cluster };
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for CatalogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.catalog.load();
        let now = unix_now();
        let clusters = &snap.clusters;
        let name = |c: &crate::model::ClusterStatus| c.name.to_string();
        gauge(
            &mut encoder,
            "meshdns_cluster_services",
            "Services in a cluster's slice",
            clusters.iter().map(|c| (name(c), c.slice.len() as i64)),
        )?;
        gauge(
            &mut encoder,
            "meshdns_cluster_endpoints",
            "Ready (answered) endpoints in a cluster's slice",
            clusters.iter().map(|c| (name(c), c.endpoints as i64)),
        )?;
        gauge(
            &mut encoder,
            "meshdns_cluster_seconds_since_change",
            "Seconds since a cluster's data last changed (-1: never)",
            clusters.iter().map(|c| {
                let age = c
                    .last_change_unix
                    .map_or(-1, |t| now.saturating_sub(t) as i64);
                (name(c), age)
            }),
        )?;
        counter(
            &mut encoder,
            "meshdns_cluster_relists",
            "Whole-slice replacements: initial lists, relists, file reloads",
            clusters.iter().map(|c| (name(c), c.relists)),
        )?;
        counter(
            &mut encoder,
            "meshdns_cluster_errors",
            "Failures talking to a cluster's source (watch errors, each followed by a restart of that watch with backoff; unreachable API server)",
            clusters.iter().map(|c| (name(c), c.errors)),
        )?;
        counter(
            &mut encoder,
            "meshdns_cluster_skipped",
            "Malformed objects (or parts of objects) skipped while the rest serves",
            clusters.iter().map(|c| (name(c), c.skipped)),
        )?;
        counter(
            &mut encoder,
            "meshdns_cluster_rejected",
            "Inputs rejected as invalid, keeping the last good slice (e.g. a broken file)",
            clusters.iter().map(|c| (name(c), c.rejected)),
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "meshdns_cluster_source_state",
                "1 for the current state of a cluster's source",
                None,
                MetricType::Gauge,
            )?;
            for c in clusters {
                for state in ["syncing", "synced", "stale", "expired"] {
                    let labels = StateLabels {
                        cluster: name(c),
                        state,
                    };
                    let v = i64::from(c.state.name() == state);
                    ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "meshdns_discovery_clusters",
                "Clusters served, by where they come from: the config, or a discovered Istio remote secret",
                None,
                MetricType::Gauge,
            )?;
            for origin in [ClusterOrigin::Config.kind(), "istio-secret"] {
                let n = clusters
                    .iter()
                    .filter(|c| c.origin.kind() == origin)
                    .count();
                ConstGauge::new(n as i64).encode(m.encode_family(&OriginLabel { origin })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "meshdns_cluster_origin",
                "1 per cluster, labelled with where it comes from (and the Secret it was found in)",
                None,
                MetricType::Gauge,
            )?;
            for c in clusters {
                let labels = ClusterOriginLabels {
                    cluster: name(c),
                    origin: c.origin.kind(),
                    secret: match &c.origin {
                        ClusterOrigin::Config => String::new(),
                        ClusterOrigin::IstioSecret { namespace, name } => {
                            format!("{namespace}/{name}")
                        }
                    },
                };
                ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
            }
        }
        let stale = clusters
            .iter()
            .filter(|c| matches!(c.state, SourceState::Stale { .. }))
            .count();
        let mut m = encoder.encode_descriptor(
            "meshdns_catalog_serial",
            "SOA serial of the served snapshot",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snap.serial())).encode(m)?;
        m = encoder.encode_descriptor(
            "meshdns_catalog_services",
            "Services served (merged over clusters)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(snap.zone.services.len() as i64).encode(m)?;
        m = encoder.encode_descriptor(
            "meshdns_catalog_records",
            "Records served: SOA, NS, glue, addresses of every name, SRV, CNAME, PTR",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(snap.zone.record_count() as i64).encode(m)?;
        m = encoder.encode_descriptor(
            "meshdns_catalog_build_seconds",
            "Time to build the served snapshot",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(snap.build_micros as f64 / 1e6).encode(m)?;
        m = encoder.encode_descriptor(
            "meshdns_catalog_stale_clusters",
            "Clusters whose source is stale",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(stale as i64).encode(m)?;
        Ok(())
    }
}

/// Discovery's counters, read from what it publishes at scrape time.
struct DiscoveryCollector {
    discovered: tokio::sync::watch::Receiver<Discovered>,
}

impl std::fmt::Debug for DiscoveryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiscoveryCollector")
    }
}

impl Collector for DiscoveryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (secrets, skipped, errors) = {
            let d = self.discovered.borrow();
            (d.secrets.len(), d.skipped, d.errors)
        };
        let m = encoder.encode_descriptor(
            "meshdns_discovery_secrets",
            "Istio remote secrets read in the local cluster",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(secrets as i64).encode(m)?;
        let m = encoder.encode_descriptor(
            "meshdns_discovery_skipped",
            "Malformed remote secrets or kubeconfigs in them skipped, once per resourceVersion",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(skipped).encode(m)?;
        let m = encoder.encode_descriptor(
            "meshdns_discovery_errors",
            "Failures reading the remote secrets from the local API server",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(errors).encode(m)?;
        Ok(())
    }
}

/// Pub/Sub fan-out figures (publisher and `pubsub` sources), process-wide: sources and the
/// publisher are started and restarted on their own, and count here whichever instance runs.
#[derive(Debug)]
pub struct FanoutMetrics {
    /// Messages a `pubsub` source received, by cluster and what became of them.
    pub received: Family<FanoutLabels, Counter>,
    /// Time from a publisher sending a message to the change being served here.
    pub propagation: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    /// Messages published, by kind (`snapshot` parts, `delta`).
    pub published: Family<KindLabels, Counter>,
    /// Bytes of the messages published (their data), by kind: what Pub/Sub quotas count.
    pub published_bytes: Family<KindLabels, Counter>,
    pub publish_errors: Counter,
    /// Snapshot requests, by direction (`sent` by sources, `answered` by the publisher).
    pub requests: Family<KindLabels, Counter>,
    /// The epoch of this instance's leadership; 0 while it is not the publisher.
    pub leader_epoch: prometheus_client::metrics::gauge::Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FanoutLabels {
    pub cluster: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn propagation_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// The process's fan-out metrics.
pub fn fanout() -> &'static FanoutMetrics {
    static FANOUT: std::sync::LazyLock<FanoutMetrics> =
        std::sync::LazyLock::new(|| FanoutMetrics {
            received: Family::default(),
            propagation: Family::new_with_constructor(propagation_histogram),
            published: Family::default(),
            published_bytes: Family::default(),
            publish_errors: Counter::default(),
            requests: Family::default(),
            leader_epoch: Default::default(),
        });
    &FANOUT
}

impl FanoutMetrics {
    pub fn received(&self, cluster: &str, outcome: &'static str) {
        self.received
            .get_or_create(&FanoutLabels {
                cluster: cluster.to_string(),
                outcome,
            })
            .inc();
    }

    fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "meshdns_pubsub_received_messages",
            "Pub/Sub messages a pubsub source received, by cluster and outcome",
            self.received.clone(),
        );
        registry.register(
            "meshdns_pubsub_propagation_seconds",
            "From a publisher sending a change to it being served here (clocks of two machines)",
            self.propagation.clone(),
        );
        registry.register(
            "meshdns_pubsub_published_messages",
            "Messages this instance published as its cluster's publisher, by kind",
            self.published.clone(),
        );
        registry.register(
            "meshdns_pubsub_published_bytes",
            "Bytes of message data this instance published as its cluster's publisher, by kind",
            self.published_bytes.clone(),
        );
        registry.register(
            "meshdns_pubsub_publish_errors",
            "Publish calls that failed (retried, or followed by a full snapshot)",
            self.publish_errors.clone(),
        );
        registry.register(
            "meshdns_pubsub_snapshot_requests",
            "Full-snapshot requests sent (by sources) and answered (by the publisher)",
            self.requests.clone(),
        );
        registry.register(
            "meshdns_pubsub_publisher_epoch",
            "Epoch of this instance's leadership of its cluster's topic; 0: not the publisher",
            self.leader_epoch.clone(),
        );
    }
}
