//! Pub/Sub fan-out benchmark (figures, no pass/fail).
//!
//! 1. Propagation, side by side: CHANGES endpoint changes in cluster alpha (SERVICES services
//!    × 10 endpoints); for each, the time from the fake API server's write until a UDP query
//!    answers the new address, at two instances of cluster beta at once: one watching alpha's
//!    API server directly (`kube` source), one reading alpha from Pub/Sub (alpha's publisher →
//!    fake Pub/Sub → `pubsub` source). p50 / p99 / max of each, and their ratio.
//!    Before that, the initial sync of alpha through Pub/Sub: from the subscriber's start to
//!    alpha served (its snapshot request answered by the publisher).
//! 2. A small fleet model, 3 clusters × NODES instances, run in both modes: open watches on
//!    each API server, and API-server credentials each cluster holds. The README's table for
//!    10 / 100 / 1,000 nodes × 20 clusters scales these counts by the formula they confirm.
//!
//! Run: `cargo bench --bench pubsub_fanout`. Sizes: MESHDNS_BENCH_SERVICES (default 1000),
//! MESHDNS_BENCH_CHANGES (default 300), MESHDNS_BENCH_NODES (default 3), MESHDNS_BENCH_LEASE
//! (the publisher's `lease_duration`, default 15s); MESHDNS_BENCH_LOG_DIR keeps the logs.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use fake_pubsub::FakePubSub;
use meshdns::fanout::client::PubSub;
use support::{Poller, Reap, env_usize, metric, percentile, ready, service, slice, start};

const PROJECT: &str = "meshdns-bench";
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];
const GIVE_UP: Duration = Duration::from_secs(10);

/// Endpoint addresses of service `i` in generation `generation`: distinct across both, for up
/// to 104,857 services (10 addresses each in a 2^20 block per generation).
fn ips(generation: usize, i: usize) -> Vec<String> {
    (0..10)
        .map(|e| {
            let n = (generation << 20) + i * 10 + e + 1;
            Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff)).to_string()
        })
        .collect()
}

/// The config of an instance of `local`: `how(cluster)` is each cluster's source.
fn config(
    dir: &Path,
    file: &str,
    local: &str,
    publish: bool,
    how: impl Fn(&str) -> String,
) -> PathBuf {
    let mut yaml =
        format!("allow: [127.0.0.0/8]\nlocal_cluster: {local}\nready_timeout: 1s\ndrain: 0s\n");
    if publish {
        let lease = std::env::var("MESHDNS_BENCH_LEASE").unwrap_or_else(|_| "15s".into());
        yaml.push_str(&format!(
            "publish: {{ project: {PROJECT}, lease_duration: {lease} }}\n"
        ));
    }
    yaml.push_str("clusters:\n");
    for name in CLUSTERS {
        yaml.push_str(&format!("  - name: {name}\n    source: {}\n", how(name)));
    }
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    path
}

fn kube(name: &str) -> String {
    format!("{{ kube: {{ kubeconfig: {name}.kubeconfig }} }}")
}

fn pubsub(_: &str) -> String {
    format!("{{ pubsub: {{ project: {PROJECT} }} }}")
}

fn summary(what: &str, lat: &mut [Duration]) -> Duration {
    lat.sort();
    let p50 = percentile(lat, 0.5);
    eprintln!(
        "  {what:<28} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        p50.as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
    );
    p50
}

fn main() {
    let services = env_usize("MESHDNS_BENCH_SERVICES", 1000);
    let changes = env_usize("MESHDNS_BENCH_CHANGES", 300);
    let nodes = env_usize("MESHDNS_BENCH_NODES", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apis: Vec<FakeApiServer> = CLUSTERS
        .iter()
        .map(|name| {
            let s = rt.block_on(FakeApiServer::start()).unwrap();
            s.write_kubeconfig(&dir.path().join(format!("{name}.kubeconfig")), name)
                .unwrap();
            s
        })
        .collect();
    let mut objs = Vec::with_capacity(services * 2);
    for i in 0..services {
        let svc = format!("svc-{i}");
        objs.push(service("bench", &svc));
        objs.push(slice("bench", &format!("{svc}-1"), &svc, &ips(0, i)));
    }
    apis[0].apply_many(objs);
    let fake = rt.block_on(FakePubSub::start()).unwrap();
    rt.block_on(async {
        let client = PubSub::emulator(&fake.emulator_host()).unwrap();
        let topics = CLUSTERS
            .iter()
            .map(|c| format!("meshdns-{c}"))
            .chain(["meshdns-requests".to_string()]);
        for t in topics {
            let topic = google_cloud_googleapis::pubsub::v1::Topic {
                name: format!("projects/{PROJECT}/topics/{t}"),
                ..Default::default()
            };
            let request = client.request(topic).await.unwrap();
            client.publisher().create_topic(request).await.unwrap();
        }
    });
    let host = fake.emulator_host();
    let env = |pod: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("PUBSUB_EMULATOR_HOST", host.clone()),
            ("POD_NAME", pod.to_string()),
            ("POD_NAMESPACE", "meshdns".to_string()),
        ]
    };
    let run = |config: &Path, pod: &'static str| {
        let env = env(pod);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start(config, None, &env)
    };
    eprintln!("alpha: {services} services x 10 endpoints; beta and gamma: empty; one fake Pub/Sub");

    // The publisher of alpha, then beta's two instances.
    let alpha_cfg = config(dir.path(), "alpha-0.yaml", "alpha", true, |c| {
        if c == "alpha" { kube(c) } else { pubsub(c) }
    });
    let first = "svc-0.bench.svc.clusterset.local.";
    let target: Ipv4Addr = ips(0, 0)[0].parse().unwrap();
    // Each instance that lists alpha itself has synced before the next one starts: the fake
    // API server serves one big list at a time well, not three.
    let synced = |dns, what: &str| {
        let t = Instant::now();
        Poller::new(dns, Duration::from_millis(100))
            .until(first, target, t, Duration::from_secs(600))
            .unwrap_or_else(|| panic!("{what} never served alpha"))
    };
    let (_alpha, alpha_dns, alpha_ops) = run(&alpha_cfg, "alpha-0");
    let took = synced(alpha_dns, "alpha-0");
    eprintln!("alpha-0 (the publisher) synced alpha from its API server in {took:.1?}");
    let direct_cfg = config(dir.path(), "beta-direct.yaml", "beta", false, kube);
    let (_direct, direct_dns, _) = run(&direct_cfg, "beta-direct");
    synced(direct_dns, "beta-direct");
    let via_cfg = config(dir.path(), "beta-pubsub.yaml", "beta", false, |c| {
        if c == "beta" { kube(c) } else { pubsub(c) }
    });
    let t0 = Instant::now();
    let (_via, via_dns, _) = run(&via_cfg, "beta-pubsub");
    let sync = Poller::new(via_dns, Duration::from_millis(100))
        .until(first, target, t0, Duration::from_secs(60))
        .expect("alpha through Pub/Sub");
    let parts =
        fake.stats().published_per_topic[&format!("projects/{PROJECT}/topics/meshdns-alpha")];
    eprintln!(
        "initial sync of alpha through Pub/Sub: {:.1} ms from the subscriber's start ({parts} messages on alpha's topic so far)",
        sync.as_secs_f64() * 1e3
    );
    let snapshot = |what: &str| {
        metric(
            alpha_ops,
            &format!("meshdns_pubsub_{what}_total{{kind=\"snapshot\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (bytes, messages) = (snapshot("published_bytes"), snapshot("published_messages"));
    let snapshots = metric(
        alpha_ops,
        "meshdns_pubsub_snapshot_requests_total{kind=\"answered\"}",
    )
    .unwrap_or(0.0)
        + 1.0;
    eprintln!(
        "a snapshot of alpha: {:.0} bytes in {:.0} part(s) = {:.1} bytes per endpoint ({snapshots:.0} sent)",
        bytes / snapshots,
        messages / snapshots,
        bytes / snapshots / (services * 10) as f64
    );
    let mut direct = Poller::new(direct_dns, Duration::from_millis(100));
    direct
        .until(first, target, Instant::now(), Duration::from_secs(60))
        .expect("alpha directly");

    // 1. Propagation, both paths for the same change. Each path has its own polling thread.
    let (tx_d, rx_d) = mpsc::channel::<(String, Ipv4Addr, Instant)>();
    let (tx_v, rx_v) = mpsc::channel::<(String, Ipv4Addr, Instant)>();
    let (done_tx, done) = mpsc::channel::<(bool, Option<Duration>)>();
    let spawn = |rx: mpsc::Receiver<(String, Ipv4Addr, Instant)>, mut p: Poller, via: bool| {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            for (name, target, t) in rx {
                let _ = done_tx.send((via, p.until(&name, target, t, GIVE_UP)));
            }
        })
    };
    let h1 = spawn(rx_d, direct, false);
    let h2 = spawn(rx_v, Poller::new(via_dns, Duration::from_millis(100)), true);
    let (mut lat_direct, mut lat_via) = (Vec::new(), Vec::new());
    let mut missed = [0usize; 2];
    for k in 0..changes {
        let i = k % services;
        let svc = format!("svc-{i}");
        let new = ips(1 + k / services, i);
        let target: Ipv4Addr = new[0].parse().unwrap();
        let name = format!("alpha.{svc}.bench.svc.clusterset.local.");
        let t = Instant::now();
        apis[0].apply(slice("bench", &format!("{svc}-1"), &svc, &new));
        tx_d.send((name.clone(), target, t)).unwrap();
        tx_v.send((name, target, t)).unwrap();
        for _ in 0..2 {
            let (via, lat) = done.recv().unwrap();
            match (via, lat) {
                (false, Some(l)) => lat_direct.push(l),
                (true, Some(l)) => lat_via.push(l),
                (via, None) => missed[via as usize] += 1,
            }
        }
    }
    drop((tx_d, tx_v));
    let _ = (h1.join(), h2.join());
    eprintln!("propagation of {changes} endpoint changes in alpha to beta's instances:");
    let d = summary("direct watch of alpha", &mut lat_direct);
    let v = summary("through Pub/Sub", &mut lat_via);
    eprintln!(
        "  Pub/Sub / direct (p50): {:.2}x; missed (>{GIVE_UP:?}): direct {}, Pub/Sub {}",
        v.as_secs_f64() / d.as_secs_f64(),
        missed[0],
        missed[1]
    );
    let stats = fake.stats();
    eprintln!(
        "fake Pub/Sub: {} published, {} delivered ({} redelivered), {} acked",
        stats.published, stats.delivered, stats.redelivered, stats.acked
    );
    drop((_direct, _via, _alpha));
    settle(&apis);

    // 2. The fleet model: NODES instances per cluster, each mode in turn.
    eprintln!("fleet model: 3 clusters x {nodes} instances (one per node)");
    for mode in ["direct", "pubsub"] {
        let before: Vec<u64> = apis.iter().map(|a| a.stats().open_watches).collect();
        let mut running: Vec<Reap> = Vec::new();
        let mut opses = Vec::new();
        for c in CLUSTERS {
            for n in 0..nodes {
                let pod: &'static str = Box::leak(format!("{c}-{mode}-{n}").into_boxed_str());
                let cfg = config(
                    dir.path(),
                    &format!("{pod}.yaml"),
                    c,
                    mode == "pubsub",
                    |x| {
                        if x == c || mode == "direct" {
                            kube(x)
                        } else {
                            pubsub(x)
                        }
                    },
                );
                let (child, _, ops) = run(&cfg, pod);
                running.push(child);
                opses.push(ops);
            }
        }
        for ops in &opses {
            let t = Instant::now();
            while !ready(*ops) && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let watches: Vec<u64> = apis
            .iter()
            .zip(&before)
            .map(|(a, b)| a.stats().open_watches.saturating_sub(*b))
            .collect();
        let credentials = if mode == "direct" {
            CLUSTERS.len() - 1
        } else {
            0
        };
        eprintln!(
            "  {mode:<7} open watches per API server: {watches:?} = {:.2} x the {} instances of the fleet; peer API credentials held per cluster: {credentials}",
            watches.iter().sum::<u64>() as f64 / watches.len() as f64 / (3 * nodes) as f64,
            3 * nodes
        );
        drop(running);
        settle(&apis);
    }
}

/// Waits until the killed instances' watches are gone from every API server.
fn settle(apis: &[FakeApiServer]) {
    let t = Instant::now();
    while apis.iter().any(|a| a.stats().open_watches > 0) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
