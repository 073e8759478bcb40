//! The ops HTTP server: `/metrics`, `/healthz`, `/readyz`, `/debug/catalog`, `/debug/zone`.
//!
//! Plain hyper (already in the tree through `kube`): five GET routes do not need a framework.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::catalog::{CatalogReader, Snapshot};
use crate::discovery::Discovered;
use crate::metrics::Metrics;
use crate::model::{Service, SourceState};

pub struct Ops {
    pub catalog: CatalogReader,
    pub metrics: Metrics,
    /// Set when shutdown begins: `/readyz` turns 503 while answers go on (drain).
    pub draining: AtomicBool,
    pub started: std::time::Instant,
    pub ready_timeout: std::time::Duration,
    /// What discovery found (`/debug/catalog`).
    pub discovery: tokio::sync::watch::Receiver<Discovered>,
    /// The remote secrets were listed and their clusters are in the catalog (true when there
    /// is nothing to discover): until then `/readyz` waits, since the clusters to sync are not
    /// known yet.
    pub discovery_ready: AtomicBool,
}

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    debug!(%error, "ops accept failed");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ops = ops.clone();
                async move { Ok::<_, Infallible>(route(&ops, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                debug!(%error, "ops connection ended");
            }
        });
    }
}

fn route(ops: &Ops, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => readyz(ops),
        "/metrics" => {
            let mut r = text(StatusCode::OK, ops.metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/debug/catalog" => {
            let mut json = catalog_json(&ops.catalog.load());
            json["discovery"] = discovery_json(&ops.discovery.borrow());
            let body = serde_json::to_string_pretty(&json).unwrap_or_default();
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/debug/zone" => text(StatusCode::OK, ops.catalog.load().zone.master_file()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn readyz(ops: &Ops) -> Response<Full<Bytes>> {
    if ops.draining.load(Ordering::Relaxed) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: draining\n".into(),
        );
    }
    let snap = ops.catalog.load();
    let mut waiting: Vec<&str> = snap
        .clusters
        .iter()
        .filter(|c| !c.synced_once)
        .map(|c| &*c.name)
        .collect();
    if !ops.discovery_ready.load(Ordering::Relaxed) {
        waiting.push("discovery (remote secrets)");
    }
    if waiting.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else if ops.started.elapsed() >= ops.ready_timeout {
        text(
            StatusCode::OK,
            format!(
                "ready (ready_timeout passed); not synced: {}\n",
                waiting.join(", ")
            ),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not synced yet: {}\n", waiting.join(", ")),
        )
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Every cluster's slice, state and last error, as served.
pub fn catalog_json(snap: &Snapshot) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> = snap
        .clusters
        .iter()
        .map(|c| {
            let mut keys: Vec<_> = c.slice.keys().collect();
            keys.sort();
            let services: Vec<serde_json::Value> = keys
                .into_iter()
                .filter_map(|k| c.slice.get(k).map(|s| (k, s)))
                .map(|(k, s)| match &**s {
                    Service::ExternalName(n) => json!({
                        "namespace": &*k.namespace, "name": &*k.name,
                        "external_name": n.to_ascii(),
                    }),
                    Service::Endpoints { ports, endpoints, policy } => json!({
                        "namespace": &*k.namespace, "name": &*k.name,
                        "policy": policy.policy.map(|p| format!("{p:?}").to_lowercase()),
                        "max_answers": policy.max_answers,
                        "ports": ports.iter().map(|p| json!({
                            "name": p.name.as_deref(), "port": p.port, "protocol": p.protocol.label(),
                        })).collect::<Vec<_>>(),
                        "endpoints": endpoints.iter().map(|e| json!({
                            "ip": e.ip.to_string(), "hostname": e.hostname.as_deref(),
                            "zone": e.zone.as_deref(), "node": e.node.as_deref(), "ready": e.ready,
                        })).collect::<Vec<_>>(),
                    }),
                })
                .collect();
            let stale_since = match c.state {
                SourceState::Stale { since_unix } => Some(since_unix),
                _ => None,
            };
            json!({
                "name": &*c.name,
                "origin": c.origin.to_string(),
                "region": c.region,
                "zones": c.zones,
                "state": c.state.name(),
                "stale_since_unix": stale_since,
                "synced_once": c.synced_once,
                "last_change_unix": c.last_change_unix,
                "last_error": c.last_error,
                "relists": c.relists,
                "rejected": c.rejected,
                "errors": c.errors,
                "skipped": c.skipped,
                "endpoints": c.endpoints,
                "services": services,
            })
        })
        .collect();
    json!({
        "zone": snap.zone.settings.origin.to_ascii(),
        "serial": snap.serial(),
        "clusters": clusters,
    })
}

/// What discovery watches and found, per secret: the clusters it gives and what it skipped
/// (never the kubeconfigs: they hold credentials). `null` when discovery is off.
pub fn discovery_json(d: &Discovered) -> serde_json::Value {
    let Some(watching) = &d.watching else {
        return serde_json::Value::Null;
    };
    let secrets: Vec<serde_json::Value> = d
        .secrets
        .values()
        .map(|s| {
            json!({
                "namespace": s.namespace,
                "name": s.name,
                "resource_version": s.resource_version,
                "istio_cluster": s.istio_cluster,
                "clusters": s.clusters.iter().map(|c| &*c.name).collect::<Vec<_>>(),
                "skipped": s.skipped,
            })
        })
        .collect();
    json!({
        "istio_remote_secrets": {
            "namespace": watching.namespace,
            "label_selector": watching.label_selector,
        },
        "state": if d.failing { "failing" } else if d.synced { "synced" } else { "syncing" },
        "last_error": d.last_error,
        "errors": d.errors,
        "skipped": d.skipped,
        "secrets": secrets,
    })
}
