//! Scale benchmark (figures, no pass/fail): large fleets from fake API servers.
//!
//! Scenarios: one cluster with 1,000,000 endpoints (50,000 services × 20), and 20 clusters ×
//! 50,000 endpoints (2,500 services × 20 each). For each: initial sync time (start to
//! `/readyz`), RSS once synced, the time the catalog takes to apply one changed endpoint
//! (`meshdns_catalog_build_seconds` after each change; median and max over 50 changes) and the
//! end-to-end propagation of those changes, and UDP throughput with dnsperf when it is
//! installed (`scripts/bench` installs it).
//!
//! Run: `cargo bench --bench scale` (`MESHDNS_SCALE=one|many` for one scenario).

mod support;

use std::io::Write;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};
use support::{http, metric, ready, rss_mib, start};

const PER_SERVICE: usize = 20;

struct Scenario {
    name: &'static str,
    clusters: usize,
    services: usize,
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "scale" },
        "spec": { "type": "ClusterIP", "ports": [{ "name": "http", "port": 80 }] },
    })
}

fn slice(svc: &str, ips: &[String]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true }, "zone": "zone-a", "nodeName": "node-1" }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": format!("{svc}-1"), "namespace": "scale", "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })
}

/// The endpoint addresses of service `i` in cluster `c` (distinct over the whole fleet).
fn ips(c: usize, i: usize, generation: usize) -> Vec<String> {
    (0..PER_SERVICE)
        .map(|e| {
            let n = (i * PER_SERVICE + e) as u32;
            format!(
                "10.{}.{}.{}",
                64 + c * 4 + (n >> 16) as usize + generation * 2,
                (n >> 8) & 255,
                n & 255
            )
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(s: &Scenario, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    // Ready only when really synced, however long it takes.
    let mut yaml = String::from("allow: [127.0.0.0/8]\nready_timeout: 1h\nclusters:\n");
    let mut servers = Vec::new();
    let filled = Instant::now();
    for c in 0..s.clusters {
        let api = rt.block_on(FakeApiServer::start()).unwrap();
        let mut objs = Vec::with_capacity(s.services * 2);
        for i in 0..s.services {
            let svc = format!("svc-{i}");
            objs.push(service(&svc));
            objs.push(slice(&svc, &ips(c, i, 0)));
        }
        api.apply_many(objs);
        let name = format!("c{c}");
        api.write_kubeconfig(&dir.path().join(format!("{name}.kubeconfig")), &name)
            .unwrap();
        yaml.push_str(&format!(
            "  - name: {name}\n    source: {{ kube: {{ kubeconfig: {name}.kubeconfig }} }}\n"
        ));
        servers.push(api);
    }
    let config = dir.path().join("meshdns.yaml");
    std::fs::write(&config, yaml).unwrap();
    let endpoints = s.clusters * s.services * PER_SERVICE;
    eprintln!(
        "{}: {} clusters x {} services x {PER_SERVICE} endpoints = {endpoints} endpoints (fake API servers filled in {:.1?})",
        s.name,
        s.clusters,
        s.services,
        filled.elapsed()
    );

    let t0 = Instant::now();
    let arena = std::env::var("SCALE_MALLOC_ARENA_MAX").ok();
    let env: Vec<(&str, &str)> = arena
        .iter()
        .map(|v| ("MALLOC_ARENA_MAX", v.as_str()))
        .collect();
    // Killed however this function ends.
    let (child, dns, ops) = start(&config, None, &env);
    while !ready(ops) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sync = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_mib(child.0.id());

    // One changed endpoint at a time: the catalog's build time, and the end-to-end time.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 4096];
    let (mut build, mut e2e) = (Vec::new(), Vec::new());
    for k in 0..50 {
        let i = (k * 7919) % s.services;
        let svc = format!("svc-{i}");
        let mut addrs = ips(0, i, 0);
        let new_ip = format!("10.250.{}.{}", k / 200, k % 200 + 1);
        addrs[0] = new_ip.clone();
        let target: std::net::Ipv4Addr = new_ip.parse().unwrap();
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(format!("c0.{svc}.scale.svc.clusterset.local.")).unwrap(),
            RecordType::A,
        ));
        let t = Instant::now();
        servers[0].apply(slice(&svc, &addrs));
        loop {
            q.metadata.id = q.metadata.id.wrapping_add(1);
            sock.send_to(&q.to_vec().unwrap(), dns).unwrap();
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(r) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if r.answers
                .iter()
                .any(|a| matches!(&a.data, RData::A(x) if x.0 == target))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let catalog = http(ops, "/debug/catalog");
                let head: String = catalog.lines().take(30).collect::<Vec<_>>().join("\n");
                panic!("change {k} ({svc} -> {new_ip}) not seen after 10 s; catalog:\n{head}");
            }
        }
        e2e.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(b) = metric(ops, "meshdns_catalog_build_seconds ") {
            build.push(b * 1e3);
        }
    }
    let build_max = build.iter().cloned().fold(0.0, f64::max);
    let e2e_max = e2e.iter().cloned().fold(0.0, f64::max);

    // Throughput: dnsperf on merged and per-cluster names, when installed.
    let qps = if Command::new("dnsperf").arg("-h").output().is_ok() {
        let qfile = dir.path().join("queries");
        let mut f = std::fs::File::create(&qfile).unwrap();
        for k in 0..20_000 {
            let i = (k * 104_729) % s.services;
            let c = k % s.clusters;
            if k % 2 == 0 {
                writeln!(f, "svc-{i}.scale.svc.clusterset.local A").unwrap();
            } else {
                writeln!(f, "c{c}.svc-{i}.scale.svc.clusterset.local A").unwrap();
            }
        }
        drop(f);
        let out = Command::new("dnsperf")
            .args([
                "-s",
                "127.0.0.1",
                "-p",
                &dns.port().to_string(),
                "-l",
                "10",
                "-c",
                "4",
                "-q",
                "200",
                "-d",
            ])
            .arg(&qfile)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Queries per second:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "-".into())
    } else {
        "- (dnsperf not installed)".into()
    };
    let rss_after = rss_mib(child.0.id());

    println!("\n### {}: {endpoints} endpoints\n", s.name);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| initial sync (start to /readyz) | {:.2} s |",
        sync.as_secs_f64()
    );
    println!("| RSS once synced | {rss:.0} MiB |");
    println!("| RSS after the changes and the query load | {rss_after:.0} MiB |");
    println!(
        "| catalog build for one changed endpoint, median / max of {} | {:.3} ms / {:.3} ms |",
        build.len(),
        median(&mut build),
        build_max
    );
    println!(
        "| API write to changed answer, median / max of {} | {:.2} ms / {:.2} ms |",
        e2e.len(),
        median(&mut e2e),
        e2e_max
    );
    println!("| UDP qps (dnsperf, 10 s, no pinning) | {qps} |");
}

fn main() {
    let which = std::env::var("MESHDNS_SCALE").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let scenarios = [
        Scenario {
            name: "one",
            clusters: 1,
            services: 50_000,
        },
        Scenario {
            name: "many",
            clusters: 20,
            services: 2_500,
        },
    ];
    for s in &scenarios {
        if which.is_empty() || which == s.name {
            run(s, &rt);
        }
    }
}
