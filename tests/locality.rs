//! Locality-aware answers through real dig: clients on loopback aliases (`dig -b`) mapped to
//! clusters through `client_networks`, EDNS Client Subnet from trusted and untrusted
//! forwarders, tier order, SRV priorities, `nearest` failover and failback, answer caps.

mod support;

use std::time::Duration;

use support::{Demo, Meshdns};

const WAIT: Duration = Duration::from_secs(10);

/// Three clusters in two regions; clients of alpha on 127.0.1.0/24 (zone a), of beta on
/// 127.0.2.0/24 (zone b), of gamma on 127.0.3.0/24 (europe). 127.0.0.9 is a trusted
/// forwarder (ECS believed), 127.0.0.8 an untrusted one.
fn fleet() -> Demo {
    let demo = Demo::new();
    demo.write(
        "meshdns.yaml",
        r#"
zone: clusterset.local.
allow: [127.0.0.0/8]
local_cluster: alpha
locality:
  ecs_from: [127.0.0.9/32]
  services:
    - { namespace: cp, name: istiod, policy: nearest }
clusters:
  - name: alpha
    region: us-central1
    zones: [us-central1-a]
    networks: [10.8.0.0/14]
    client_networks: [{ net: 127.0.1.0/24 }]
    source: { file: alpha.yaml }
  - name: beta
    region: us-central1
    zones: [us-central1-b]
    networks: [10.12.0.0/14]
    client_networks: [{ net: 127.0.2.0/24 }]
    source: { file: beta.yaml }
  - name: gamma
    region: europe-west1
    zones: [europe-west1-b]
    networks: [10.16.0.0/14]
    client_networks: [{ net: 127.0.3.0/25, zone: europe-west1-b }]
    source: { file: gamma.yaml }
"#,
    );
    demo.write("alpha.yaml", &cluster_file("10.8", "us-central1-a", true));
    demo.write("beta.yaml", &cluster_file("10.12", "us-central1-b", false));
    demo.write("gamma.yaml", &cluster_file("10.16", "europe-west1-b", true));
    demo
}

/// web.app (two endpoints), istiod.cp (one, when `istiod`), api.app (capped at one answer,
/// nearest, by its own file keys).
fn cluster_file(prefix: &str, zone: &str, istiod: bool) -> String {
    let mut f = format!(
        r#"services:
  - name: web
    namespace: app
    ports: [{{ name: http, port: 8080 }}]
    endpoints:
      - {{ ip: {prefix}.0.1, zone: {zone} }}
      - {{ ip: {prefix}.0.2, zone: {zone} }}
  - name: api
    namespace: app
    policy: nearest
    max_answers: 1
    endpoints:
      - {{ ip: {prefix}.1.1, zone: {zone} }}
      - {{ ip: {prefix}.1.2, zone: {zone} }}
"#
    );
    if istiod {
        f.push_str(&format!(
            "  - name: istiod\n    namespace: cp\n    ports: [{{ name: grpc-xds, port: 15010 }}]\n    endpoints:\n      - {{ ip: {prefix}.9.1, zone: {zone} }}\n"
        ));
    }
    f
}

const WEB: &str = "web.app.svc.clusterset.local";

#[test]
fn answers_are_ordered_by_the_clients_tier() {
    let demo = fleet();
    let m = Meshdns::start(&demo.config());
    // A client of alpha (zone a): alpha, then beta (same region), then gamma.
    assert_eq!(
        m.dig(&format!("{WEB} A -b 127.0.1.7")).answer_data(),
        [
            "10.8.0.1",
            "10.8.0.2",
            "10.12.0.1",
            "10.12.0.2",
            "10.16.0.1",
            "10.16.0.2"
        ]
    );
    // A client of beta (zone b).
    assert_eq!(
        m.dig(&format!("{WEB} A -b 127.0.2.7")).answer_data(),
        [
            "10.12.0.1",
            "10.12.0.2",
            "10.8.0.1",
            "10.8.0.2",
            "10.16.0.1",
            "10.16.0.2"
        ]
    );
    // A client of gamma (europe): gamma, then the rest in cluster order.
    assert_eq!(
        m.dig(&format!("{WEB} A -b 127.0.3.7")).answer_data(),
        [
            "10.16.0.1",
            "10.16.0.2",
            "10.8.0.1",
            "10.8.0.2",
            "10.12.0.1",
            "10.12.0.2"
        ]
    );
    // Outside every range: the local cluster's locality (alpha).
    assert_eq!(
        m.dig(&format!("{WEB} A -b 127.0.0.1")).answer_data()[0],
        "10.8.0.1"
    );
    // Stable within a tier: the same question gets the same order every time.
    for _ in 0..5 {
        assert_eq!(
            m.dig(&format!("{WEB} A -b 127.0.2.7")).answer_data()[..2],
            ["10.12.0.1", "10.12.0.2"]
        );
    }
}

#[test]
fn srv_priority_is_the_tier() {
    let demo = fleet();
    let m = Meshdns::start(&demo.config());
    let d = m.dig(&format!("_http._tcp.{WEB} SRV -b 127.0.2.7"));
    let prio: Vec<(String, String)> = d
        .answer
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.data.split_whitespace().collect();
            (
                f[0].to_string(),
                f[3].split('.').nth(1).unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        prio,
        [
            ("0".into(), "beta".into()),
            ("0".into(), "beta".into()),
            ("1".into(), "alpha".into()),
            ("1".into(), "alpha".into()),
            ("2".into(), "gamma".into()),
            ("2".into(), "gamma".into()),
        ],
        "{}",
        d.raw
    );
    assert!(
        d.answer
            .iter()
            .all(|r| r.data.split_whitespace().nth(1) == Some("1"))
    );
}

#[test]
fn nearest_fails_over_and_back() {
    let demo = fleet();
    let m = Meshdns::start(&demo.config());
    let istiod = "istiod.cp.svc.clusterset.local A -b 127.0.2.7";
    // beta has no istiod: the nearest tier with one is alpha's (same region); gamma's is not
    // answered.
    assert_eq!(m.dig(istiod).answer_data(), ["10.8.9.1"]);
    // alpha's istiod stops being ready: fail over to europe.
    let alpha = cluster_file("10.8", "us-central1-a", true);
    demo.write(
        "alpha.yaml",
        &alpha.replace(
            "{ ip: 10.8.9.1, zone: us-central1-a }",
            "{ ip: 10.8.9.1, zone: us-central1-a, ready: false }",
        ),
    );
    m.dig_until(istiod, WAIT, |d| d.answer_data() == ["10.16.9.1"]);
    // It returns: fail back.
    demo.write("alpha.yaml", &alpha);
    m.dig_until(istiod, WAIT, |d| d.answer_data() == ["10.8.9.1"]);
    // SRV follows the same policy.
    let d = m.dig("_grpc-xds._tcp.istiod.cp.svc.clusterset.local SRV -b 127.0.2.7");
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    assert!(d.answer[0].data.starts_with("1 1 15010 "), "{}", d.raw);
}

#[test]
fn the_answer_cap_and_a_services_own_policy() {
    let demo = fleet();
    let m = Meshdns::start(&demo.config());
    assert_eq!(
        m.dig("api.app.svc.clusterset.local A -b 127.0.3.7")
            .answer_data(),
        ["10.16.1.1"]
    );
    assert_eq!(
        m.dig("api.app.svc.clusterset.local A -b 127.0.1.7")
            .answer_data(),
        ["10.8.1.1"]
    );
    // A per-cluster name is not capped: it asks for that cluster's endpoints.
    assert_eq!(
        m.dig("gamma.api.app.svc.clusterset.local A -b 127.0.1.7")
            .answer
            .len(),
        2
    );
}

#[test]
fn client_subnet_from_trusted_and_untrusted_forwarders() {
    let demo = fleet();
    let m = Meshdns::start(&demo.config());
    // The trusted forwarder speaks for a client of beta: beta first, scope = the /24 that
    // located it.
    let d = m.dig(&format!("{WEB} A -b 127.0.0.9 +subnet=127.0.2.0/24"));
    assert_eq!(d.answer_data()[0], "10.12.0.1", "{}", d.raw);
    assert!(
        d.raw.contains("CLIENT-SUBNET: 127.0.2.0/24/24"),
        "{}",
        d.raw
    );
    // ... and for one of gamma, on a /25: scope 25, more specific than the source /24.
    let d = m.dig(&format!("{WEB} A -b 127.0.0.9 +subnet=127.0.3.0/24"));
    assert_eq!(d.answer_data()[0], "10.16.0.1", "{}", d.raw);
    assert!(
        d.raw.contains("CLIENT-SUBNET: 127.0.3.0/24/25"),
        "{}",
        d.raw
    );
    // An untrusted forwarder's ECS is ignored: its own locality (outside every range: the
    // local cluster's) decides, and scope 0 says the answer does not vary by subnet.
    let d = m.dig(&format!("{WEB} A -b 127.0.0.8 +subnet=127.0.2.0/24"));
    assert_eq!(d.answer_data()[0], "10.8.0.1", "{}", d.raw);
    assert!(d.raw.contains("CLIENT-SUBNET: 127.0.2.0/24/0"), "{}", d.raw);
    // A trusted forwarder from inside a range, without ECS: its own locality.
    let d = m.dig(&format!("{WEB} A -b 127.0.3.8"));
    assert_eq!(d.answer_data()[0], "10.16.0.1", "{}", d.raw);
    assert!(!d.raw.contains("CLIENT-SUBNET"), "{}", d.raw);
    // SOURCE PREFIX 0: locate by the sender, scope 0.
    let d = m.dig(&format!("{WEB} A -b 127.0.0.9 +subnet=0.0.0.0/0"));
    assert_eq!(d.answer_data()[0], "10.8.0.1", "{}", d.raw);
}
