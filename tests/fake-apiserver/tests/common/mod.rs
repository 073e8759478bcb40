//! Helpers shared by the integration tests: a real `kube::Client` pointed at
//! the fake, object builders, and a mirror that folds watcher events.

#![allow(dead_code)] // each test binary uses a different subset

use fake_apiserver::FakeApiServer;
use futures::{Stream, StreamExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// How long any single wait in a test may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub async fn client(srv: &FakeApiServer) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::from_yaml(&srv.kubeconfig_yaml("c1")).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(config).expect("client")
}

pub fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

pub fn secret(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
    })
}

/// A reflector in miniature: folds watcher events into `ns/name -> resourceVersion`,
/// and records the event sequence (`Init`, `InitApply(ns/name)`, ...).
#[derive(Debug, Default)]
pub struct Mirror {
    pub objects: BTreeMap<String, String>,
    buffer: Option<BTreeMap<String, String>>,
    pub log: Vec<String>,
    pub errors: Vec<String>,
}

fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Mirror {
    pub fn apply<K: ResourceExt>(&mut self, event: watcher::Event<K>) {
        let entry = |o: &K| (key(o), o.resource_version().unwrap_or_default());
        match event {
            watcher::Event::Init => {
                self.buffer = Some(BTreeMap::new());
                self.log.push("Init".into());
            }
            watcher::Event::InitApply(o) => {
                let (k, rv) = entry(&o);
                self.log.push(format!("InitApply({k})"));
                self.buffer
                    .as_mut()
                    .expect("InitApply after Init")
                    .insert(k, rv);
            }
            watcher::Event::InitDone => {
                self.objects = self.buffer.take().expect("InitDone after Init");
                self.log.push("InitDone".into());
            }
            watcher::Event::Apply(o) => {
                let (k, rv) = entry(&o);
                self.log.push(format!("Apply({k})"));
                self.objects.insert(k, rv);
            }
            watcher::Event::Delete(o) => {
                let (k, _) = entry(&o);
                self.log.push(format!("Delete({k})"));
                self.objects.remove(&k);
            }
        }
    }

    /// Poll the watcher, folding events, until `done(self)` holds. Errors are
    /// recorded (with a short pause, as a backoff would) and polling goes on.
    pub async fn sync_until<K, S>(
        &mut self,
        stream: &mut S,
        what: &str,
        done: impl Fn(&Mirror) -> bool,
    ) where
        K: ResourceExt,
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Unpin,
    {
        within(what, async {
            while !done(self) {
                match stream.next().await.expect("watcher streams never end") {
                    Ok(event) => self.apply(event),
                    Err(e) => {
                        self.errors.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
        .await;
    }

    pub fn names(&self) -> Vec<&str> {
        self.objects.keys().map(String::as_str).collect()
    }

    pub fn logged(&self, entry: &str) -> bool {
        self.log.iter().any(|e| e == entry)
    }

    pub fn inits(&self) -> usize {
        self.log.iter().filter(|e| *e == "InitDone").count()
    }
}
