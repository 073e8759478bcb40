//! kube-dns forwards the zone to meshdns, for real: Debian's dnsmasq runs as kube-dns's
//! dnsmasq-nanny runs it (`-k --cache-size=1000 --no-negcache --dns-loop-detect
//! --log-facility=-`, the cluster's own zones to kubedns on 10053), with the stub domain
//! `{"clusterset.local": ["127.0.0.1#PORT"]}` rendered the way the nanny renders stubDomains
//! (`--server=/clusterset.local/127.0.0.1#PORT`) and no upstream (`--no-resolv`). dig asks
//! dnsmasq, as a pod's resolver asks kube-dns.
//!
//! What must hold: every kind of fleet answer passes through unchanged; NXDOMAIN passes
//! through and is not cached (so a new service resolves at once); a changed or removed answer
//! passes through once dnsmasq's cache has held it for its TTL (5 s); names outside the zone
//! never reach meshdns.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use support::{Demo, Dig, Meshdns, dig, http_get, query};

const ZONE: &str = "clusterset.local";
/// The demo's record TTL (deploy/demo/meshdns.yaml).
const TTL: Duration = Duration::from_secs(5);

fn dnsmasq_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 (released before use: the caller retries
/// if someone takes it meanwhile).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// kube-dns's dnsmasq with a stub domain for the fleet zone; killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Dnsmasq {
    /// Starts dnsmasq forwarding the zone (and the reverse zone of beta's first /16, for PTR)
    /// to `meshdns`, and waits until it answers.
    fn start(meshdns: SocketAddr) -> Dnsmasq {
        let target = format!("{}#{}", meshdns.ip(), meshdns.port());
        // Where kube-dns sends the cluster's own zones (kubedns on 10053): nobody here.
        let kubedns = format!("127.0.0.1#{}", free_port());
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(dnsmasq_bin())
                .args([
                    "-k",
                    "--cache-size=1000",
                    "--no-negcache",
                    "--dns-loop-detect",
                ])
                .arg("--log-facility=-")
                .arg(format!("--server=/cluster.local/{kubedns}"))
                .arg(format!("--server=/in-addr.arpa/{kubedns}"))
                .arg(format!("--server=/ip6.arpa/{kubedns}"))
                // stubDomains {"clusterset.local": [...], "12.10.in-addr.arpa": [...]}
                .arg(format!("--server=/{ZONE}/{target}"))
                .arg(format!("--server=/12.10.in-addr.arpa/{target}"))
                // No upstreamNameservers and no resolv.conf: nothing else is answered.
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                ])
                .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                .arg(format!("--port={port}"))
                .arg("--log-queries")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dnsmasq (dnsmasq-base) is installed: scripts/test installs it");
            let log = Arc::new(Mutex::new(String::new()));
            let stderr = child.stderr.take().expect("stderr");
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = sink.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut d = Dnsmasq { child, addr, log };
            if d.wait_answering(Duration::from_secs(5)) {
                return d;
            }
            // Most likely the port was taken meanwhile: another one.
            last_log = d.logs();
        }
        panic!("dnsmasq did not start; its log:\n{last_log}");
    }

    fn wait_answering(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // The apex SOA: an answer the tests never look at again.
            if query(self.addr, &format!("{ZONE}."), RecordType::SOA).is_some() {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// dig through dnsmasq, recursion desired as a pod's stub resolver asks.
    fn dig(&self, args: &str) -> Dig {
        dig(self.addr, &format!("+rec {args}"))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of `meshdns_dns_queries_total` for one query type: what reached meshdns.
fn queries_of_type(m: &Meshdns, qtype: &str) -> u64 {
    let (status, body) = http_get(m.ops, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let needle = format!("qtype=\"{qtype}\"");
    body.lines()
        .filter(|l| l.starts_with("meshdns_dns_queries_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Same status and same answer records (TTLs aside: dnsmasq counts them down).
fn assert_same(through: &Dig, direct: &Dig, what: &str, dnsmasq: &Dnsmasq) {
    let records = |d: &Dig| {
        let mut v: Vec<(String, String, String)> = d
            .answer
            .iter()
            .map(|r| (r.name.to_lowercase(), r.rtype.clone(), r.data.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        (through.status.as_str(), records(through)),
        (direct.status.as_str(), records(direct)),
        "{what}: through dnsmasq:\n{}\ndirect:\n{}\ndnsmasq log:\n{}",
        through.raw,
        direct.raw,
        dnsmasq.logs()
    );
}

#[test]
fn fleet_names_resolve_through_kube_dns_dnsmasq() {
    let demo = Demo::new();
    let meshdns = Meshdns::start(&demo.config());
    let dnsmasq = Dnsmasq::start(meshdns.dns);

    let cases = [
        // All clusters' endpoints, one cluster's, one endpoint.
        ("reviews.bookinfo.svc.clusterset.local A", "NOERROR", 4),
        ("beta.reviews.bookinfo.svc.clusterset.local A", "NOERROR", 1),
        ("db-0.alpha.db.data.svc.clusterset.local A", "NOERROR", 1),
        ("frontend.web.svc.clusterset.local AAAA", "NOERROR", 1),
        (
            "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local SRV",
            "NOERROR",
            2,
        ),
        ("legacy-api.default.svc.clusterset.local A", "NOERROR", 1),
        // PTR through the reverse stub domain.
        ("-x 10.12.0.5", "NOERROR", 1),
        // Empty non-terminal: NODATA; unknown name: NXDOMAIN.
        ("bookinfo.svc.clusterset.local A", "NOERROR", 0),
        ("nope.bookinfo.svc.clusterset.local A", "NXDOMAIN", 0),
    ];
    for (args, status, count) in cases {
        let direct = meshdns.dig(args);
        assert_eq!(
            (direct.status.as_str(), direct.answer.len()),
            (status, count),
            "{args}: {}",
            direct.raw
        );
        let through = dnsmasq.dig(args);
        assert_same(&through, &direct, args, &dnsmasq);
        // Asked again: from dnsmasq's cache (or again from meshdns), the same.
        assert_same(&dnsmasq.dig(args), &direct, args, &dnsmasq);
    }
    // Over TCP too (dnsmasq forwards TCP queries over TCP).
    let args = "_http._tcp.reviews.bookinfo.svc.clusterset.local SRV";
    assert_same(
        &dnsmasq.dig(&format!("+tcp {args}")),
        &meshdns.dig(args),
        args,
        &dnsmasq,
    );
    let legacy = dnsmasq.dig("legacy-api.default.svc.clusterset.local A");
    assert_eq!(legacy.answer[0].rtype, "CNAME", "{}", legacy.raw);
    assert_eq!(legacy.answer[0].data, "api.example.com.");

    // Out of the zone: dnsmasq has nowhere to send it, and meshdns never sees it. An in-zone
    // MX query shows that the counter does count what dnsmasq forwards.
    let before = queries_of_type(&meshdns, "MX");
    let in_zone = dnsmasq.dig("reviews.bookinfo.svc.clusterset.local MX");
    assert_eq!(in_zone.status, "NOERROR", "{}", in_zone.raw);
    assert_eq!(
        queries_of_type(&meshdns, "MX"),
        before + 1,
        "the in-zone MX reached meshdns"
    );
    for name in ["example.com", "clusterset.example", "local"] {
        let out = dnsmasq.dig(&format!("{name} MX"));
        assert!(
            ["REFUSED", "SERVFAIL"].contains(&out.status.as_str()) && out.answer.is_empty(),
            "{name}: {}",
            out.raw
        );
    }
    assert_eq!(
        queries_of_type(&meshdns, "MX"),
        before + 1,
        "an out-of-zone query reached meshdns; dnsmasq log:\n{}",
        dnsmasq.logs()
    );
    assert!(
        !dnsmasq.logs().contains("forwarded example.com to"),
        "{}",
        dnsmasq.logs()
    );
}

/// Beta after a deploy: reviews moved to a new pod, `details` appeared, `frontend` is gone.
const BETA_CHANGED: &str = "\
services:
  - name: reviews
    namespace: bookinfo
    ports: [{ name: http, port: 9080, protocol: TCP }]
    endpoints:
      - { ip: 10.12.0.50, zone: us-central1-b, hostname: reviews-v2-new }
  - name: details
    namespace: bookinfo
    ports: [{ name: http, port: 9080 }]
    endpoints:
      - { ip: 10.12.0.77, zone: us-central1-b }
";

#[test]
fn changes_and_nxdomain_pass_through_once_ttls_expire() {
    let demo = Demo::new();
    let meshdns = Meshdns::start(&demo.config());
    let dnsmasq = Dnsmasq::start(meshdns.dns);
    let moved = "beta.reviews.bookinfo.svc.clusterset.local A";
    let gone = "frontend.web.svc.clusterset.local A";
    let new = "details.bookinfo.svc.clusterset.local A";

    // Before: dnsmasq caches the two positive answers; the NXDOMAIN it must not cache.
    let asked = Instant::now();
    assert_eq!(dnsmasq.dig(moved).answer_data(), ["10.12.0.5"]);
    assert_eq!(dnsmasq.dig(gone).answer_data(), ["10.12.4.9"]);
    assert_eq!(dnsmasq.dig(new).status, "NXDOMAIN");

    demo.write("beta.yaml", BETA_CHANGED);
    let direct = meshdns.dig_until(new, Duration::from_secs(5), |d| d.status == "NOERROR");
    assert_eq!(direct.answer_data(), ["10.12.0.77"]);
    let changed_at = asked.elapsed();

    // The new name at once: the NXDOMAIN of a moment ago was not cached (--no-negcache).
    let through = dnsmasq.dig(new);
    assert_same(&through, &direct, new, &dnsmasq);

    // The cached answers hold for their TTL (as kube-dns's cache does)...
    if changed_at < TTL - Duration::from_secs(1) {
        let cached = dnsmasq.dig(moved);
        assert_eq!(cached.answer_data(), ["10.12.0.5"], "{}", cached.raw);
        assert!(cached.answer[0].ttl <= 5, "{}", cached.raw);
        assert_eq!(meshdns.dig(moved).answer_data(), ["10.12.0.50"]);
    }
    // ...then the new answer and the NXDOMAIN pass through, unchanged.
    let deadline = asked + TTL + Duration::from_millis(1500);
    for (args, want) in [(moved, "NOERROR"), (gone, "NXDOMAIN")] {
        let direct = meshdns.dig(args);
        assert_eq!(direct.status, want, "{}", direct.raw);
        loop {
            let through = dnsmasq.dig(args);
            if through.status == direct.status && through.answer_data() == direct.answer_data() {
                assert_same(&through, &direct, args, &dnsmasq);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{args}: still {} {:?} {:?} after the TTL; meshdns says {} {:?}\ndnsmasq log:\n{}",
                through.status,
                through.answer_data(),
                asked.elapsed(),
                direct.status,
                direct.answer_data(),
                dnsmasq.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
