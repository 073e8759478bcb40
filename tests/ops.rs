//! Operating meshdns: metrics, health, debug endpoints, debugging through DNS (NSID, CHAOS,
//! provenance TXT), query logs, drain on SIGTERM and reload on SIGHUP — with real dig and a
//! real HTTP client.

mod support;

use std::time::{Duration, Instant};

use support::{Demo, Meshdns, http_get};

const WAIT: Duration = Duration::from_secs(10);

/// The demo with extra top-level config lines.
fn demo_with(extra: &str) -> Demo {
    let demo = Demo::new();
    let cfg = std::fs::read_to_string(demo.config()).unwrap();
    demo.write("meshdns.yaml", &format!("{cfg}\n{extra}\n"));
    demo
}

fn metric(body: &str, line_prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_health_and_debug_endpoints() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    m.dig("reviews.bookinfo.svc.clusterset.local A");
    m.dig("nope.bookinfo.svc.clusterset.local A");
    m.dig("reviews.bookinfo.svc.clusterset.local A +tcp");
    m.dig("example.com A");

    let (code, body) = http_get(m.ops, "/metrics").unwrap();
    assert_eq!(code, 200);
    for (prefix, at_least) in [
        (
            "meshdns_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",transport=\"udp\"}",
            1.0,
        ),
        (
            "meshdns_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\",transport=\"udp\"}",
            1.0,
        ),
        (
            "meshdns_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",transport=\"tcp\"}",
            1.0,
        ),
        (
            "meshdns_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\",transport=\"udp\"}",
            1.0,
        ),
        ("meshdns_dns_request_duration_seconds_count", 4.0),
        ("meshdns_dns_truncated_total", 0.0),
        ("meshdns_dns_refused_clients_total", 0.0),
        ("meshdns_cluster_services{cluster=\"alpha\"}", 5.0),
        ("meshdns_cluster_endpoints{cluster=\"alpha\"}", 7.0),
        (
            "meshdns_cluster_source_state{cluster=\"beta\",state=\"synced\"}",
            1.0,
        ),
        (
            "meshdns_cluster_seconds_since_change{cluster=\"gamma\"}",
            0.0,
        ),
        ("meshdns_cluster_relists_total{cluster=\"vms\"}", 1.0),
        ("meshdns_cluster_skipped_total{cluster=\"vms\"}", 0.0),
        ("meshdns_cluster_errors_total{cluster=\"vms\"}", 0.0),
        ("meshdns_cluster_rejected_total{cluster=\"vms\"}", 0.0),
        ("meshdns_catalog_serial", 1.0),
        ("meshdns_catalog_services", 7.0),
        ("meshdns_catalog_records", 40.0),
        ("meshdns_catalog_build_seconds", 0.0),
        ("meshdns_catalog_stale_clusters", 0.0),
    ] {
        let v = metric(&body, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{body}"));
        assert!(v >= at_least, "{prefix} = {v} < {at_least}");
    }

    assert_eq!(http_get(m.ops, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(http_get(m.ops, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(m.ops, "/nope").unwrap().0, 404);

    let (code, body) = http_get(m.ops, "/debug/catalog").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["zone"], "clusterset.local.");
    let alpha = &v["clusters"][0];
    assert_eq!(alpha["name"], "alpha", "local cluster first");
    assert_eq!(alpha["state"], "synced");
    assert_eq!(alpha["region"], "us-central1");
    let istiod = alpha["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "istiod")
        .unwrap();
    assert_eq!(istiod["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(istiod["ports"][0]["name"], "grpc-xds");

    // /debug/zone is exactly what dump prints.
    let (code, zone) = http_get(m.ops, "/debug/zone").unwrap();
    assert_eq!(code, 200);
    let dump = std::process::Command::new(support::bin())
        .args(["dump", "--config"])
        .arg(demo.config())
        .output()
        .unwrap();
    let dumped = String::from_utf8(dump.stdout).unwrap();
    // The serial differs between two processes; everything else is equal.
    let strip = |z: &str| -> Vec<String> {
        z.lines()
            .map(|l| {
                if l.contains(" SOA ") {
                    l.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
                } else {
                    l.to_string()
                }
            })
            .collect()
    };
    assert_eq!(strip(&zone), strip(&dumped));
    assert!(zone.starts_with("clusterset.local. 5 IN SOA"), "{zone}");
}

#[test]
fn nsid_chaos_and_provenance() {
    let demo = demo_with("identity: meshdns-test@node-7");
    let m = Meshdns::start(&demo.config());

    // NSID only when asked for.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +nsid");
    assert!(d.raw.contains("(\"meshdns-test@node-7\")"), "{}", d.raw);
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert!(!d.raw.contains("NSID"), "{}", d.raw);

    for name in ["id.server", "hostname.bind"] {
        let d = m.dig(&format!("CH TXT {name}"));
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answer_data(), ["\"meshdns-test@node-7\""], "{}", d.raw);
        assert!(
            d.raw.contains("CH\tTXT") || d.raw.contains("CH TXT"),
            "{}",
            d.raw
        );
    }
    let d = m.dig("CH TXT version.bind");
    assert_eq!(
        d.answer_data(),
        [format!("\"meshdns {}\"", env!("CARGO_PKG_VERSION"))]
    );
    assert_eq!(m.dig("CH TXT authors.bind").status, "REFUSED");

    // Provenance: which clusters contributed which endpoints, their state and data age.
    let d = m.dig("_status.reviews.bookinfo.svc.clusterset.local TXT");
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let txt = &d.answer[0].data;
    for part in [
        "\"cluster=alpha state=synced data_age=",
        "endpoints=10.8.1.5,10.8.1.6\"",
        "\"cluster=beta state=synced",
        "endpoints=10.12.0.5\"",
        "\"cluster=gamma state=synced",
        "\"serial=",
    ] {
        assert!(txt.contains(part), "{part} not in {txt}");
    }
    assert!(!txt.contains("cluster=vms"), "{txt}");
    assert_eq!(
        m.dig("_status.nope.bookinfo.svc.clusterset.local TXT")
            .status,
        "NXDOMAIN"
    );

    // Everything can be hidden.
    let demo = demo_with("identity: \"\"\nchaos: []\nstatus_records: false");
    let m = Meshdns::start(&demo.config());
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +nsid");
    assert!(!d.raw.contains("NSID"), "{}", d.raw);
    assert_eq!(m.dig("CH TXT id.server").status, "REFUSED");
    assert_eq!(m.dig("CH TXT version.bind").status, "REFUSED");
    assert_eq!(
        m.dig("_status.reviews.bookinfo.svc.clusterset.local TXT")
            .status,
        "NXDOMAIN"
    );
}

#[test]
fn query_log_is_off_by_default_and_on_when_asked() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    m.dig("reviews.bookinfo.svc.clusterset.local A");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!m.logs().contains("qname="), "{}", m.logs());

    let demo = demo_with("query_log: 1.0");
    let m = Meshdns::start(&demo.config());
    m.dig("reviews.bookinfo.svc.clusterset.local A");
    let deadline = Instant::now() + WAIT;
    while !m
        .logs()
        .contains("qname=reviews.bookinfo.svc.clusterset.local.")
    {
        assert!(Instant::now() < deadline, "{}", m.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.logs().contains("rcode=NOERROR"), "{}", m.logs());
}

#[test]
fn sigterm_drains_then_exits() {
    let demo = demo_with("drain: 2s");
    let mut m = Meshdns::start(&demo.config());
    let started = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &m.pid().to_string()])
        .status();
    // Not ready at once, answering all along the drain.
    let deadline = Instant::now() + WAIT;
    while http_get(m.ops, "/readyz").map(|r| r.0).unwrap_or(0) != 503 {
        assert!(Instant::now() < deadline, "readyz never turned 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
        assert_eq!(d.status, "NOERROR", "during the drain:\n{}", d.raw);
        assert_eq!(d.answer.len(), 4);
        answered += 1;
    }
    assert!(answered > 3);
    assert_eq!(m.wait_exit(WAIT), Some(0), "{}", m.logs());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "exited before the drain ended"
    );
}

#[test]
fn sighup_reloads_clusters_and_keeps_the_running_config_when_broken() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let relists = |cluster: &str| -> u64 {
        let (_, body) = http_get(m.ops, "/debug/catalog").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .map_or(0, |c| c["relists"].as_u64().unwrap())
    };
    let hup = || {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &m.pid().to_string()])
            .status();
    };
    let alpha_before = relists("alpha");

    // Remove gamma, add delta (a new file cluster), change the TTL.
    demo.write(
        "delta.yaml",
        "services:\n  - name: reviews\n    namespace: bookinfo\n    endpoints: [{ ip: 10.20.0.5 }]\n",
    );
    let cfg = std::fs::read_to_string(demo.config()).unwrap();
    let gamma = "  - name: gamma\n    region: europe-west1\n    zones: [europe-west1-b]\n    networks: [10.16.0.0/14]\n    source: { file: gamma.yaml }\n";
    assert!(cfg.contains(gamma));
    let new_cfg = cfg
        .replace(gamma, "  - name: delta\n    source: { file: delta.yaml }\n")
        .replace("ttl: 5s", "ttl: 7s");
    demo.write("meshdns.yaml", &new_cfg);
    hup();
    let d = m.dig_until("reviews.bookinfo.svc.clusterset.local A", WAIT, |d| {
        d.sorted_answer_data() == ["10.12.0.5", "10.20.0.5", "10.8.1.5", "10.8.1.6"]
    });
    assert_eq!(d.answer[0].ttl, 7);
    assert_eq!(
        m.dig("gamma.reviews.bookinfo.svc.clusterset.local A")
            .status,
        "NXDOMAIN"
    );
    // alpha's source was not restarted (no new whole-slice load).
    assert_eq!(relists("alpha"), alpha_before);

    // A broken config is rejected with a log line; the running one stays.
    demo.write(
        "meshdns.yaml",
        &new_cfg.replace("ttl: 7s", "ttl: 7 parsecs"),
    );
    hup();
    let deadline = Instant::now() + WAIT;
    while !m.logs().contains("keeping the running one") {
        assert!(Instant::now() < deadline, "{}", m.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.logs().contains("parsecs"), "{}", m.logs());
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert_eq!(d.answer.len(), 4);
    assert_eq!(d.answer[0].ttl, 7);
    assert_eq!(
        m.dig("delta.reviews.bookinfo.svc.clusterset.local A")
            .answer_data(),
        ["10.20.0.5"]
    );
}
