//! Micro-benchmarks of the hot paths (divan), on the benchmark fleet: 5 clusters × 2,000
//! services each, every service in 2 clusters with 5 ready endpoints in each (5,000 services).
//!
//! - name parsing (`zone::names::parse`),
//! - lookup: resolving a question against a snapshot (`Snapshot::resolve`), per answer kind,
//! - response encoding: the full UDP path (`Handler::answer_udp`: decide, build, encode) and a
//!   fast-path hit (parse the question, find the cached answer, patch it),
//! - snapshot update: what the catalog does for one changed service (rebuild its view, patch
//!   the zone's persistent maps).
//!
//! Run: `cargo bench --bench hot_paths`.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use meshdns::catalog::{Catalog, CatalogReader, Update};
use meshdns::config::Config;
use meshdns::dns::cache::{AnswerCache, Entry, Question};
use meshdns::dns::{DnsSettings, Handler};
use meshdns::metrics::Metrics;
use meshdns::model::{AnswerPolicy, Endpoint, Port, Protocol as Proto, Service, ServiceKey, Slice};
use meshdns::zone::locality::Locality;
use meshdns::zone::names;
use meshdns::zone::records::ServiceView;

fn main() {
    divan::main();
}

const CLUSTERS: usize = 5;
const PER_CLUSTER: usize = 2_000;

fn config() -> Config {
    let mut yaml = String::from("allow: [127.0.0.0/8]\nlocal_cluster: c0\nclusters:\n");
    for c in 0..CLUSTERS {
        yaml.push_str(&format!(
            "  - {{ name: c{c}, region: r{}, zones: [z{c}], networks: [10.{c}.0.0/16], source: {{ file: c{c}.yaml }} }}\n",
            c % 2
        ));
    }
    Config::parse(Path::new("/bench/meshdns.yaml"), &yaml).unwrap()
}

/// Service `s` of the fleet lives in clusters `s % 5` and `(s + 1) % 5`.
fn service(c: usize, s: usize) -> Service {
    Service::Endpoints {
        ports: vec![Port {
            name: Some("http".into()),
            port: 8080,
            protocol: Proto::Tcp,
        }],
        endpoints: (0..5)
            .map(|e| Endpoint {
                ip: format!("10.{c}.{}.{}", s / 50, (s % 50) * 5 + e + 1)
                    .parse()
                    .unwrap(),
                hostname: (e == 0).then(|| Arc::from(format!("pod-{s}-0").as_str())),
                zone: Some(Arc::from(format!("z{c}").as_str())),
                node: None,
                ready: true,
            })
            .collect(),
        policy: AnswerPolicy::default(),
    }
}

fn slices() -> Vec<Slice> {
    let mut slices = vec![Slice::new(); CLUSTERS];
    for s in 0..CLUSTERS * PER_CLUSTER / 2 {
        for c in [s % CLUSTERS, (s + 1) % CLUSTERS] {
            slices[c].insert(
                ServiceKey::new("bench", &format!("svc-{s}")),
                Arc::new(service(c, s)),
            );
        }
    }
    slices
}

/// A synced catalog with the whole fleet, and a handler on it.
fn fleet() -> (CatalogReader, Handler, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = config();
    let catalog = Catalog::new(&config);
    let reader = catalog.reader();
    let sender = catalog.sender();
    for (c, slice) in slices().into_iter().enumerate() {
        sender
            .source(&format!("c{c}").as_str().into())
            .send(Update::Replace(slice));
    }
    drop(sender);
    rt.spawn(catalog.run());
    rt.block_on(reader.wait_for(|s| s.all_synced()));
    let metrics = Metrics::new(reader.clone());
    let settings = Arc::new(ArcSwap::from_pointee(DnsSettings::from_config(&config)));
    let handler = Handler::new(reader.clone(), settings, metrics.dns.clone());
    (reader, handler, rt)
}

const NAMES: &[&str] = &[
    "svc-42.bench.svc.clusterset.local.",
    "c2.svc-42.bench.svc.clusterset.local.",
    "pod-42-0.c2.svc-42.bench.svc.clusterset.local.",
    "_http._tcp.svc-42.bench.svc.clusterset.local.",
    "nope.bench.svc.clusterset.local.",
];

#[divan::bench(args = NAMES)]
fn name_parsing(bencher: divan::Bencher, name: &str) {
    let origin = LowerName::from(Name::from_str("clusterset.local.").unwrap());
    let name = LowerName::from(Name::from_str(name).unwrap());
    bencher.bench(|| {
        divan::black_box(names::parse(&origin, divan::black_box(&name)));
    });
}

const QUESTIONS: &[(&str, &str)] = &[
    ("A merged", "svc-42.bench.svc.clusterset.local. A"),
    ("A cluster", "c2.svc-42.bench.svc.clusterset.local. A"),
    (
        "A endpoint",
        "pod-42-0.c2.svc-42.bench.svc.clusterset.local. A",
    ),
    ("AAAA nodata", "svc-42.bench.svc.clusterset.local. AAAA"),
    ("SRV", "_http._tcp.svc-42.bench.svc.clusterset.local. SRV"),
    ("NXDOMAIN", "nope.bench.svc.clusterset.local. A"),
];

fn question(q: &str) -> (Name, RecordType) {
    let (name, qtype) = q.split_once(' ').unwrap();
    (
        Name::from_str(name).unwrap(),
        RecordType::from_str(qtype).unwrap(),
    )
}

#[divan::bench(args = QUESTIONS.iter().map(|(k, _)| *k))]
fn lookup(bencher: divan::Bencher, kind: &str) {
    let (reader, _handler, _rt) = fleet();
    let (name, qtype) = question(QUESTIONS.iter().find(|(k, _)| *k == kind).unwrap().1);
    let snapshot = reader.load();
    let client = Locality::default();
    bencher.bench(|| {
        divan::black_box(snapshot.resolve(&name, qtype, &client));
    });
}

fn packet(q: &str) -> Vec<u8> {
    let (name, qtype) = question(q);
    let mut m = Message::query();
    m.metadata.id = 7;
    m.add_query(Query::query(name, qtype));
    m.to_vec().unwrap()
}

/// The full path: decode, decide, build records, encode (what a cache miss costs).
#[divan::bench(args = QUESTIONS.iter().map(|(k, _)| *k))]
fn encode_full_path(bencher: divan::Bencher, kind: &str) {
    let (_reader, handler, _rt) = fleet();
    let bytes = packet(QUESTIONS.iter().find(|(k, _)| *k == kind).unwrap().1);
    let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    bencher.bench(|| {
        let request = Request::from_bytes(bytes.clone(), src, Protocol::Udp).unwrap();
        divan::black_box(handler.answer_udp(&request));
    });
}

/// A fast-path hit: parse the question, key it, find the entry, patch the answer.
#[divan::bench]
fn encode_cache_hit(bencher: divan::Bencher) {
    let (_reader, handler, _rt) = fleet();
    let bytes = packet("svc-42.bench.svc.clusterset.local. A");
    let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let request = Request::from_bytes(bytes.clone(), src, Protocol::Udp).unwrap();
    let (answer, _) = handler.answer_udp(&request);
    let q = Question::parse(&bytes).unwrap();
    let cache = AnswerCache::default();
    let mut key = Vec::new();
    q.key(1232, 0, &mut key);
    cache.generation(1, 1).insert(
        &key,
        Entry {
            bytes: answer.into_boxed_slice(),
            qname_len: q.qname.len(),
            counter: Default::default(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            truncated: false,
        },
    );
    let mut out = Vec::with_capacity(512);
    bencher.bench_local(|| {
        let q = Question::parse(divan::black_box(&bytes)).unwrap();
        q.key(1232, 0, &mut key);
        let entry = cache.generation(1, 1).get(&key).unwrap();
        entry.answer(&bytes, &mut out);
        divan::black_box(&out);
    });
}

/// One service changes: rebuild its view from its clusters and patch the zone (the rest of
/// the 5,000-service zone is shared with the previous snapshot).
#[divan::bench]
fn snapshot_update(bencher: divan::Bencher) {
    let (reader, _handler, _rt) = fleet();
    let snapshot = reader.load();
    let key = ServiceKey::new("bench", "svc-42");
    let changed = service(2, 4242);
    let other = snapshot
        .cluster("c3")
        .unwrap()
        .slice
        .get(&key)
        .unwrap()
        .clone();
    let (c2, c3) = ("c2".into(), "c3".into());
    bencher.bench(|| {
        let mut zone = snapshot.zone.clone();
        let view = ServiceView::build(
            key.clone(),
            [(&c2, &changed), (&c3, &*other)],
            &zone.settings,
        );
        zone.set_service(&key, view.map(Arc::new));
        divan::black_box(zone);
    });
}
