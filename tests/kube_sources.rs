//! The `kube` source against fake API servers (one per cluster) that speak the real list/watch
//! protocol, so the real `kube` client code runs unmodified; answers checked with real dig.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::fleet::{self, Fleet, a, cluster_field, service, slice};
use support::{Meshdns, http_get};

const WAIT: Duration = Duration::from_secs(30);

/// meshdns.yaml for `f`: the first cluster is local; `source_extra` is added to each kube
/// source.
fn config(f: &Fleet, source_extra: &str, top_extra: &str) -> PathBuf {
    let mut yaml = format!(
        "zone: clusterset.local.\nallow: [127.0.0.0/8]\nlocal_cluster: {}\n{top_extra}\nclusters:\n",
        f.servers[0].0
    );
    for (i, (name, _)) in f.servers.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: {name}\n    networks: [10.{}.0.0/16]\n    source: {{ kube: {{ kubeconfig: {name}.kubeconfig{source_extra} }} }}\n",
            10 + i
        ));
    }
    f.write_config(&yaml)
}

fn wait_for(what: &str, m: &Meshdns, pred: impl Fn() -> bool) {
    fleet::wait_for(what, m, WAIT, pred)
}

fn istiod_fleet() -> Fleet {
    let f = Fleet::new(&["alpha", "beta", "gamma"]);
    f.api("alpha").apply_many(vec![
        service("istio-system", "istiod"),
        slice(
            "istio-system",
            "istiod-abc",
            "istiod",
            "IPv4",
            &[("10.10.0.5", true), ("10.10.0.6", true)],
        ),
        service("bookinfo", "reviews"),
        slice(
            "bookinfo",
            "reviews-1",
            "reviews",
            "IPv4",
            &[("10.10.1.1", true)],
        ),
    ]);
    f.api("beta").apply_many(vec![
        service("bookinfo", "reviews"),
        slice(
            "bookinfo",
            "reviews-1",
            "reviews",
            "IPv4",
            &[("10.11.1.1", true), ("10.11.1.2", false)],
        ),
    ]);
    f.api("gamma").apply_many(vec![
        service("bookinfo", "reviews"),
        slice(
            "bookinfo",
            "reviews-1",
            "reviews",
            "IPv4",
            &[("10.12.1.1", true)],
        ),
    ]);
    f
}

#[test]
fn three_clusters_merge_and_follow_changes() {
    let f = istiod_fleet();
    let m = Meshdns::start(&config(&f, "", ""));
    let reviews = "reviews.bookinfo.svc.clusterset.local";
    assert_eq!(a(&m, reviews), ["10.10.1.1", "10.11.1.1", "10.12.1.1"]);
    // The local cluster first.
    assert_eq!(m.dig(&format!("{reviews} A")).answer_data()[0], "10.10.1.1");
    assert_eq!(a(&m, &format!("beta.{reviews}")), ["10.11.1.1"]);
    let srv = m.dig(&format!("_http._tcp.{reviews} SRV"));
    assert_eq!(srv.answer.len(), 3, "{}", srv.raw);
    assert!(
        srv.answer.iter().all(|r| r.data.starts_with("0 1 8080 ")),
        "{}",
        srv.raw
    );

    // istiod restarts in beta's view of alpha: a new pod IP is answered everywhere.
    let istiod = "istiod.istio-system.svc.clusterset.local";
    assert_eq!(a(&m, istiod), ["10.10.0.5", "10.10.0.6"]);
    f.api("alpha").apply(slice(
        "istio-system",
        "istiod-abc",
        "istiod",
        "IPv4",
        &[("10.10.0.5", true), ("10.10.0.7", true)],
    ));
    m.dig_until(&format!("{istiod} A"), WAIT, |d| {
        d.sorted_answer_data() == ["10.10.0.5", "10.10.0.7"]
    });

    // Scale down to nothing: the service exists with no endpoint (NODATA), then back up.
    f.api("alpha")
        .apply(slice("istio-system", "istiod-abc", "istiod", "IPv4", &[]));
    let d = m.dig_until(&format!("{istiod} A"), WAIT, |d| d.answer.is_empty());
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    f.api("alpha").apply(slice(
        "istio-system",
        "istiod-abc",
        "istiod",
        "IPv4",
        &[("10.10.0.9", true)],
    ));
    m.dig_until(&format!("{istiod} A"), WAIT, |d| {
        d.answer_data() == ["10.10.0.9"]
    });

    // A service deleted in one cluster disappears from that cluster only.
    assert!(
        f.api("gamma")
            .delete("v1", "Service", Some("bookinfo"), "reviews")
    );
    m.dig_until(&format!("{reviews} A"), WAIT, |d| {
        d.sorted_answer_data() == ["10.10.1.1", "10.11.1.1"]
    });
    assert_eq!(m.dig(&format!("gamma.{reviews} A")).status, "NXDOMAIN");
}

#[test]
fn multi_slice_dual_stack_external_name_and_malformed_objects() {
    let f = Fleet::new(&["alpha"]);
    let api = f.api("alpha");
    api.apply_many(vec![
        service("web", "front"),
        slice("web", "front-v4a", "front", "IPv4", &[("10.10.0.1", true), ("10.10.0.2", true)]),
        // The same address in a second slice (as during a slice migration) is one endpoint.
        slice("web", "front-v4b", "front", "IPv4", &[("10.10.0.2", true), ("10.10.0.3", true)]),
        slice("web", "front-v6", "front", "IPv6", &[("fd00::1", true)]),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "legacy", "namespace": "web" },
            "spec": { "type": "ExternalName", "externalName": "api.example.com" },
        }),
        // Malformed: a bad address (the rest of the slice serves), a slice without its
        // service label, an FQDN slice.
        service("web", "odd"),
        slice("web", "odd-1", "odd", "IPv4", &[("10.10.9.300", true), ("10.10.9.1", true)]),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "nolabel", "namespace": "web" },
            "addressType": "IPv4", "endpoints": [{ "addresses": ["10.10.8.1"] }],
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "odd-fqdn", "namespace": "web", "labels": { "kubernetes.io/service-name": "odd" } },
            "addressType": "FQDN", "endpoints": [{ "addresses": ["db.example.com"] }],
        }),
    ]);
    let m = Meshdns::start(&config(&f, "", ""));
    assert_eq!(
        a(&m, "front.web.svc.clusterset.local"),
        ["10.10.0.1", "10.10.0.2", "10.10.0.3"]
    );
    assert_eq!(
        m.dig("front.web.svc.clusterset.local AAAA").answer_data(),
        ["fd00::1"]
    );
    assert_eq!(
        m.dig("legacy.web.svc.clusterset.local A").answer_data(),
        ["api.example.com."]
    );
    assert_eq!(a(&m, "odd.web.svc.clusterset.local"), ["10.10.9.1"]);
    assert!(cluster_field(&m, "alpha", "skipped").as_u64().unwrap() >= 3);
    let (_, metrics) = http_get(m.ops, "/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("meshdns_cluster_skipped_total{cluster=\"alpha\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // PTR for endpoints inside the cluster's networks.
    let d = m.dig("-x 10.10.0.3");
    assert_eq!(
        d.answer_data(),
        ["10-10-0-3.alpha.front.web.svc.clusterset.local."]
    );
}

#[test]
fn relists_never_show_an_empty_or_partial_answer() {
    let f = Fleet::new(&["alpha", "beta"]);
    let mut objs = vec![service("bookinfo", "reviews")];
    for i in 0..20 {
        objs.push(slice(
            "bookinfo",
            &format!("reviews-{i}"),
            "reviews",
            "IPv4",
            &[(&format!("10.10.{i}.1"), true)],
        ));
        objs.push(service("filler", &format!("svc-{i}")));
    }
    f.api("alpha").apply_many(objs);
    f.api("beta").apply_many(vec![
        service("bookinfo", "reviews"),
        slice(
            "bookinfo",
            "reviews-b",
            "reviews",
            "IPv4",
            &[("10.11.0.1", true)],
        ),
    ]);
    // Small pages, so a relist takes several requests.
    let m = Meshdns::start(&config(&f, "", ""));
    let name = "reviews.bookinfo.svc.clusterset.local.";
    assert_eq!(
        support::query(m.dns, name, RecordType::A).unwrap().1.len(),
        21
    );

    // A probe queries in a tight loop throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, bad, total, dns) = (stop.clone(), bad.clone(), total.clone(), m.dns);
        std::thread::spawn(move || {
            let mut seen_bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                total.fetch_add(1, Ordering::Relaxed);
                match support::query(dns, name, RecordType::A) {
                    Some((0, answers)) if answers.len() == 21 => {}
                    other => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        seen_bad.push(format!("{other:?}"));
                    }
                }
            }
            seen_bad
        })
    };
    let relists = |c: &str| cluster_field(&m, c, "relists").as_u64().unwrap_or(0);
    let gone_at_start = f.api("alpha").stats().gone;
    for round in 0..3 {
        let before = relists("alpha");
        // The API server restarts and its history was compacted past what the watcher saw:
        // the resume gets 410 Gone and the watcher relists. (A watcher still relisting from
        // the round before, when the outage hits, lists again without a 410: each round waits
        // for a relist, and the 410s are counted over all rounds.)
        f.set_down("alpha", true);
        f.api("alpha")
            .apply(service("filler", &format!("new-{round}")));
        f.api("alpha").compact();
        f.set_down("alpha", false);
        wait_for(&format!("relist {round}"), &m, || relists("alpha") > before);
        // A dropped connection without compaction: resumes from its resourceVersion.
        f.api("beta").drop_watches();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = probe.join().unwrap();
    assert!(
        f.api("alpha").stats().gone >= gone_at_start + 2,
        "relists after 410 Gone: {:?}",
        f.api("alpha").stats()
    );
    assert!(total.load(Ordering::Relaxed) > 20);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "bad answers during relists: {seen:?}"
    );
}

#[test]
fn an_outage_keeps_the_last_data_marks_it_stale_and_recovers() {
    let f = istiod_fleet();
    let m = Meshdns::start(&config(&f, "", ""));
    let name = "beta.reviews.bookinfo.svc.clusterset.local";
    assert_eq!(a(&m, name), ["10.11.1.1"]);

    f.set_down("beta", true);
    wait_for("beta stale", &m, || {
        cluster_field(&m, "beta", "state") == "stale"
    });
    // Still answered from the last data; other clusters untouched.
    assert_eq!(a(&m, name), ["10.11.1.1"]);
    assert_eq!(a(&m, "reviews.bookinfo.svc.clusterset.local").len(), 3);
    assert_eq!(cluster_field(&m, "alpha", "state"), "synced");
    let (_, metrics) = http_get(m.ops, "/metrics").unwrap();
    assert!(
        metrics.contains("meshdns_cluster_source_state{cluster=\"beta\",state=\"stale\"} 1"),
        "{metrics}"
    );

    // Changes made while it was down arrive after recovery.
    f.api("beta").apply(slice(
        "bookinfo",
        "reviews-1",
        "reviews",
        "IPv4",
        &[("10.11.1.9", true)],
    ));
    f.set_down("beta", false);
    wait_for("beta synced", &m, || {
        cluster_field(&m, "beta", "state") == "synced"
    });
    m.dig_until(&format!("{name} A"), WAIT, |d| {
        d.answer_data() == ["10.11.1.9"]
    });
}

#[test]
fn expire_after_drops_a_lost_clusters_data() {
    let f = istiod_fleet();
    let m = Meshdns::start(&config(&f, "", "expire_after: 2s"));
    let name = "gamma.reviews.bookinfo.svc.clusterset.local";
    assert_eq!(a(&m, name), ["10.12.1.1"]);
    f.set_down("gamma", true);
    wait_for("gamma expired", &m, || {
        cluster_field(&m, "gamma", "state") == "expired"
    });
    assert_eq!(m.dig(&format!("{name} A")).status, "NXDOMAIN");
    assert_eq!(a(&m, "reviews.bookinfo.svc.clusterset.local").len(), 2);
    f.set_down("gamma", false);
    m.dig_until(&format!("{name} A"), WAIT, |d| {
        d.answer_data() == ["10.12.1.1"]
    });
}

#[test]
fn a_broken_remote_kubeconfig_is_reported_and_the_rest_serve() {
    let f = istiod_fleet();
    let config = config(&f, "", "ready_timeout: 2s");
    std::fs::write(
        f.dir.path().join("gamma.kubeconfig"),
        "this: is not a kubeconfig\n",
    )
    .unwrap();
    let m = Meshdns::spawn(&config, &[]);
    // Not ready while gamma has not synced; ready after ready_timeout, naming gamma.
    m.wait_ready(WAIT);
    let (code, body) = http_get(m.ops, "/readyz").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("gamma"), "{body}");
    assert_eq!(a(&m, "reviews.bookinfo.svc.clusterset.local").len(), 2);
    assert_eq!(cluster_field(&m, "gamma", "state"), "syncing");
    let err = cluster_field(&m, "gamma", "last_error");
    assert!(err.as_str().unwrap_or("").contains("kubeconfig"), "{err}");
}

#[test]
fn export_modes_and_namespaces() {
    let f = Fleet::new(&["alpha"]);
    let mut labeled = service("apps", "labeled");
    labeled["metadata"]["labels"] = json!({ "meshdns.io/export": "true" });
    f.api("alpha").apply_many(vec![
        labeled,
        slice(
            "apps",
            "labeled-1",
            "labeled",
            "IPv4",
            &[("10.10.0.1", true)],
        ),
        service("apps", "plain"),
        slice("apps", "plain-1", "plain", "IPv4", &[("10.10.0.2", true)]),
        service("other", "elsewhere"),
        slice(
            "other",
            "elsewhere-1",
            "elsewhere",
            "IPv4",
            &[("10.10.0.3", true)],
        ),
    ]);
    let m = Meshdns::start(&config(&f, ", export: labeled", ""));
    assert_eq!(a(&m, "labeled.apps.svc.clusterset.local"), ["10.10.0.1"]);
    assert_eq!(
        m.dig("plain.apps.svc.clusterset.local A").status,
        "NXDOMAIN"
    );
    drop(m);

    // serviceexport: nothing is exported while the CRD is missing; then ServiceExports count.
    let m = Meshdns::start(&config(&f, ", export: serviceexport", ""));
    assert_eq!(
        m.dig("plain.apps.svc.clusterset.local A").status,
        "NXDOMAIN"
    );
    drop(m);
    let api = f.api("alpha");
    api.set_resource_installed("multicluster.x-k8s.io/v1alpha1", "serviceexports", true);
    api.apply(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": { "name": "plain", "namespace": "apps" },
    }));
    let m = Meshdns::start(&config(&f, ", export: serviceexport", ""));
    assert_eq!(a(&m, "plain.apps.svc.clusterset.local"), ["10.10.0.2"]);
    assert_eq!(
        m.dig("labeled.apps.svc.clusterset.local A").status,
        "NXDOMAIN"
    );
    api.apply(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": { "name": "labeled", "namespace": "apps" },
    }));
    m.dig_until("labeled.apps.svc.clusterset.local A", WAIT, |d| {
        d.answer_data() == ["10.10.0.1"]
    });
    drop(m);

    // namespaces: only those are watched.
    let m = Meshdns::start(&config(&f, ", namespaces: [other]", ""));
    assert_eq!(a(&m, "elsewhere.other.svc.clusterset.local"), ["10.10.0.3"]);
    assert_eq!(
        m.dig("plain.apps.svc.clusterset.local A").status,
        "NXDOMAIN"
    );
}

#[test]
fn streaming_lists() {
    let f = istiod_fleet();
    let m = Meshdns::start(&config(&f, ", streaming_lists: true", ""));
    assert_eq!(a(&m, "reviews.bookinfo.svc.clusterset.local").len(), 3);
    f.api("beta").apply(slice(
        "bookinfo",
        "reviews-1",
        "reviews",
        "IPv4",
        &[("10.11.1.5", true)],
    ));
    m.dig_until("beta.reviews.bookinfo.svc.clusterset.local A", WAIT, |d| {
        d.answer_data() == ["10.11.1.5"]
    });
}

#[test]
fn stale_answers_carry_an_extended_dns_error() {
    let f = istiod_fleet();
    let m = Meshdns::start(&config(&f, "", ""));
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert!(!d.raw.contains("EDE"), "{}", d.raw);
    f.set_down("beta", true);
    wait_for("beta stale", &m, || {
        cluster_field(&m, "beta", "state") == "stale"
    });

    // Answers that use beta's data say so (RFC 8914 code 3), naming beta.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert_eq!(d.answer.len(), 3, "{}", d.raw);
    assert!(d.raw.contains("EDE: 3 (Stale Answer)"), "{}", d.raw);
    assert!(d.raw.contains("stale data from beta"), "{}", d.raw);
    let d = m.dig("beta.reviews.bookinfo.svc.clusterset.local A");
    assert!(d.raw.contains("EDE: 3 (Stale Answer)"), "{}", d.raw);
    // Answers that do not use it do not.
    let d = m.dig("alpha.reviews.bookinfo.svc.clusterset.local A");
    assert!(!d.raw.contains("EDE"), "{}", d.raw);
    let d = m.dig("istiod.istio-system.svc.clusterset.local A");
    assert!(!d.raw.contains("EDE"), "{}", d.raw);
    // The provenance record shows the state too.
    let d = m.dig("_status.reviews.bookinfo.svc.clusterset.local TXT");
    assert!(d.raw.contains("cluster=beta state=stale for"), "{}", d.raw);

    f.set_down("beta", false);
    wait_for("beta synced", &m, || {
        cluster_field(&m, "beta", "state") == "synced"
    });
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert!(!d.raw.contains("EDE"), "{}", d.raw);
}

#[test]
fn service_annotations_set_the_answer_policy() {
    let f = Fleet::new(&["alpha"]);
    let mut capped = service("app", "capped");
    capped["metadata"]["annotations"] =
        json!({ "meshdns.io/max-answers": "1", "meshdns.io/locality-policy": "nearest" });
    let mut bad = service("app", "bad");
    bad["metadata"]["annotations"] = json!({ "meshdns.io/locality-policy": "closest" });
    f.api("alpha").apply_many(vec![
        capped,
        slice(
            "app",
            "capped-1",
            "capped",
            "IPv4",
            &[("10.10.0.1", true), ("10.10.0.2", true)],
        ),
        bad,
        slice("app", "bad-1", "bad", "IPv4", &[("10.10.0.3", true)]),
    ]);
    let m = Meshdns::start(&config(&f, "", ""));
    assert_eq!(a(&m, "capped.app.svc.clusterset.local"), ["10.10.0.1"]);
    // A malformed annotation makes the service unusable: skipped and counted, not guessed.
    assert_eq!(m.dig("bad.app.svc.clusterset.local A").status, "NXDOMAIN");
    assert!(cluster_field(&m, "alpha", "skipped").as_u64().unwrap() >= 1);
}
