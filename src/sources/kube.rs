//! The `kube` source: one cluster's Services and EndpointSlices, watched through its API server.
//!
//! Each resource (Services, EndpointSlices, and MCS ServiceExports when `export:
//! serviceexport`) is watched with kube-runtime's `watcher` — list+watch with bookmarks, or a
//! streaming list — once cluster-wide or once per configured namespace. The events feed a
//! [`Mirror`]: compact, parsed copies of what the cluster holds (never the API objects
//! themselves), from which the cluster's slice is derived.
//!
//! Consistency: a (re)list (`Init` … `InitApply` … `InitDone`) is buffered aside and replaces
//! that watch's part of the mirror at `InitDone`; only then is the whole slice sent to the
//! catalog, which swaps it in whole — there is never an empty or partial answer in between.
//! Nothing is sent before every watch has listed once. Single events patch only the services
//! they touch, at a cost proportional to that service.
//!
//! Staleness: a watch error marks the source stale (its last data keeps serving); it is synced
//! again when the API server answers a probe (`/version`) — the watcher itself resumes from the
//! last resourceVersion, or relists on 410 Gone, without telling. Errors back off
//! exponentially with jitter (kube's `ExponentialBackoff`, 250 ms → 10 s).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Status, backoff, pause};
use crate::catalog::{SourceHandle, Update};
use crate::config::{Export, KubeSourceConfig, parse_fqdn};
use crate::model::{
    AnswerPolicy, Endpoint, Policy, Port, Protocol, Service, ServiceKey, Slice, intern,
    is_dns_label, is_port_name,
};

/// The label a Service carries to be published with `export: labeled`.
pub const EXPORT_LABEL: &str = "meshdns.io/export";
/// Service annotations that set its locality policy (`all` | `nearest`) and answer cap.
pub const POLICY_ANNOTATION: &str = "meshdns.io/locality-policy";
pub const MAX_ANSWERS_ANNOTATION: &str = "meshdns.io/max-answers";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Server-side watch timeout; the client treats 5 s more of silence as a dead connection.
pub(crate) const WATCH_TIMEOUT_SECS: u32 = 60;
/// How often a stale source asks the API server whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One Service as the mirror keeps it.
#[derive(Clone, Debug, PartialEq)]
struct SvcInfo {
    kind: SvcKind,
    publish_not_ready: bool,
    labeled: bool,
    policy: AnswerPolicy,
}

#[derive(Clone, Debug, PartialEq)]
enum SvcKind {
    Normal,
    ExternalName(hickory_proto::rr::Name),
}

/// One endpoint address of a slice, with the conditions needed to decide readiness later
/// (it depends on the Service's `publishNotReadyAddresses`).
#[derive(Clone, Debug, PartialEq)]
struct SliceEndpoint {
    endpoint: Endpoint,
    ready: bool,
    terminating: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceInfo {
    service: ServiceKey,
    ports: Vec<Port>,
    endpoints: Vec<SliceEndpoint>,
}

/// Which objects one watch owns: a kind, in one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Scope {
    kind: Kind,
    namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    Slice,
    Export,
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// A watched object, parsed into the mirror's terms.
enum Obj {
    /// `None`: deleted (or no longer usable).
    Service(ServiceKey, Option<SvcInfo>),
    Slice {
        namespace: Arc<str>,
        name: String,
        info: Option<SliceInfo>,
    },
    Export(ServiceKey, bool),
}

/// A parsed watch object: what to apply (nothing if it is unusable) and what was skipped.
struct Parsed {
    obj: Option<Obj>,
    skipped: Vec<Skip>,
}

impl Parsed {
    fn ok(obj: Obj) -> Parsed {
        Parsed {
            obj: Some(obj),
            skipped: Vec::new(),
        }
    }
}

/// Parsed copies of one cluster's objects, and the slice derived from them.
#[derive(Default)]
struct Mirror {
    services: HashMap<ServiceKey, SvcInfo>,
    /// (namespace, slice name) → slice.
    slices: HashMap<(Arc<str>, String), SliceInfo>,
    by_service: HashMap<ServiceKey, BTreeSet<String>>,
    exports: HashSet<ServiceKey>,
}

impl Mirror {
    fn set_service(&mut self, key: ServiceKey, info: Option<SvcInfo>) {
        match info {
            Some(i) => self.services.insert(key, i),
            None => self.services.remove(&key),
        };
    }

    /// Replaces one slice; returns the services whose endpoints may have changed.
    fn set_slice(
        &mut self,
        namespace: Arc<str>,
        name: String,
        info: Option<SliceInfo>,
    ) -> Vec<ServiceKey> {
        let id = (namespace, name);
        let mut touched = Vec::with_capacity(2);
        if let Some(old) = self.slices.remove(&id) {
            if let Some(names) = self.by_service.get_mut(&old.service) {
                names.remove(&id.1);
                if names.is_empty() {
                    self.by_service.remove(&old.service);
                }
            }
            touched.push(old.service);
        }
        if let Some(info) = info {
            if !touched.contains(&info.service) {
                touched.push(info.service.clone());
            }
            self.by_service
                .entry(info.service.clone())
                .or_default()
                .insert(id.1.clone());
            self.slices.insert(id, info);
        }
        touched
    }

    /// Drops everything `scope` owns, before a relist puts it back.
    fn clear(&mut self, scope: &Scope) {
        match scope.kind {
            Kind::Service => self.services.retain(|k, _| !scope.covers(&k.namespace)),
            Kind::Export => self.exports.retain(|k| !scope.covers(&k.namespace)),
            Kind::Slice => {
                let ids: Vec<_> = self
                    .slices
                    .keys()
                    .filter(|(ns, _)| scope.covers(ns))
                    .cloned()
                    .collect();
                for (ns, name) in ids {
                    self.set_slice(ns, name, None);
                }
            }
        }
    }

    /// Applies one object; returns the services it may have changed.
    fn apply(&mut self, obj: Obj) -> Vec<ServiceKey> {
        match obj {
            Obj::Service(key, info) => {
                self.set_service(key.clone(), info);
                vec![key]
            }
            Obj::Slice {
                namespace,
                name,
                info,
            } => self.set_slice(namespace, name, info),
            Obj::Export(key, present) => {
                if present {
                    self.exports.insert(key.clone());
                } else {
                    self.exports.remove(&key);
                }
                vec![key]
            }
        }
    }

    fn exported(&self, key: &ServiceKey, info: &SvcInfo, export: Export) -> bool {
        match export {
            Export::All => true,
            Export::Labeled => info.labeled,
            Export::Serviceexport => self.exports.contains(key),
        }
    }

    /// What the cluster says about `key`: merged over its slices (the same address listed
    /// twice is one endpoint, ready if any slice says so).
    fn service(&self, key: &ServiceKey, export: Export) -> Option<Service> {
        let info = self.services.get(key)?;
        if !self.exported(key, info, export) {
            return None;
        }
        if let SvcKind::ExternalName(name) = &info.kind {
            return Some(Service::ExternalName(name.clone()));
        }
        let mut ports: Vec<Port> = Vec::new();
        let names = self.by_service.get(key);
        let total = names
            .into_iter()
            .flatten()
            .filter_map(|n| self.slices.get(&(key.namespace.clone(), n.clone())))
            .map(|s| s.endpoints.len())
            .sum();
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(total);
        let mut index: HashMap<IpAddr, usize> = HashMap::new();
        for name in self.by_service.get(key).into_iter().flatten() {
            let Some(slice) = self.slices.get(&(key.namespace.clone(), name.clone())) else {
                continue;
            };
            for p in &slice.ports {
                if !ports.contains(p) {
                    ports.push(p.clone());
                }
            }
            for e in &slice.endpoints {
                let ready = !e.terminating && (e.ready || info.publish_not_ready);
                match index.get(&e.endpoint.ip) {
                    Some(&i) => endpoints[i].ready |= ready,
                    None => {
                        index.insert(e.endpoint.ip, endpoints.len());
                        endpoints.push(Endpoint {
                            ready,
                            ..e.endpoint.clone()
                        });
                    }
                }
            }
        }
        ports.sort();
        Some(Service::Endpoints {
            ports,
            endpoints,
            policy: info.policy,
        })
    }

    fn slice(&self, export: Export) -> Slice {
        self.services
            .keys()
            .filter_map(|k| self.service(k, export).map(|s| (k.clone(), Arc::new(s))))
            .collect()
    }
}

/// Why an object was skipped (malformed): said once in the log, counted in the metrics.
type Skip = String;

fn parse_service(svc: &KService) -> Result<(ServiceKey, SvcInfo), Skip> {
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    if !is_dns_label(&name) || !is_dns_label(&ns) {
        return Err(format!(
            "service {ns}/{name}: name or namespace is not a DNS label"
        ));
    }
    let spec = svc.spec.as_ref();
    let kind = match spec.and_then(|s| s.type_.as_deref()) {
        Some("ExternalName") => {
            let ext = spec.and_then(|s| s.external_name.as_deref()).unwrap_or("");
            let name =
                parse_fqdn(ext).map_err(|e| format!("service {ns}/{name}: externalName: {e}"))?;
            SvcKind::ExternalName(name)
        }
        _ => SvcKind::Normal,
    };
    let labeled = svc.labels().get(EXPORT_LABEL).is_some_and(|v| v == "true");
    let annotations = svc.annotations();
    let policy = AnswerPolicy {
        policy: match annotations.get(POLICY_ANNOTATION) {
            None => None,
            Some(v) => Some(Policy::parse(v).ok_or_else(|| {
                format!("service {ns}/{name}: {POLICY_ANNOTATION}: {v:?} is not all or nearest")
            })?),
        },
        max_answers: match annotations.get(MAX_ANSWERS_ANNOTATION) {
            None => None,
            Some(v) => Some(v.trim().parse::<u16>().map_err(|_| {
                format!("service {ns}/{name}: {MAX_ANSWERS_ANNOTATION}: {v:?} is not a number")
            })?)
            .filter(|m| *m > 0),
        },
    };
    Ok((
        ServiceKey::new(&ns, &name),
        SvcInfo {
            kind,
            publish_not_ready: spec
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false),
            labeled,
            policy,
        },
    ))
}

/// Parses one EndpointSlice. Bad addresses are skipped (and reported) one by one; the rest of
/// the slice is kept.
fn parse_slice(slice: &EndpointSlice, skips: &mut Vec<Skip>) -> Result<SliceInfo, Skip> {
    let name = slice.name_any();
    let ns = slice.namespace().unwrap_or_default();
    let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) else {
        return Err(format!(
            "endpointslice {ns}/{name}: no {SERVICE_NAME_LABEL} label"
        ));
    };
    if !is_dns_label(svc) || !is_dns_label(&ns) {
        return Err(format!(
            "endpointslice {ns}/{name}: service {svc:?} is not a DNS label"
        ));
    }
    let v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        other => {
            return Err(format!(
                "endpointslice {ns}/{name}: addressType {other} is not served"
            ));
        }
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        // No port number means "all ports": nothing to put in an SRV record.
        let Some(port) = p
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                skips.push(format!(
                    "endpointslice {ns}/{name}: port protocol {other:?}"
                ));
                continue;
            }
        };
        let name = p
            .name
            .as_deref()
            .filter(|n| !n.is_empty() && is_port_name(n))
            .map(Arc::from);
        ports.push(Port {
            name,
            port,
            protocol,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.iter().map(|e| e.addresses.len()).sum());
    for e in &slice.endpoints {
        let conditions = e.conditions.as_ref();
        // Unset `ready` means ready (the API says: interpret unknown as ready).
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let hostname = e
            .hostname
            .as_deref()
            .filter(|h| is_dns_label(h))
            .map(Arc::from);
        for addr in &e.addresses {
            let ip: IpAddr = match addr.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    skips.push(format!("endpointslice {ns}/{name}: bad address {addr:?}"));
                    continue;
                }
            };
            if ip.is_ipv6() != v6 {
                skips.push(format!(
                    "endpointslice {ns}/{name}: {addr} is not {}",
                    slice.address_type
                ));
                continue;
            }
            endpoints.push(SliceEndpoint {
                endpoint: Endpoint {
                    ip,
                    hostname: hostname.clone(),
                    zone: e.zone.as_deref().map(intern),
                    node: e.node_name.as_deref().map(intern),
                    ready,
                },
                ready,
                terminating,
            });
        }
    }
    Ok(SliceInfo {
        service: ServiceKey::new(&ns, svc),
        ports,
        endpoints,
    })
}

fn service_export_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
        "serviceexports",
    )
}

/// What a watch stream yields, tagged with the index of the watch it came from.
type Tagged = (usize, Result<Event<Parsed>, watcher::Error>);
type TaggedStream = Pin<Box<dyn Stream<Item = Tagged> + Send>>;

fn watch_config(cfg: &KubeSourceConfig, kind: Kind) -> watcher::Config {
    let mut wc = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    if cfg.streaming_lists {
        wc = wc.streaming_lists();
    }
    if kind == Kind::Service
        && let Some(sel) = &cfg.label_selector
    {
        wc = wc.labels(sel);
    }
    wc
}

/// One watch, its objects parsed by `parse(object, deleted)`.
fn watch<K>(
    tag: usize,
    api: Api<K>,
    wc: watcher::Config,
    parse: fn(K, bool) -> Parsed,
) -> TaggedStream
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, wc)
        .backoff(backoff())
        .map(move |ev| {
            let ev = ev.map(|ev| match ev {
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
                Event::InitApply(o) => Event::InitApply(parse(o, false)),
                Event::Apply(o) => Event::Apply(parse(o, false)),
                Event::Delete(o) => Event::Delete(parse(o, true)),
            });
            (tag, ev)
        })
        .boxed()
}

fn service_obj(svc: KService, deleted: bool) -> Parsed {
    match parse_service(&svc) {
        Ok((key, _)) if deleted => Parsed::ok(Obj::Service(key, None)),
        Ok((key, info)) => Parsed::ok(Obj::Service(key, Some(info))),
        // A service that became unusable is gone from DNS: drop what we had for its name.
        Err(skip) => {
            let ns = svc.namespace().unwrap_or_default();
            let name = svc.name_any();
            let obj = (is_dns_label(&ns) && is_dns_label(&name))
                .then(|| Obj::Service(ServiceKey::new(&ns, &name), None));
            Parsed {
                obj,
                skipped: if deleted { Vec::new() } else { vec![skip] },
            }
        }
    }
}

fn slice_obj(slice: EndpointSlice, deleted: bool) -> Parsed {
    let namespace: Arc<str> = slice.namespace().unwrap_or_default().into();
    let name = slice.name_any();
    let mut skipped = Vec::new();
    let info = if deleted {
        None
    } else {
        // Unusable as a whole: it contributes nothing (and replaces what it did before).
        parse_slice(&slice, &mut skipped)
            .map_err(|skip| skipped.push(skip))
            .ok()
    };
    Parsed {
        obj: Some(Obj::Slice {
            namespace,
            name,
            info,
        }),
        skipped,
    }
}

fn export_obj(export: DynamicObject, deleted: bool) -> Parsed {
    let ns = export.namespace().unwrap_or_default();
    let name = export.name_any();
    if !is_dns_label(&ns) || !is_dns_label(&name) {
        return Parsed {
            obj: None,
            skipped: vec![format!("serviceexport {ns}/{name}: not a service name")],
        };
    }
    Parsed::ok(Obj::Export(ServiceKey::new(&ns, &name), !deleted))
}

impl Status {
    /// Back from stale: the whole slice again, since the catalog may have expired it.
    fn recovered(&mut self, mirror: &Mirror, export: Export) {
        if self.is_stale() {
            info!("source recovered");
            self.replace(mirror.slice(export));
        }
    }
}

/// A client for the cluster `cfg` names: an inline kubeconfig (a discovered Secret's), a
/// kubeconfig file, or the pod's own service account (in-cluster).
pub(crate) async fn connect(cfg: &KubeSourceConfig) -> Result<Client, String> {
    let opts = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = match (&cfg.inline_kubeconfig, &cfg.kubeconfig) {
        (Some(inline), _) => {
            let kc = kube::config::Kubeconfig::from_yaml(&inline.0)
                .map_err(|e| format!("inline kubeconfig: {e}"))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("inline kubeconfig: {e}"))?
        }
        (None, None) => kube::Config::incluster().map_err(|e| format!("in-cluster config: {e}"))?,
        (None, Some(path)) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
    };
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}

/// Keeps the cluster's slice in step with its API server until `stop`.
pub async fn run(cfg: KubeSourceConfig, handle: SourceHandle, stop: CancellationToken) {
    let mut status = Status::new(handle);
    let mut retry = backoff();
    loop {
        let client = match connect(&cfg).await {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "cannot build a client for this cluster");
                status.error(error);
                if !pause(&mut retry, &stop).await {
                    return;
                }
                continue;
            }
        };
        follow(&cfg, client, &mut status, &stop).await;
        return;
    }
}

/// Watches every scope and feeds the catalog, until `stop`.
async fn follow(
    cfg: &KubeSourceConfig,
    client: Client,
    status: &mut Status,
    stop: &CancellationToken,
) {
    let namespaces: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };
    let mut kinds = vec![Kind::Service, Kind::Slice];
    if cfg.export == Export::Serviceexport {
        kinds.push(Kind::Export);
    }
    let mut scopes = Vec::new();
    let mut streams = Vec::new();
    for kind in kinds {
        for ns in &namespaces {
            let tag = scopes.len();
            let wc = watch_config(cfg, kind);
            let c = client.clone();
            streams.push(match (kind, ns) {
                (Kind::Service, None) => watch(tag, Api::all(c), wc, service_obj),
                (Kind::Service, Some(n)) => watch(tag, Api::namespaced(c, n), wc, service_obj),
                (Kind::Slice, None) => watch(tag, Api::all(c), wc, slice_obj),
                (Kind::Slice, Some(n)) => watch(tag, Api::namespaced(c, n), wc, slice_obj),
                (Kind::Export, None) => watch(
                    tag,
                    Api::all_with(c, &service_export_resource()),
                    wc,
                    export_obj,
                ),
                (Kind::Export, Some(n)) => watch(
                    tag,
                    Api::namespaced_with(c, n, &service_export_resource()),
                    wc,
                    export_obj,
                ),
            });
            scopes.push(Scope {
                kind,
                namespace: ns.clone(),
            });
        }
    }
    let mut events = futures::stream::select_all(streams);
    let mut mirror = Mirror::default();
    let mut buffers: Vec<Vec<Obj>> = scopes.iter().map(|_| Vec::new()).collect();
    let mut listed = vec![false; scopes.len()];
    let mut crd_missing_logged = false;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let (i, ev) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = probe.tick(), if status.is_stale() => {
                if client.apiserver_version().await.is_ok() {
                    status.recovered(&mirror, cfg.export);
                }
                continue;
            }
            ev = events.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let synced_once = listed.iter().all(|l| *l);
        match ev {
            Ok(Event::Init) => buffers[i].clear(),
            Ok(Event::InitApply(obj)) => {
                if let Some(obj) = note_skips(obj, &status.handle) {
                    buffers[i].push(obj);
                }
            }
            Ok(Event::InitDone) => {
                mirror.clear(&scopes[i]);
                for obj in buffers[i].drain(..) {
                    mirror.apply(obj);
                }
                listed[i] = true;
                if listed.iter().all(|l| *l) {
                    status.replace(mirror.slice(cfg.export));
                }
            }
            Ok(Event::Apply(obj) | Event::Delete(obj)) => {
                let Some(obj) = note_skips(obj, &status.handle) else {
                    continue;
                };
                let touched = mirror.apply(obj);
                if synced_once && !touched.is_empty() {
                    let changes = touched
                        .into_iter()
                        .map(|k| {
                            let s = mirror.service(&k, cfg.export).map(Arc::new);
                            (k, s)
                        })
                        .collect();
                    status.handle.send(Update::Patch(changes));
                    // An event proves the watch is live again.
                    status.recovered(&mirror, cfg.export);
                }
            }
            Err(error) => {
                if scopes[i].kind == Kind::Export && is_not_found(&error) {
                    // No ServiceExport CRD: nothing is exported until it appears.
                    if !crd_missing_logged {
                        warn!(
                            "the ServiceExport CRD (multicluster.x-k8s.io/v1alpha1) is not installed: no service is exported"
                        );
                        crd_missing_logged = true;
                    }
                    if !listed[i] {
                        mirror.clear(&scopes[i]);
                        listed[i] = true;
                        if listed.iter().all(|l| *l) {
                            status.replace(mirror.slice(cfg.export));
                        }
                    }
                    continue;
                }
                if is_gone(&error) {
                    // 410 Gone: the watcher relists by itself; the old data serves meanwhile.
                    debug!(%error, "watch expired: relisting");
                    continue;
                }
                status.error(error.to_string());
            }
        }
    }
}

/// Reports what was skipped; returns the object to apply, if any.
fn note_skips(parsed: Parsed, handle: &SourceHandle) -> Option<Obj> {
    for reason in parsed.skipped {
        warn!(%reason, "skipped a malformed object");
        handle.send(Update::Skipped(reason));
    }
    parsed.obj
}

fn api_code(error: &watcher::Error) -> Option<u16> {
    let e = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return Some(status.code),
        _ => return None,
    };
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn is_gone(error: &watcher::Error) -> bool {
    api_code(error) == Some(410)
}

fn is_not_found(error: &watcher::Error) -> bool {
    api_code(error) == Some(404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(
        name: &str,
        svc: Option<&str>,
        family: &str,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        let mut labels = serde_json::Map::new();
        if let Some(s) = svc {
            labels.insert(SERVICE_NAME_LABEL.into(), json!(s));
        }
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": name, "namespace": "ns", "labels": labels },
            "addressType": family,
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }, { "port": 9090 }],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn service(name: &str, spec: serde_json::Value) -> KService {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "ns" },
            "spec": spec,
        }))
        .unwrap()
    }

    fn apply_all(mirror: &mut Mirror, objs: Vec<Parsed>) -> Vec<Skip> {
        let mut skips = Vec::new();
        for p in objs {
            skips.extend(p.skipped);
            if let Some(o) = p.obj {
                mirror.apply(o);
            }
        }
        skips
    }

    fn ips(s: &Service) -> Vec<(String, bool)> {
        match s {
            Service::Endpoints { endpoints, .. } => endpoints
                .iter()
                .map(|e| (e.ip.to_string(), e.ready))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpointslices_map_as_the_api_says() {
        let mut m = Mirror::default();
        let key = ServiceKey::new("ns", "web");
        let skips = apply_all(
            &mut m,
            vec![
                service_obj(service("web", json!({ "type": "ClusterIP" })), false),
                slice_obj(
                    slice(
                        "web-v4",
                        Some("web"),
                        "IPv4",
                        json!([
                            // `ready` unset means ready.
                            { "addresses": ["10.0.0.1"], "hostname": "web-0", "zone": "z1", "nodeName": "n1" },
                            { "addresses": ["10.0.0.2"], "conditions": { "ready": false } },
                            { "addresses": ["10.0.0.3"], "conditions": { "ready": true, "terminating": true } },
                            { "addresses": ["not-an-ip", "10.0.0.4"] },
                        ]),
                    ),
                    false,
                ),
                // The same address in a second slice is one endpoint.
                slice_obj(
                    slice(
                        "web-v4b",
                        Some("web"),
                        "IPv4",
                        json!([{ "addresses": ["10.0.0.1"] }]),
                    ),
                    false,
                ),
                slice_obj(
                    slice(
                        "web-v6",
                        Some("web"),
                        "IPv6",
                        json!([{ "addresses": ["fd00::1"] }]),
                    ),
                    false,
                ),
                slice_obj(
                    slice(
                        "web-fqdn",
                        Some("web"),
                        "FQDN",
                        json!([{ "addresses": ["a.example.com"] }]),
                    ),
                    false,
                ),
                slice_obj(
                    slice(
                        "orphan",
                        None,
                        "IPv4",
                        json!([{ "addresses": ["10.9.9.9"] }]),
                    ),
                    false,
                ),
            ],
        );
        assert_eq!(skips.len(), 3, "{skips:?}"); // bad address, FQDN slice, missing label
        let s = m.service(&key, Export::All).unwrap();
        assert_eq!(
            ips(&s),
            [
                ("10.0.0.1".into(), true),
                ("10.0.0.2".into(), false),
                ("10.0.0.3".into(), false),
                ("10.0.0.4".into(), true),
                ("fd00::1".into(), true),
            ]
        );
        match &s {
            Service::Endpoints {
                ports, endpoints, ..
            } => {
                assert_eq!(ports.len(), 2);
                assert_eq!(endpoints[0].hostname.as_deref(), Some("web-0"));
                assert_eq!(endpoints[0].zone.as_deref(), Some("z1"));
                assert_eq!(endpoints[0].node.as_deref(), Some("n1"));
            }
            other => panic!("{other:?}"),
        }

        // publishNotReadyAddresses answers every non-terminating endpoint.
        apply_all(
            &mut m,
            vec![service_obj(
                service("web", json!({ "publishNotReadyAddresses": true })),
                false,
            )],
        );
        let s = m.service(&key, Export::All).unwrap();
        assert!(ips(&s).contains(&("10.0.0.2".into(), true)));
        assert!(
            ips(&s).contains(&("10.0.0.3".into(), false)),
            "terminating never"
        );

        // Deleting a slice drops its endpoints; deleting the service drops it.
        apply_all(
            &mut m,
            vec![slice_obj(
                slice("web-v6", Some("web"), "IPv6", json!([])),
                true,
            )],
        );
        assert!(
            !ips(&m.service(&key, Export::All).unwrap())
                .iter()
                .any(|(ip, _)| ip == "fd00::1")
        );
        apply_all(&mut m, vec![service_obj(service("web", json!({})), true)]);
        assert!(m.service(&key, Export::All).is_none());
        assert!(m.slice(Export::All).is_empty());
    }

    #[test]
    fn external_names_and_exports() {
        let mut m = Mirror::default();
        let skips = apply_all(
            &mut m,
            vec![
                service_obj(
                    service(
                        "legacy",
                        json!({ "type": "ExternalName", "externalName": "api.example.com" }),
                    ),
                    false,
                ),
                service_obj(
                    service(
                        "broken",
                        json!({ "type": "ExternalName", "externalName": "a..b" }),
                    ),
                    false,
                ),
                service_obj(service("plain", json!({})), false),
            ],
        );
        assert_eq!(skips.len(), 1);
        let legacy = ServiceKey::new("ns", "legacy");
        assert!(matches!(
            m.service(&legacy, Export::All),
            Some(Service::ExternalName(_))
        ));
        assert!(
            m.service(&ServiceKey::new("ns", "broken"), Export::All)
                .is_none()
        );
        // A service with no slices exists with no endpoints (NODATA, not NXDOMAIN).
        let plain = ServiceKey::new("ns", "plain");
        assert!(
            matches!(m.service(&plain, Export::All), Some(Service::Endpoints { endpoints, .. }) if endpoints.is_empty())
        );

        assert!(m.service(&plain, Export::Labeled).is_none());
        assert!(m.service(&plain, Export::Serviceexport).is_none());
        m.apply(Obj::Export(plain.clone(), true));
        assert!(m.service(&plain, Export::Serviceexport).is_some());
        m.apply(Obj::Export(plain.clone(), false));
        assert!(m.service(&plain, Export::Serviceexport).is_none());

        let mut labeled = service("tagged", json!({}));
        labeled
            .metadata
            .labels
            .get_or_insert_default()
            .insert(EXPORT_LABEL.into(), "true".into());
        apply_all(&mut m, vec![service_obj(labeled, false)]);
        assert!(
            m.service(&ServiceKey::new("ns", "tagged"), Export::Labeled)
                .is_some()
        );
    }

    #[test]
    fn relist_replaces_only_its_scope() {
        let mut m = Mirror::default();
        apply_all(
            &mut m,
            vec![
                service_obj(service("a", json!({})), false),
                slice_obj(
                    slice(
                        "a-1",
                        Some("a"),
                        "IPv4",
                        json!([{ "addresses": ["10.0.0.1"] }]),
                    ),
                    false,
                ),
            ],
        );
        m.clear(&Scope {
            kind: Kind::Slice,
            namespace: None,
        });
        assert!(m.by_service.is_empty() && m.slices.is_empty());
        assert_eq!(m.services.len(), 1, "services are another watch's scope");
        m.clear(&Scope {
            kind: Kind::Service,
            namespace: Some("other".into()),
        });
        assert_eq!(m.services.len(), 1, "namespace scope");
    }
}
