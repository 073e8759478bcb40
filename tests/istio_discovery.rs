//! Peer clusters found in Istio remote secrets: the real binary watches the Secrets of its
//! local cluster (a fake API server) whose kubeconfigs point at other fake API servers, and the
//! zone follows as secrets are added, removed, rotated or broken; answers checked with real dig.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use support::Meshdns;
use support::fleet::{self, Fleet, a, cluster_field, debug_catalog, service, slice};

const WAIT: Duration = Duration::from_secs(30);
const REVIEWS: &str = "reviews.bookinfo.svc.clusterset.local";

/// meshdns.yaml: alpha is local and listed; `clusters_extra` lists more; discovery on.
fn config(f: &Fleet, top_extra: &str, clusters_extra: &str) -> PathBuf {
    let yaml = format!(
        "zone: clusterset.local.\nallow: [127.0.0.0/8]\nlocal_cluster: alpha\n{top_extra}\n\
             discover:\n  istio_remote_secrets: {{ namespace: istio-system }}\n\
             clusters:\n  - name: alpha\n    networks: [10.10.0.0/16]\n    source: {{ kube: {{ kubeconfig: alpha.kubeconfig }} }}\n{clusters_extra}"
    );
    f.write_config(&yaml)
}

/// Creates or replaces a remote secret in alpha's istio-system.
fn put_secret(f: &Fleet, name: &str, annotations: Value, data: &[(&str, String)]) {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b64(v))))
        .collect();
    let mut annotations = annotations;
    if annotations.get("networking.istio.io/cluster").is_none()
        && let Some((first, _)) = data.iter().next()
    {
        annotations["networking.istio.io/cluster"] = json!(first);
    }
    f.api("alpha").apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name, "namespace": "istio-system",
            "labels": { "istio/multiCluster": "true" },
            "annotations": annotations,
        },
        "type": "Opaque",
        "data": data,
    }));
}

/// The remote secret istioctl makes for one peer: `istio-remote-secret-<peer>`.
fn remote_secret(f: &Fleet, peer: &str, server: &str) {
    put_secret(
        f,
        &format!("istio-remote-secret-{peer}"),
        json!({}),
        &[(peer, f.api(server).kubeconfig_yaml(peer))],
    );
}

fn delete_secret(f: &Fleet, name: &str) {
    assert!(
        f.api("alpha")
            .delete("v1", "Secret", Some("istio-system"), name)
    );
}

fn b64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// `reviews` with one endpoint in each cluster: alpha 10.10.1.1, beta (and beta2, a second API
/// server for beta) 10.11.1.1, gamma 10.12.1.1.
fn fleet() -> Fleet {
    let f = Fleet::new(&["alpha", "beta", "beta2", "gamma"]);
    for (name, ip) in [
        ("alpha", "10.10.1.1"),
        ("beta", "10.11.1.1"),
        ("beta2", "10.11.1.1"),
        ("gamma", "10.12.1.1"),
    ] {
        f.api(name).apply_many(vec![
            service("bookinfo", "reviews"),
            slice("bookinfo", "reviews-1", "reviews", "IPv4", &[(ip, true)]),
        ]);
    }
    f
}

fn wait_for(what: &str, m: &Meshdns, pred: impl Fn() -> bool) {
    fleet::wait_for(what, m, WAIT, pred)
}

fn relists(m: &Meshdns, cluster: &str) -> u64 {
    cluster_field(m, cluster, "relists").as_u64().unwrap_or(0)
}

/// Queries `name` in a tight loop until stopped; returns (queries, unexpected answers).
fn probe(
    m: &Meshdns,
    name: &str,
    expect: &[&str],
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, Vec<String>)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, dns, name) = (stop.clone(), m.dns, format!("{name}."));
    let expect: Vec<String> = expect.iter().map(|e| e.to_string()).collect();
    let total = AtomicU64::new(0);
    let h = std::thread::spawn(move || {
        let mut bad = Vec::new();
        while !s.load(Ordering::Relaxed) {
            total.fetch_add(1, Ordering::Relaxed);
            match support::query(dns, &name, RecordType::A) {
                Some((0, answers)) if answers == expect => {}
                other => bad.push(format!("{other:?}")),
            }
        }
        (total.load(Ordering::Relaxed), bad)
    });
    (stop, h)
}

#[test]
fn the_zone_follows_remote_secrets_added_removed_and_rotated() {
    let f = fleet();
    remote_secret(&f, "beta", "beta");
    let m = Meshdns::start(&config(&f, "", ""));
    // Ready only once the secrets were read and beta synced: it is there at once.
    assert_eq!(a(&m, REVIEWS), ["10.10.1.1", "10.11.1.1"]);
    assert_eq!(a(&m, &format!("beta.{REVIEWS}")), ["10.11.1.1"]);

    // A new secret: its cluster's services appear.
    remote_secret(&f, "gamma", "gamma");
    m.dig_until(&format!("{REVIEWS} A"), WAIT, |d| {
        d.sorted_answer_data() == ["10.10.1.1", "10.11.1.1", "10.12.1.1"]
    });

    // Where each cluster comes from, in /debug/catalog and /metrics.
    assert_eq!(cluster_field(&m, "alpha", "origin"), "config");
    assert_eq!(
        cluster_field(&m, "beta", "origin"),
        "istio-secret istio-system/istio-remote-secret-beta"
    );
    assert_eq!(
        cluster_field(&m, "gamma", "origin"),
        "istio-secret istio-system/istio-remote-secret-gamma"
    );
    let cat = debug_catalog(&m);
    let d = &cat["discovery"];
    assert_eq!(d["state"], "synced", "{d}");
    assert_eq!(
        d["istio_remote_secrets"]["label_selector"],
        "istio/multiCluster=true"
    );
    let secrets: Vec<(&str, Value)> = d["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["clusters"].clone()))
        .collect();
    assert_eq!(
        secrets,
        [
            ("istio-remote-secret-beta", json!(["beta"])),
            ("istio-remote-secret-gamma", json!(["gamma"]))
        ]
    );
    assert!(
        !cat.to_string().contains("server:"),
        "no kubeconfig in {cat}"
    );
    assert_eq!(
        m.metric("meshdns_discovery_clusters{origin=\"istio-secret\"}")
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        m.metric("meshdns_discovery_clusters{origin=\"config\"}")
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        m.metric(
            "meshdns_cluster_origin{cluster=\"beta\",origin=\"istio-secret\",secret=\"istio-system/istio-remote-secret-beta\"}"
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(m.metric("meshdns_discovery_secrets").as_deref(), Some("2"));

    // Rotation: a new token (here a new user name) for beta restarts beta's source alone, and
    // beta's answers never go away meanwhile.
    let beta_name = format!("beta.{REVIEWS}");
    for (round, (server, user)) in [("beta", "beta-rotated"), ("beta2", "beta")]
        .iter()
        .enumerate()
    {
        let (alpha_before, gamma_before, beta_before) = (
            relists(&m, "alpha"),
            relists(&m, "gamma"),
            relists(&m, "beta"),
        );
        let watches_before = f.api(server).stats().watches;
        let (stop, h) = probe(&m, &beta_name, &["10.11.1.1"]);
        std::thread::sleep(Duration::from_millis(100));
        let kubeconfig = f.api(server).kubeconfig_yaml(user);
        put_secret(
            &f,
            "istio-remote-secret-beta",
            json!({}),
            &[("beta", kubeconfig)],
        );
        wait_for(&format!("beta's source restarted ({round})"), &m, || {
            relists(&m, "beta") > beta_before && f.api(server).stats().watches > watches_before
        });
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let (total, bad) = h.join().unwrap();
        assert!(total > 10, "probed {total} times");
        assert!(
            bad.is_empty(),
            "beta's answer went away during rotation {round}: {bad:?}"
        );
        assert_eq!(relists(&m, "gamma"), gamma_before, "gamma untouched");
        assert_eq!(relists(&m, "alpha"), alpha_before, "alpha untouched");
    }
    // beta now comes from beta2's API server: a change there shows.
    f.api("beta2").apply(slice(
        "bookinfo",
        "reviews-1",
        "reviews",
        "IPv4",
        &[("10.11.1.7", true)],
    ));
    m.dig_until(&format!("{beta_name} A"), WAIT, |d| {
        d.answer_data() == ["10.11.1.7"]
    });

    // SIGHUP merges the file's clusters with the discovered ones: nothing restarts.
    let before = (relists(&m, "beta"), relists(&m, "gamma"));
    config(&f, "ttl: 7s", "");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &m.pid().to_string()])
        .status();
    m.dig_until(&format!("{beta_name} A"), WAIT, |d| {
        d.answer.first().is_some_and(|r| r.ttl == 7)
    });
    assert_eq!(a(&m, REVIEWS), ["10.10.1.1", "10.11.1.7", "10.12.1.1"]);
    assert_eq!((relists(&m, "beta"), relists(&m, "gamma")), before);

    // A deleted secret: its cluster's slice is dropped.
    delete_secret(&f, "istio-remote-secret-gamma");
    m.dig_until(&format!("{REVIEWS} A"), WAIT, |d| {
        d.sorted_answer_data() == ["10.10.1.1", "10.11.1.7"]
    });
    assert_eq!(m.dig(&format!("gamma.{REVIEWS} A")).status, "NXDOMAIN");
    assert_eq!(cluster_field(&m, "gamma", "name"), Value::Null);
    assert_eq!(
        m.metric("meshdns_discovery_clusters{origin=\"istio-secret\"}")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn broken_own_and_configured_clusters_in_secrets() {
    let f = fleet();
    // gamma is in the config (its own kubeconfig file, its own region) and in a secret that
    // points at beta's API server: the config wins.
    let gamma = "  - name: gamma\n    region: config-region\n    source: { kube: { kubeconfig: gamma.kubeconfig } }\n";
    put_secret(
        &f,
        "istio-remote-secret-gamma",
        json!({}),
        &[("gamma", f.api("beta").kubeconfig_yaml("gamma"))],
    );
    // A secret naming this instance's own cluster (pointing elsewhere): ignored.
    put_secret(
        &f,
        "istio-remote-secret-alpha",
        json!({}),
        &[("alpha", f.api("beta").kubeconfig_yaml("alpha"))],
    );
    // A broken secret: one key is not a kubeconfig; the good key of the same secret serves.
    put_secret(
        &f,
        "istio-remote-secret-mixed",
        json!({ "meshdns.io/region": "europe-west1", "meshdns.io/zones": "europe-west1-b", "meshdns.io/networks": "10.11.0.0/16" }),
        &[
            ("delta", "this is not a kubeconfig".to_string()),
            ("beta", f.api("beta").kubeconfig_yaml("beta")),
        ],
    );
    let config = config(&f, "", gamma);
    let m = Meshdns::start(&config);
    assert_eq!(a(&m, REVIEWS), ["10.10.1.1", "10.11.1.1", "10.12.1.1"]);
    assert_eq!(a(&m, &format!("alpha.{REVIEWS}")), ["10.10.1.1"]);
    assert_eq!(a(&m, &format!("gamma.{REVIEWS}")), ["10.12.1.1"]);
    assert_eq!(m.dig(&format!("delta.{REVIEWS} A")).status, "NXDOMAIN");
    assert_eq!(cluster_field(&m, "gamma", "origin"), "config");
    assert_eq!(cluster_field(&m, "gamma", "region"), "config-region");
    assert_eq!(cluster_field(&m, "alpha", "origin"), "config");
    // The annotations give the discovered cluster its locality: PTR in its networks.
    assert_eq!(cluster_field(&m, "beta", "region"), "europe-west1");
    assert_eq!(
        cluster_field(&m, "beta", "zones"),
        json!(["europe-west1-b"])
    );
    assert_eq!(
        m.dig("-x 10.11.1.1").answer_data(),
        ["10-11-1-1.beta.reviews.bookinfo.svc.clusterset.local."]
    );
    let clusters: Vec<String> = debug_catalog(&m)["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(clusters, ["alpha", "gamma", "beta"]);

    // Skipped once, counted, and said in /debug/catalog; the left-out clusters are logged once.
    assert_eq!(
        m.metric("meshdns_discovery_skipped_total").as_deref(),
        Some("1")
    );
    let d = debug_catalog(&m)["discovery"].clone();
    assert_eq!(d["skipped"], 1);
    let mixed = d["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "istio-remote-secret-mixed")
        .unwrap()
        .clone();
    assert_eq!(mixed["clusters"], json!(["beta"]));
    assert!(
        mixed["skipped"][0].as_str().unwrap().contains("delta"),
        "{mixed}"
    );
    let logs = m.logs();
    for needle in [
        "cluster alpha from secret istio-system/istio-remote-secret-alpha is this instance's own cluster",
        "cluster gamma from secret istio-system/istio-remote-secret-gamma is listed in the config",
    ] {
        assert_eq!(logs.matches(needle).count(), 1, "{needle}\n{logs}");
    }
    assert_eq!(
        logs.matches("skipped a malformed remote secret entry")
            .count(),
        1,
        "{logs}"
    );

    // A new version of the broken secret is read (and counted) again.
    put_secret(
        &f,
        "istio-remote-secret-mixed",
        json!({}),
        &[
            ("delta", "still: not a kubeconfig".to_string()),
            ("beta", f.api("beta").kubeconfig_yaml("beta")),
        ],
    );
    wait_for("second skip", &m, || {
        m.metric("meshdns_discovery_skipped_total").as_deref() == Some("2")
    });
    assert_eq!(a(&m, &format!("beta.{REVIEWS}")), ["10.11.1.1"]);

    // `dump` lists the secrets too: the zone has the discovered clusters.
    let out = std::process::Command::new(support::bin())
        .args(["dump", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let zone = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        zone.contains("beta.reviews.bookinfo.svc.clusterset.local. 5 IN A 10.11.1.1"),
        "{zone}"
    );
}

#[test]
fn without_the_local_api_the_discovered_clusters_keep_serving() {
    let f = fleet();
    remote_secret(&f, "beta", "beta");
    let m = Meshdns::start(&config(&f, "", ""));
    assert_eq!(a(&m, &format!("beta.{REVIEWS}")), ["10.11.1.1"]);
    f.rt.block_on(f.api("alpha").set_down(true));
    wait_for("discovery failing", &m, || {
        debug_catalog(&m)["discovery"]["state"] == "failing"
    });
    // The secrets cannot be read: what was found stays, and its source is untouched.
    assert_eq!(a(&m, &format!("beta.{REVIEWS}")), ["10.11.1.1"]);
    assert_eq!(cluster_field(&m, "beta", "state"), "synced");
    assert_ne!(
        m.metric("meshdns_discovery_errors_total").as_deref(),
        Some("0")
    );
    // Back: a secret deleted meanwhile is noticed.
    delete_secret(&f, "istio-remote-secret-beta");
    f.rt.block_on(f.api("alpha").set_down(false));
    m.dig_until(&format!("beta.{REVIEWS} A"), WAIT, |d| {
        d.status == "NXDOMAIN"
    });
    wait_for("discovery synced", &m, || {
        debug_catalog(&m)["discovery"]["state"] == "synced"
    });
}
