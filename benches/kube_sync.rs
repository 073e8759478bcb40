//! Kubernetes source benchmark (not a test: figures, no pass/fail).
//!
//! 1. Initial sync: 3 fake API servers (clusters) × SERVICES services × 10 endpoints; time from
//!    starting `meshdns serve` to `/readyz` 200, and its RSS once synced.
//! 2. Propagation: CHANGES endpoint changes in one cluster; for each, the time from the fake
//!    API server's write (which emits the watch event) until a UDP query at the meshdns
//!    instance answers the new address. p50 / p99 / max.
//!
//! Run: `cargo bench --bench kube_sync` (or `scripts/bench-kube`). Sizes: MESHDNS_BENCH_SERVICES
//! (default 10000), MESHDNS_BENCH_CHANGES (default 500).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "type": "ClusterIP", "ports": [{ "name": "http", "port": 80 }] },
    })
}

fn slice(ns: &str, name: &str, svc: &str, ips: &[String]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true }, "zone": "z1" }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": ns, "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ready(ops: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(ops) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn start(config: &std::path::Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshdns"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--dns-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,meshdns=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshdns");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("meshdns listening"))
        .expect("listening line");
    std::thread::spawn(move || for _ in lines {});
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (child, field("dns="), field("ops="))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let services = env_usize("MESHDNS_BENCH_SERVICES", 10_000);
    let changes = env_usize("MESHDNS_BENCH_CHANGES", 500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["alpha", "beta", "gamma"];
    let mut yaml = String::from("allow: [127.0.0.0/8]\nlocal_cluster: alpha\nclusters:\n");
    let mut servers = Vec::new();
    let loaded = Instant::now();
    for (c, name) in names.iter().enumerate() {
        let s = rt.block_on(FakeApiServer::start()).unwrap();
        let mut objs = Vec::with_capacity(services * 2);
        for i in 0..services {
            let svc = format!("svc-{i}");
            let ips: Vec<String> = (0..10)
                .map(|e| {
                    format!(
                        "10.{}.{}.{}",
                        c * 16 + (i / 2000),
                        (i % 2000) / 8,
                        (i % 8) * 10 + e + 1
                    )
                })
                .collect();
            objs.push(service("bench", &svc));
            objs.push(slice("bench", &format!("{svc}-1"), &svc, &ips));
        }
        s.apply_many(objs);
        s.write_kubeconfig(&dir.path().join(format!("{name}.kubeconfig")), name)
            .unwrap();
        yaml.push_str(&format!(
            "  - name: {name}\n    source: {{ kube: {{ kubeconfig: {name}.kubeconfig }} }}\n"
        ));
        servers.push(s);
    }
    let config = dir.path().join("meshdns.yaml");
    std::fs::write(&config, yaml).unwrap();
    eprintln!(
        "fleet: 3 clusters x {services} services x 10 endpoints = {} endpoints (fake API servers filled in {:.1?})",
        3 * services * 10,
        loaded.elapsed()
    );

    // 1. Initial sync.
    let t0 = Instant::now();
    let (mut child, dns, ops) = start(&config);
    while !ready(ops) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sync = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(child.id());

    // 2. Propagation: change one endpoint of beta's svc-<k>, time until the answer shows it.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 4096];
    let mut lat = Vec::with_capacity(changes);
    for k in 0..changes {
        let svc = format!("svc-{}", k % services);
        let new_ip = format!("10.250.{}.{}", k / 250, k % 250 + 1);
        let mut ips: Vec<String> = (0..9).map(|e| format!("10.251.0.{}", e + 1)).collect();
        ips.push(new_ip.clone());
        let name = Name::from_ascii(format!("beta.{svc}.bench.svc.clusterset.local.")).unwrap();
        let mut q = Message::query();
        q.add_query(Query::query(name, RecordType::A));
        let target: std::net::Ipv4Addr = new_ip.parse().unwrap();
        let obj = slice("bench", &format!("{svc}-1"), &svc, &ips);
        let t = Instant::now();
        servers[1].apply(obj);
        loop {
            q.metadata.id = q.metadata.id.wrapping_add(1);
            sock.send_to(&q.to_vec().unwrap(), dns).unwrap();
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(resp) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if resp.metadata.id == q.metadata.id
                && resp
                    .answers
                    .iter()
                    .any(|r| matches!(&r.data, RData::A(a) if a.0 == target))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                panic!("change {k} not seen after 10 s");
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let _ = child.kill();
    let _ = child.wait();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| initial sync, 3 clusters x {services} services x 10 endpoints ({} endpoints) | {:.2} s |",
        3 * services * 10,
        sync.as_secs_f64()
    );
    println!("| RSS after sync | {rss:.0} MiB |");
    println!(
        "| propagation p50 over {changes} changes (API write -> answer at the instance) | {:.2} ms |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| propagation p99 | {:.2} ms |",
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| propagation max | {:.2} ms |",
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}
