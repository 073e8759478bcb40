//! Fan-out over Pub/Sub, end to end: three clusters, each a fake Kubernetes API server
//! (tests/fake-apiserver), one fake Pub/Sub (tests/fake-pubsub, the real google.pubsub.v1
//! gRPC protocol), and real `meshdns` processes: in each cluster the instance holding the
//! Lease publishes the cluster's slice, and the others' `pubsub` sources read it. Answers are
//! checked with real dig.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_pubsub::FakePubSub;
use google_cloud_googleapis::pubsub::v1::PubsubMessage;
use meshdns::fanout::client::PubSub;
use meshdns::fanout::pull;
use meshdns::fanout::wire::{ATTR_CLUSTER, Body, Envelope, SnapshotPart, WIRE_VERSION};
use prost::Message;
use support::Meshdns;
use support::fleet::{self, Fleet, a, cluster_field, service, slice};

const WAIT: Duration = Duration::from_secs(30);
const PROJECT: &str = "meshdns-test";
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];

fn topic(cluster: &str) -> String {
    format!("projects/{PROJECT}/topics/meshdns-{cluster}")
}

/// Three clusters with one service each (`reviews.bookinfo` in all three) and a fake Pub/Sub
/// with the clusters' topics and the requests topic (the operator makes them, see
/// docs/install.md).
struct World {
    fleet: Fleet,
    pubsub: FakePubSub,
}

impl World {
    fn new() -> World {
        let fleet = Fleet::new(&CLUSTERS);
        for (i, name) in CLUSTERS.iter().enumerate() {
            fleet.api(name).apply_many(vec![
                service("bookinfo", "reviews"),
                slice(
                    "bookinfo",
                    &format!("reviews-{name}"),
                    "reviews",
                    "IPv4",
                    &[(&format!("10.{}.0.1", 10 + i), true)],
                ),
            ]);
        }
        let pubsub = fleet.rt.block_on(FakePubSub::start()).unwrap();
        fleet.rt.block_on(async {
            let client = PubSub::emulator(&pubsub.emulator_host()).unwrap();
            let mut topics: Vec<String> = CLUSTERS.iter().map(|c| topic(c)).collect();
            topics.push(format!("projects/{PROJECT}/topics/meshdns-requests"));
            for name in topics {
                let request = client
                    .request(google_cloud_googleapis::pubsub::v1::Topic {
                        name,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                client.publisher().create_topic(request).await.unwrap();
            }
        });
        World { fleet, pubsub }
    }

    /// The config of an instance in `local`: its own cluster through its API server (and the
    /// lease there), the two others through Pub/Sub.
    fn config(&self, local: &str, file: &str, publish_extra: &str) -> PathBuf {
        let mut yaml = format!(
            "zone: clusterset.local.\nallow: [127.0.0.0/8]\nlocal_cluster: {local}\n\
             expire_after: 1h\nready_timeout: 1s\ndrain: 0s\n\
             publish: {{ project: {PROJECT}, lease_duration: 2s{publish_extra} }}\n\
             clusters:\n"
        );
        for (i, name) in CLUSTERS.iter().enumerate() {
            let source = if *name == local {
                format!("{{ kube: {{ kubeconfig: {name}.kubeconfig }} }}")
            } else {
                format!("{{ pubsub: {{ project: {PROJECT} }} }}")
            };
            yaml.push_str(&format!(
                "  - name: {name}\n    networks: [10.{}.0.0/16]\n    source: {source}\n",
                10 + i
            ));
        }
        let path = self.fleet.dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Starts an instance named `pod` in cluster `local` and waits until it serves all three
    /// clusters.
    fn start(&self, local: &str, pod: &str, publish_extra: &str) -> Meshdns {
        let config = self.config(local, &format!("{pod}.yaml"), publish_extra);
        let host = self.pubsub.emulator_host();
        let m = Meshdns::spawn_env(
            &config,
            &[],
            &[
                ("PUBSUB_EMULATOR_HOST", host.as_str()),
                ("POD_NAME", pod),
                ("POD_NAMESPACE", "meshdns"),
            ],
        );
        m.wait_ready(WAIT);
        m
    }

    /// Sets cluster `name`'s reviews endpoints.
    fn set_reviews(&self, name: &str, ips: &[&str]) {
        let eps: Vec<(&str, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
        self.fleet.api(name).apply(slice(
            "bookinfo",
            &format!("reviews-{name}"),
            "reviews",
            "IPv4",
            &eps,
        ));
    }

    /// The lease's holder and transitions (the epoch) in cluster `name`.
    fn lease(&self, name: &str) -> (String, u64) {
        let lease = self
            .fleet
            .api(name)
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("meshdns"),
                "meshdns-publisher",
            )
            .unwrap_or_default();
        (
            lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0),
        )
    }
}

const REVIEWS: &str = "reviews.bookinfo.svc.clusterset.local";

fn wait_answer(what: &str, m: &Meshdns, want: &[&str]) {
    fleet::wait_for(what, m, WAIT, || a(m, REVIEWS) == want);
}

/// One counter of `/metrics` (0 when absent).
fn metric(m: &Meshdns, name_and_labels: &str) -> f64 {
    m.metric(name_and_labels)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn received(m: &Meshdns, cluster: &str, outcome: &str) -> f64 {
    metric(
        m,
        &format!(
            "meshdns_pubsub_received_messages_total{{cluster=\"{cluster}\",outcome=\"{outcome}\"}}"
        ),
    )
}

#[test]
fn a_change_in_one_cluster_is_answered_by_every_other_cluster() {
    let w = World::new();
    let ms: Vec<Meshdns> = CLUSTERS
        .iter()
        .map(|c| w.start(c, &format!("{c}-0"), ""))
        .collect();
    let all = ["10.10.0.1", "10.11.0.1", "10.12.0.1"];
    for m in &ms {
        wait_answer("every cluster's endpoint", m, &all);
    }
    for c in CLUSTERS {
        assert_eq!(
            w.lease(c),
            (format!("{c}-0"), 1),
            "one publisher per cluster"
        );
    }
    // Pod churn in gamma: everyone answers the new address.
    w.set_reviews("gamma", &["10.12.0.9"]);
    let want = ["10.10.0.1", "10.11.0.1", "10.12.0.9"];
    for m in &ms {
        wait_answer("gamma's new endpoint", m, &want);
    }
    // Every peer read gamma from Pub/Sub, not from gamma's API server.
    for m in &ms[..2] {
        assert_eq!(cluster_field(m, "gamma", "state"), "synced");
        assert!(received(m, "gamma", "applied") >= 2.0);
    }
    // Each instance made its own subscriptions to its two peers' topics.
    let subs = w.pubsub.subscriptions();
    for c in CLUSTERS {
        let own = subs
            .iter()
            .filter(|s| s.contains(&format!("/meshdns-{c}-")))
            .count();
        assert_eq!(own, 2, "{c}: {subs:?}");
    }
    // A clean stop deletes them (and releases the leases).
    for mut m in ms {
        assert_eq!(m.signal_and_wait("TERM", WAIT), Some(0));
    }
    for c in CLUSTERS {
        assert_eq!(w.lease(c).0, "", "{c}: released");
    }
    let deadline = Instant::now() + WAIT;
    while w.pubsub.subscriptions().iter().any(|s| {
        CLUSTERS
            .iter()
            .any(|c| s.contains(&format!("/meshdns-{c}-")))
    }) {
        assert!(Instant::now() < deadline, "{:?}", w.pubsub.subscriptions());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn leader_failover_without_a_gap_in_answers() {
    let w = World::new();
    let first = w.start("alpha", "alpha-0", "");
    let second = w.start("alpha", "alpha-1", "");
    let beta = w.start("beta", "beta-0", "");
    let all = ["10.10.0.1", "10.11.0.1"];
    wait_answer("alpha through Pub/Sub", &beta, &all);
    assert_eq!(w.lease("alpha"), ("alpha-0".into(), 1));

    // The publisher dies without a word (no release): the lease must expire first.
    let mut first = first;
    assert_eq!(first.signal_and_wait("KILL", WAIT), None, "killed");
    let started = Instant::now();
    let mut queries = 0;
    while w.lease("alpha").0 != "alpha-1" {
        // Answers go on all the time, from the last data.
        assert_eq!(a(&beta, REVIEWS), all, "answers during the failover");
        queries += 1;
        assert!(
            started.elapsed() < WAIT,
            "no takeover: {:?}",
            w.lease("alpha")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(w.lease("alpha"), ("alpha-1".into(), 2), "a new epoch");
    assert!(queries > 10, "{queries} queries during the failover");
    // The new publisher's data reaches beta.
    w.set_reviews("alpha", &["10.10.0.7"]);
    wait_answer(
        "alpha's change via the new leader",
        &beta,
        &["10.10.0.7", "10.11.0.1"],
    );
    assert_eq!(cluster_field(&beta, "alpha", "state"), "synced");
    // A graceful stop hands over at once (the lease is released).
    drop(second);
    let _third = w.start("alpha", "alpha-2", "");
    fleet::wait_for("alpha-2 takes over", &beta, WAIT, || {
        w.lease("alpha").0 == "alpha-2"
    });
}

#[test]
fn a_lost_message_is_recovered_by_the_next_snapshot() {
    let w = World::new();
    let alpha = w.start("alpha", "alpha-0", "");
    let beta = w.start("beta", "beta-0", "");
    wait_answer("alpha through Pub/Sub", &beta, &["10.10.0.1", "10.11.0.1"]);
    // The next delta is lost; the one after it shows beta a gap in the sequence.
    w.pubsub.lose_next_publishes(&topic("alpha"), 1);
    w.set_reviews("alpha", &["10.10.0.2"]);
    fleet::wait_for("the lost publish", &alpha, WAIT, || {
        w.pubsub.stats().lost == 1
    });
    // Meanwhile beta goes on answering what it had: never a partial slice.
    assert_eq!(a(&beta, REVIEWS), ["10.10.0.1", "10.11.0.1"]);
    w.set_reviews("alpha", &["10.10.0.2", "10.10.0.3"]);
    // Beta asks for a snapshot, alpha's publisher sends one: both changes are in.
    wait_answer(
        "recovered by a snapshot",
        &beta,
        &["10.10.0.2", "10.10.0.3", "10.11.0.1"],
    );
    assert!(received(&beta, "alpha", "gap") >= 1.0);
    assert!(
        metric(
            &alpha,
            "meshdns_pubsub_snapshot_requests_total{kind=\"answered\"}"
        ) >= 1.0
    );
}

#[test]
fn a_lost_message_is_recovered_by_the_periodic_snapshot_without_requests() {
    let w = World::new();
    let extra = ", resync: 1s, requests_topic: \"\"";
    let _alpha = w.start("alpha", "alpha-0", extra);
    // Beta's sources ask nobody either.
    let config = w
        .config("beta", "beta-0.yaml", extra)
        .to_string_lossy()
        .to_string();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "{ pubsub: { project: meshdns-test } }",
        "{ pubsub: { project: meshdns-test, requests_topic: \"\" } }",
    );
    std::fs::write(&config, text).unwrap();
    let host = w.pubsub.emulator_host();
    let beta = Meshdns::spawn_env(
        std::path::Path::new(&config),
        &[],
        &[
            ("PUBSUB_EMULATOR_HOST", host.as_str()),
            ("POD_NAME", "beta-0"),
        ],
    );
    beta.wait_ready(WAIT);
    wait_answer("alpha through Pub/Sub", &beta, &["10.10.0.1", "10.11.0.1"]);
    w.pubsub.lose_next_publishes(&topic("alpha"), 1);
    w.set_reviews("alpha", &["10.10.0.4"]);
    wait_answer(
        "recovered by the next periodic snapshot",
        &beta,
        &["10.10.0.4", "10.11.0.1"],
    );
    assert_eq!(w.pubsub.stats().lost, 1);
}

#[test]
fn a_pubsub_outage_keeps_the_last_data_and_marks_it_stale() {
    let w = World::new();
    let _alpha = w.start("alpha", "alpha-0", "");
    let beta = w.start("beta", "beta-0", "");
    let all = ["10.10.0.1", "10.11.0.1"];
    wait_answer("alpha through Pub/Sub", &beta, &all);

    w.fleet.rt.block_on(w.pubsub.set_down(true));
    fleet::wait_for("alpha stale at beta", &beta, WAIT, || {
        cluster_field(&beta, "alpha", "state") == "stale"
    });
    // Still answered, from the last data, and said to be stale (EDE 3).
    assert_eq!(a(&beta, REVIEWS), all);
    let d = beta.dig(&format!("{REVIEWS} A"));
    assert!(d.raw.contains("EDE: 3 (Stale Answer)"), "{}", d.raw);
    // A change made during the outage arrives after it.
    w.set_reviews("alpha", &["10.10.0.5"]);
    std::thread::sleep(Duration::from_millis(300));
    w.fleet.rt.block_on(w.pubsub.set_down(false));
    wait_answer(
        "alpha's change after the outage",
        &beta,
        &["10.10.0.5", "10.11.0.1"],
    );
    fleet::wait_for("alpha synced again at beta", &beta, WAIT, || {
        cluster_field(&beta, "alpha", "state") == "synced"
    });
}

#[test]
fn a_message_for_another_cluster_is_ignored_and_counted() {
    let w = World::new();
    let _alpha = w.start("alpha", "alpha-0", "");
    let beta = w.start("beta", "beta-0", "");
    let all = ["10.10.0.1", "10.11.0.1"];
    wait_answer("alpha through Pub/Sub", &beta, &all);
    let skipped = cluster_field(&beta, "alpha", "skipped")
        .as_u64()
        .unwrap_or(0);

    // Someone writes gamma's (empty) snapshot to alpha's topic, with a huge epoch.
    let envelope = Envelope {
        version: WIRE_VERSION,
        cluster: "gamma".into(),
        epoch: 1_000,
        seq: 1,
        body: Some(Body::Snapshot(SnapshotPart {
            part: 0,
            parts: 1,
            services: vec![],
        })),
        ..Envelope::default()
    };
    w.fleet.rt.block_on(async {
        let client = PubSub::emulator(&w.pubsub.emulator_host()).unwrap();
        let message = PubsubMessage {
            data: envelope.encode_to_vec(),
            attributes: [(ATTR_CLUSTER.to_string(), "gamma".to_string())].into(),
            ordering_key: "alpha".into(),
            ..Default::default()
        };
        pull::publish(&client, &topic("alpha"), vec![message.clone()])
            .await
            .unwrap();
        // And garbage.
        let garbage = PubsubMessage {
            data: vec![0xff; 7],
            ordering_key: "alpha".into(),
            ..Default::default()
        };
        pull::publish(&client, &topic("alpha"), vec![garbage])
            .await
            .unwrap();
    });
    // Counted in the metrics, and as skipped input of cluster alpha in the catalog.
    fleet::wait_for("both counted", &beta, WAIT, || {
        received(&beta, "alpha", "foreign_cluster") == 1.0
            && received(&beta, "alpha", "undecodable") == 1.0
            && cluster_field(&beta, "alpha", "skipped").as_u64() == Some(skipped + 2)
    });
    // Alpha's data is untouched, and alpha's own next change still applies.
    assert_eq!(a(&beta, REVIEWS), all);
    w.set_reviews("alpha", &["10.10.0.8"]);
    wait_answer("alpha's next change", &beta, &["10.10.0.8", "10.11.0.1"]);
}

/// An OAuth token endpoint on loopback, as a service account key file's `token_uri` names it:
/// answers every request with `token`, and keeps the request bodies.
struct TokenServer {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenServer {
    fn start(token: &'static str) -> TokenServer {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let reply = format!(
                    "{{\"access_token\":\"{token}\",\"expires_in\":3600,\"token_type\":\"Bearer\"}}"
                );
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        TokenServer { url, requests }
    }
}

/// Without `PUBSUB_EMULATOR_HOST`, calls carry a token from Application Default Credentials:
/// here a service account key file (made with openssl) whose token endpoint is on loopback,
/// and the Pub/Sub endpoint moved to the fake (plaintext) with `MESHDNS_PUBSUB_ENDPOINT`.
#[test]
fn without_the_emulator_every_call_carries_an_adc_token() {
    let w = World::new();
    let _alpha = w.start("alpha", "alpha-0", "");
    let dir = w.fleet.dir.path();
    let key = dir.join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(made.status.success(), "{made:?}");
    let tokens = TokenServer::start("meshdns-test-token");
    let key_file = dir.join("sa.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test",
            "private_key": std::fs::read_to_string(&key).unwrap(),
            "client_email": "meshdns-beta@meshdns-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": tokens.url,
        })
        .to_string(),
    )
    .unwrap();
    let config = w.config("beta", "beta-adc.yaml", "");
    let endpoint = format!("http://{}", w.pubsub.emulator_host());
    let beta = Meshdns::spawn_env(
        &config,
        &[],
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap()),
            ("MESHDNS_PUBSUB_ENDPOINT", endpoint.as_str()),
            ("POD_NAME", "beta-0"),
            ("POD_NAMESPACE", "meshdns"),
        ],
    );
    beta.wait_ready(WAIT);
    wait_answer(
        "alpha through Pub/Sub with ADC",
        &beta,
        &["10.10.0.1", "10.11.0.1"],
    );
    // A signed JWT went to the token endpoint (RFC 7523), and the fake saw the token.
    let requests = tokens.requests.lock().unwrap().clone();
    assert!(!requests.is_empty());
    assert!(
        requests[0].contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{requests:?}"
    );
    assert!(
        w.pubsub
            .authorizations()
            .contains(&"Bearer meshdns-test-token".to_string()),
        "{:?}",
        w.pubsub.authorizations()
    );
}

/// A slice larger than one message goes out as a snapshot in parts, applied only whole.
#[test]
fn a_snapshot_in_many_parts_is_applied_whole() {
    let w = World::new();
    let objs: Vec<_> = (0..300)
        .flat_map(|i| {
            let name = format!("svc-{i}");
            [
                service("bulk", &name),
                slice(
                    "bulk",
                    &name,
                    &name,
                    "IPv4",
                    &[(&format!("10.10.{}.{}", 1 + i / 200, 1 + i % 200), true)],
                ),
            ]
        })
        .collect();
    w.fleet.api("alpha").apply_many(objs);
    let alpha = w.start("alpha", "alpha-0", ", max_message_bytes: 2048");
    let beta = w.start("beta", "beta-0", "");
    fleet::wait_for("all 301 services of alpha at beta", &beta, WAIT, || {
        cluster_field(&beta, "alpha", "services")
            .as_array()
            .is_some_and(|s| s.len() == 301)
    });
    assert_eq!(
        a(&beta, "svc-299.bulk.svc.clusterset.local"),
        ["10.10.2.100"]
    );
    let parts = metric(
        &alpha,
        "meshdns_pubsub_published_messages_total{kind=\"snapshot\"}",
    );
    assert!(parts >= 10.0, "{parts} snapshot messages");
    assert!(received(&beta, "alpha", "snapshot_part") >= 9.0);
}
