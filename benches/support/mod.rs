//! What the process-level benches share: starting `meshdns serve`, reading its readiness and
//! memory, building Kubernetes objects for the fake API servers, and timing until an answer
//! shows an address.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};

pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "type": "ClusterIP", "ports": [{ "name": "http", "port": 80 }] },
    })
}

pub fn slice(ns: &str, name: &str, svc: &str, ips: &[String]) -> Value {
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

pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The whole HTTP response to `GET path` (empty when the connection fails).
pub fn http(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

pub fn ready(ops: SocketAddr) -> bool {
    http(ops, "/readyz").starts_with("HTTP/1.1 200")
}

/// Kills the child process when dropped, so that no meshdns (or dnsperf) outlives a
/// panicking bench.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshdns serve` on free ports with `env` added; with `pin`, wrapped in `taskset -c <core>`
/// (taskset execs meshdns, so the child's PID is meshdns's). Returns once it listens.
pub fn start(
    config: &std::path::Path,
    pin: Option<&str>,
    env: &[(&str, &str)],
) -> (Reap, SocketAddr, SocketAddr) {
    let mut cmd = match pin {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", core, env!("CARGO_BIN_EXE_meshdns")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_meshdns")),
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .args(["--dns-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,meshdns=info")
        .envs(env.iter().copied())
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
    // The rest of the log goes to $MESHDNS_BENCH_LOG_DIR/<pid>.log when that is set.
    let mut keep = std::env::var_os("MESHDNS_BENCH_LOG_DIR").and_then(|d| {
        std::fs::File::create(std::path::Path::new(&d).join(format!("{}.log", child.id()))).ok()
    });
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (Reap(child), field("dns="), field("ops="))
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Asks one instance for `name` A over UDP until an answer carries `target`; resends after
/// `resend` without an answer. Returns the time since `since`, or `None` after `give_up`.
pub struct Poller {
    sock: UdpSocket,
    dns: SocketAddr,
    id: u16,
}

impl Poller {
    pub fn new(dns: SocketAddr, resend: Duration) -> Poller {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(resend)).unwrap();
        Poller { sock, dns, id: 0 }
    }

    pub fn until(
        &mut self,
        name: &str,
        target: Ipv4Addr,
        since: Instant,
        give_up: Duration,
    ) -> Option<Duration> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut buf = [0u8; 4096];
        // Read answers until one to *this* query comes (a late answer to an earlier one is
        // skipped, not answered with another query: that would leave the client one answer
        // behind for good); resend when none comes in time.
        'poll: loop {
            self.id = self.id.wrapping_add(1);
            q.metadata.id = self.id;
            self.sock.send_to(&q.to_vec().unwrap(), self.dns).unwrap();
            loop {
                if since.elapsed() > give_up {
                    return None;
                }
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    continue 'poll;
                };
                let Ok(resp) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if resp.metadata.id != self.id {
                    continue;
                }
                if resp
                    .answers
                    .iter()
                    .any(|r| matches!(&r.data, RData::A(a) if a.0 == target))
                {
                    return Some(since.elapsed());
                }
                continue 'poll;
            }
        }
    }
}

/// One sample of the instance's `/metrics`: `name_and_labels` is everything before the value,
/// e.g. `meshdns_pubsub_published_bytes_total{kind="snapshot"}`.
pub fn metric(ops: SocketAddr, name_and_labels: &str) -> Option<f64> {
    http(ops, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}
