//! Kubernetes source benchmark (not a test: figures, no pass/fail).
//!
//! 1. Initial sync: 3 fake API servers (clusters) × SERVICES services × 10 endpoints; time from
//!    starting `meshdns serve` to `/readyz` 200, and its RSS once synced.
//! 2. Propagation: CHANGES endpoint changes in one cluster; for each, the time from the fake
//!    API server's write (which emits the watch event) until a UDP query at the meshdns
//!    instance answers the new address. p50 / p99 / max.
//!
//! 3. Only with `MESHDNS_BENCH_LOAD=dnsperf`: the same propagation measurement again (CHANGES
//!    more changes) while dnsperf saturates the instance. meshdns is then pinned to core 0 and
//!    dnsperf to core 1 (`taskset`, as in scripts/bench), so the idle figures of that run are
//!    taken under the same pinning; the fake API servers and the polling client float. The
//!    polling client resends after 100 ms without an answer (the idle phase: 1 s, as always)
//!    and counts those resends. `MESHDNS_BENCH_DNSPERF_ARGS` replaces the load options
//!    (default `-c 4 -q 200 -T 1`; add `-Q <qps>` for a fixed rate instead of saturation).
//!
//! Run: `cargo bench --bench kube_sync` (or `scripts/bench-kube`). Sizes: MESHDNS_BENCH_SERVICES
//! (default 10000), MESHDNS_BENCH_CHANGES (default 500).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{Reap, env_usize, percentile, ready, rss_mib, service, slice, start};

/// utime+stime of a process, in seconds (/proc counts in USER_HZ, 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// What one propagation measurement saw.
struct Propagation {
    /// Sorted; a change given up on counts as `give_up`.
    lat: Vec<Duration>,
    /// Queries resent after `timeout` without an answer.
    resends: usize,
    /// Changes not seen within `give_up`, with what the instance answered then.
    unseen: Vec<String>,
}

/// Changes one endpoint of beta's svc-<k> for every k in `ks` and, for each, polls the
/// instance until the answer shows it. A change not seen within 10 s panics, or with
/// `give_up`, is counted as unseen after that long and the next one goes on.
fn propagate(
    beta: &FakeApiServer,
    dns: SocketAddr,
    services: usize,
    ks: std::ops::Range<usize>,
    timeout: Duration,
    give_up: Option<Duration>,
) -> Propagation {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let mut lat = Vec::with_capacity(ks.len());
    let mut resends = 0;
    let mut unseen = Vec::new();
    for k in ks {
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
        beta.apply(obj);
        // Send a query; read answers until one to *this* query comes (a late answer to an
        // earlier one is skipped, not answered with another query: that would leave the
        // client one answer behind for good); resend when none comes within `timeout`.
        'poll: loop {
            q.metadata.id = q.metadata.id.wrapping_add(1);
            sock.send_to(&q.to_vec().unwrap(), dns).unwrap();
            loop {
                if let Some(limit) = give_up.filter(|&l| t.elapsed() > l) {
                    unseen.push(format!(
                        "change {k} ({new_ip} in beta.{svc}) not seen after {limit:?}; {}",
                        diagnose(&sock, dns, &q, target)
                    ));
                    break 'poll;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    panic!(
                        "change {k} ({new_ip} in beta.{svc}) not seen after 10 s; {}",
                        diagnose(&sock, dns, &q, target)
                    );
                }
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    resends += 1;
                    continue 'poll;
                };
                let Ok(resp) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if resp.metadata.id != q.metadata.id {
                    continue;
                }
                if resp
                    .answers
                    .iter()
                    .any(|r| matches!(&r.data, RData::A(a) if a.0 == target))
                {
                    break 'poll;
                }
                continue 'poll;
            }
        }
        lat.push(t.elapsed().min(give_up.unwrap_or(Duration::MAX)));
    }
    lat.sort();
    Propagation {
        lat,
        resends,
        unseen,
    }
}

/// What the instance answers now, on the plain path and with an NSID option (which a fast
/// path of cached answers leaves to the full handler): tells a stale cache from a catalog that
/// never got the change.
fn diagnose(sock: &UdpSocket, dns: SocketAddr, q: &Message, target: std::net::Ipv4Addr) -> String {
    let mut buf = [0u8; 4096];
    let mut plain = q.clone();
    let mut out = String::new();
    for nsid in [false, true] {
        plain.metadata.id = plain.metadata.id.wrapping_add(1);
        let mut wire = plain.to_vec().unwrap();
        if nsid {
            wire[11] += 1; // ARCOUNT: an OPT record, payload 1232, with an empty NSID option
            wire.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 4, 0, 3, 0, 0]);
        }
        let _ = sock.send_to(&wire, dns);
        let deadline = Instant::now() + Duration::from_secs(2);
        let answer = loop {
            if Instant::now() > deadline {
                break "no answer".to_string();
            }
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            match Message::from_vec(&buf[..n]) {
                Ok(r) if r.metadata.id == plain.metadata.id => {
                    let has = r
                        .answers
                        .iter()
                        .any(|a| matches!(&a.data, RData::A(x) if x.0 == target));
                    break format!(
                        "{} addresses, new one {}",
                        r.answers.len(),
                        if has { "present" } else { "absent" }
                    );
                }
                _ => continue,
            }
        };
        out += &format!("{}: {answer}; ", if nsid { "with NSID" } else { "plain" });
    }
    out
}

/// A dnsperf process loading the instance, pinned to core 1, until `stop`.
struct Load {
    child: Reap,
    out: std::path::PathBuf,
}

impl Load {
    fn start(dir: &std::path::Path, dns: SocketAddr, services: usize) -> Load {
        // Names of the fleet: merged (30 addresses: EDNS needed, hence -e) and per-cluster A
        // answers, AAAA NODATA, NXDOMAIN.
        let mut queries = String::new();
        for i in 0..services {
            let svc = format!("svc-{i}.bench.svc.clusterset.local.");
            queries.push_str(&format!(
                "{svc} A\nalpha.{svc} A\nbeta.{svc} A\ngamma.{svc} A\n{svc} AAAA\nnope-{svc} A\n"
            ));
        }
        let qfile = dir.join("load-queries.txt");
        std::fs::write(&qfile, queries).unwrap();
        let out = dir.join("load-dnsperf.out");
        let args = std::env::var("MESHDNS_BENCH_DNSPERF_ARGS")
            .unwrap_or_else(|_| "-c 4 -q 200 -T 1".to_string());
        let child = Command::new("taskset")
            .args(["-c", "1", "dnsperf", "-s", "127.0.0.1", "-e", "-l", "3600"])
            .args(["-p", &dns.port().to_string(), "-d"])
            .arg(&qfile)
            .args(args.split_whitespace())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "MESHDNS_BENCH_LOAD=dnsperf needs dnsperf and taskset (apt-get install dnsperf)",
            );
        Load {
            child: Reap(child),
            out,
        }
    }

    /// Stops dnsperf (SIGINT: it prints its statistics) and returns its qps and lost queries.
    fn stop(mut self) -> (f64, u64) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.0.id().to_string()])
            .status();
        let _ = self.child.0.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let field = |key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        (field("Queries per second:"), field("Queries lost:") as u64)
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let services = env_usize("MESHDNS_BENCH_SERVICES", 10_000);
    let changes = env_usize("MESHDNS_BENCH_CHANGES", 500);
    let load = match std::env::var("MESHDNS_BENCH_LOAD").as_deref() {
        Ok("dnsperf") => true,
        Ok("") | Ok("none") | Err(_) => false,
        Ok(other) => panic!("MESHDNS_BENCH_LOAD={other}: expected dnsperf or none"),
    };
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
    let (child, dns, ops) = start(&config, load.then_some("0"), &[]);
    while !ready(ops) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sync = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(child.0.id());

    // 2. Propagation: change one endpoint of beta's svc-<k>, time until the answer shows it.
    let lat = propagate(
        &servers[1],
        dns,
        services,
        0..changes,
        Duration::from_secs(1),
        None,
    )
    .lat;

    // 3. The same under a saturating query load.
    let loaded = load.then(|| {
        let load = Load::start(dir.path(), dns, services);
        std::thread::sleep(Duration::from_secs(1));
        let (cpu0, t0) = (cpu_seconds(child.0.id()), Instant::now());
        let seen = propagate(
            &servers[1],
            dns,
            services,
            changes..2 * changes,
            Duration::from_millis(100),
            Some(Duration::from_secs(2)),
        );
        let busy = (cpu_seconds(child.0.id()) - cpu0) / t0.elapsed().as_secs_f64();
        let (qps, lost) = load.stop();
        (seen, busy, qps, lost)
    });
    drop(child);

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| initial sync, 3 clusters x {services} services x 10 endpoints ({} endpoints){} | {:.2} s |",
        3 * services * 10,
        if load {
            " (meshdns pinned to core 0)"
        } else {
            ""
        },
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
    if let Some((seen, busy, qps, lost)) = loaded {
        let lat = &seen.lat;
        println!(
            "| propagation under load p50 over {changes} changes (dnsperf {qps:.0} qps, {lost} lost; meshdns busy {:.0} % of its core) | {:.2} ms |",
            busy * 100.0,
            percentile(lat, 0.5).as_secs_f64() * 1e3
        );
        println!(
            "| propagation under load p99 | {:.2} ms |",
            percentile(lat, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "| propagation under load max | {:.2} ms |",
            lat.last().unwrap().as_secs_f64() * 1e3
        );
        println!(
            "| polling queries resent under load (no answer in 100 ms) | {} |",
            seen.resends
        );
        println!(
            "| changes under load not seen within 2 s (counted as 2 s above) | {} |",
            seen.unseen.len()
        );
        for u in &seen.unseen {
            eprintln!("{u}");
        }
    }
}
