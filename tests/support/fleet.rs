//! Clusters as fake Kubernetes API servers (tests/fake-apiserver), and helpers to read what a
//! running meshdns made of them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

use super::{Meshdns, http_get};

/// Fake API servers by name, each with a kubeconfig `<dir>/<name>.kubeconfig`.
pub struct Fleet {
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub servers: Vec<(String, FakeApiServer)>,
}

impl Fleet {
    pub fn new(names: &[&str]) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let servers = names
            .iter()
            .map(|n| {
                let s = rt.block_on(FakeApiServer::start()).unwrap();
                s.write_kubeconfig(&dir.path().join(format!("{n}.kubeconfig")), n)
                    .unwrap();
                (n.to_string(), s)
            })
            .collect();
        Fleet { rt, dir, servers }
    }

    pub fn api(&self, name: &str) -> &FakeApiServer {
        &self.servers.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn set_down(&self, name: &str, down: bool) {
        self.rt.block_on(self.api(name).set_down(down));
    }

    /// Writes `yaml` as `<dir>/meshdns.yaml` (kubeconfig paths in it are relative to `dir`).
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("meshdns.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "type": "ClusterIP", "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
    })
}

/// An EndpointSlice of `svc` with `(address, ready)` endpoints.
pub fn slice(ns: &str, name: &str, svc: &str, family: &str, eps: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, ready)| json!({ "addresses": [ip], "conditions": { "ready": ready } }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": ns, "labels": { "kubernetes.io/service-name": svc } },
        "addressType": family,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })
}

/// The A answers for `name`, sorted.
pub fn a(m: &Meshdns, name: &str) -> Vec<String> {
    m.dig(&format!("{name} A")).sorted_answer_data()
}

pub fn debug_catalog(m: &Meshdns) -> Value {
    let (_, body) = http_get(m.ops, "/debug/catalog").unwrap();
    serde_json::from_str(&body).unwrap()
}

/// One field of one cluster in `/debug/catalog` (Null if absent).
pub fn cluster_field(m: &Meshdns, cluster: &str, field: &str) -> Value {
    debug_catalog(m)["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .map(|c| c[field].clone())
        .unwrap_or(Value::Null)
}

/// Polls `pred` until it holds, or fails after `timeout` with the catalog and the log.
pub fn wait_for(what: &str, m: &Meshdns, timeout: Duration, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out: {what}\ncatalog: {}\nlog:\n{}",
            debug_catalog(m),
            m.logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
