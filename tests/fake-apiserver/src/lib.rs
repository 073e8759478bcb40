//! A fake Kubernetes API server for tests: it speaks the real HTTP list/watch
//! protocol on 127.0.0.1, so the real `kube` client and `kube_runtime::watcher`
//! run against it unmodified.
//!
//! # What it speaks
//!
//! - Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//!   `/apis/<group>/<version>`, and aggregated discovery (`Accept: ...;as=APIGroupDiscoveryList`).
//! - For every resource in its table (namespaces, services, secrets, pods,
//!   endpointslices, leases, serviceexports): LIST with `labelSelector`,
//!   `fieldSelector`, `limit`/`continue` pagination over a consistent snapshot,
//!   `resourceVersion` + `resourceVersionMatch` (`NotOlderThan`, `Exact`);
//!   WATCH (`watch=true`) as chunked newline-delimited JSON events, resuming
//!   after a `resourceVersion`, with selector transitions turned into
//!   ADDED/DELETED as the apiserver's watch cache does, periodic BOOKMARKs
//!   (`allowWatchBookmarks`), `timeoutSeconds`, and streaming lists
//!   (`sendInitialEvents=true` ending with the `k8s.io/initial-events-end` bookmark);
//!   GET of one object; POST, PUT (optimistic concurrency on
//!   `metadata.resourceVersion`, 409 on conflict), PATCH (JSON merge,
//!   strategic merge treated as JSON merge, and JSON patch) and DELETE (with
//!   preconditions).
//! - `Accept: ...;as=PartialObjectMetadata[List]` for metadata-only clients.
//! - One global resourceVersion counter across all resources, like etcd's
//!   revision. [`FakeApiServer::compact`] makes every older version answer 410
//!   Gone (`Expired`), exactly where a real server would.
//! - Errors are `Status` objects with the real reasons (`NotFound`,
//!   `AlreadyExists`, `Conflict`, `Expired`, `BadRequest`, ...).
//!
//! # What it does not
//!
//! No authentication or authorization (plain HTTP, any request is allowed), no
//! admission (namespaces need not exist, nothing is defaulted or validated
//! beyond names), no server-side apply, no `dryRun`, no subresources
//! (`/status`, `/scale`), no finalizers or graceful deletion, no protobuf or
//! table output, no HTTP/2. Uninstalling a resource hides it (404, ends its
//! watches) but keeps its objects.
//!
//! # Fault injection
//!
//! [`FakeApiServer::compact`], [`FakeApiServer::drop_watches`],
//! [`FakeApiServer::set_down`] (an outage on the same port),
//! [`FakeApiServer::set_resource_installed`] and
//! [`FakeApiServer::set_bookmark_interval`].

mod encode;
mod http;
mod patch;
mod resources;
mod selector;
mod store;
mod watch;

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch as signal};
use tokio::task::{JoinHandle, JoinSet};

/// Counts of requests served since start (all resources together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// LIST requests (each page counts).
    pub lists: u64,
    /// WATCH requests.
    pub watches: u64,
    /// 410 Gone answers: expired continue tokens, compacted list versions and
    /// watch ERROR events.
    pub gone: u64,
    /// Watch streams open right now.
    pub open_watches: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub lists: AtomicU64,
    pub watches: AtomicU64,
    pub gone: AtomicU64,
    pub open_watches: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by the handle and every connection.
pub(crate) struct Inner {
    pub addr: SocketAddr,
    store: Mutex<Store>,
    /// Signalled after every change of the store; open watches wait on it.
    pub changes: signal::Sender<()>,
    /// Signalled by `drop_watches`.
    pub drops: signal::Sender<()>,
    bookmark_interval: Mutex<Duration>,
    pub stats: Counters,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the store, then wake the watches.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.lock());
        self.changes.send_replace(());
        out
    }

    pub fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The accept loop currently serving, if the server is up.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Owned by the handles only: dropping the last handle stops the server.
struct Control {
    running: tokio::sync::Mutex<Option<Running>>,
}

/// A running fake apiserver. Cheap to clone; the server stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
    control: Arc<Control>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Bind 127.0.0.1 on a free port and start serving.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            store: Mutex::new(Store::new()),
            changes: signal::channel(()).0,
            drops: signal::channel(()).0,
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            stats: Counters::default(),
        });
        let running = spawn_accept_loop(inner.clone(), listener);
        Ok(FakeApiServer {
            inner,
            control: Arc::new(Control {
                running: tokio::sync::Mutex::new(Some(running)),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig whose cluster, user and context are all called `name`,
    /// pointing at this server over plain HTTP without credentials.
    pub fn kubeconfig_yaml(&self, name: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {url}
users:
- name: {name}
  user: {{}}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: default
current-context: {name}
",
            url = self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &std::path::Path, name: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(name))
    }

    /// Create or replace an object (`apiVersion`, `kind`, `metadata.name`, and
    /// `metadata.namespace` for namespaced kinds, which defaults to `default`).
    /// Sets `resourceVersion`, `uid` and `creationTimestamp`, emits ADDED or
    /// MODIFIED, and returns the new resourceVersion.
    ///
    /// Unlike a PUT through the API, this always writes, even when nothing changed.
    ///
    /// Panics on a kind the fake does not know (add it to the resource table)
    /// or an object without `metadata.name`.
    pub fn apply(&self, obj: Value) -> u64 {
        self.apply_many(vec![obj])
    }

    /// [`apply`](Self::apply) several objects under one lock (each still gets
    /// its own resourceVersion). Returns the last resourceVersion.
    pub fn apply_many(&self, objs: Vec<Value>) -> u64 {
        let resolved: Vec<(usize, Value)> =
            objs.into_iter().map(|o| (resource_of(&o), o)).collect();
        self.inner.write(|store| {
            for (resource, obj) in resolved {
                store.put(resource, obj);
            }
            store.rv
        })
    }

    /// Delete an object; emits DELETED carrying the last state and a new
    /// resourceVersion. Returns whether it existed.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let resource = resource_by_kind(api_version, kind);
        let key = object_key(resource, namespace, name);
        self.inner
            .write(|store| store.remove(resource, &key).is_some())
    }

    /// The stored object, with `apiVersion` and `kind`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let resource = resource_by_kind(api_version, kind);
        let key = object_key(resource, namespace, name);
        self.inner
            .lock()
            .get(resource, &key)
            .map(|obj| (**obj).clone())
    }

    /// The resourceVersion of the last write.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Forget all event history up to now, as an etcd compaction does: a
    /// watch, an `Exact` list or a continue token at an older resourceVersion
    /// now gets 410 Gone. Watches that are already open are not disturbed.
    pub fn compact(&self) {
        self.inner.lock().compact();
    }

    /// Keep only the last `limit` events for new requests (a rolling
    /// compaction window), or unlimited history with `None` (the default).
    pub fn set_history_limit(&self, limit: Option<usize>) {
        self.inner.write(|store| store.history_limit = limit);
    }

    /// Abruptly end every open watch stream: the connection is closed
    /// mid-stream, without the final chunk.
    pub fn drop_watches(&self) {
        self.inner.drops.send_replace(());
    }

    /// `true`: an outage. The listener and every open connection are closed,
    /// so clients get connection refused. `false`: bind the same port again
    /// and serve the same data.
    pub async fn set_down(&self, down: bool) {
        let mut running = self.control.running.lock().await;
        if down {
            if let Some(Running { stop, task }) = running.take() {
                let _ = stop.send(());
                let _ = task.await;
            }
        } else if running.is_none() {
            let listener = rebind(self.inner.addr).await;
            *running = Some(spawn_accept_loop(self.inner.clone(), listener));
        }
    }

    /// Period of the BOOKMARK events sent on watches that asked for them (default 1s).
    pub fn set_bookmark_interval(&self, d: std::time::Duration) {
        *self
            .inner
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = d;
        self.inner.changes.send_replace(());
    }

    /// Install or remove a resource (`group_version` like
    /// `multicluster.x-k8s.io/v1alpha1` or `v1`, and its plural), as when a CRD
    /// is created or deleted. An absent resource is missing from discovery and
    /// answers 404; its open watches end. Objects are kept.
    ///
    /// Panics on a resource the fake does not know.
    pub fn set_resource_installed(&self, group_version: &str, plural: &str, installed: bool) {
        let (group, version) = resources::split_group_version(group_version);
        let resource = resources::by_plural(group, version, plural)
            .unwrap_or_else(|| panic!("fake apiserver: unknown resource {group_version} {plural}"));
        self.inner
            .write(|store| store.installed[resource] = installed);
    }

    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        Stats {
            lists: s.lists.load(Ordering::Relaxed),
            watches: s.watches.load(Ordering::Relaxed),
            gone: s.gone.load(Ordering::Relaxed),
            open_watches: s.open_watches.load(Ordering::Relaxed),
        }
    }
}

fn resource_of(obj: &Value) -> usize {
    let field = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or_default();
    resource_by_kind(field("apiVersion"), field("kind"))
}

fn resource_by_kind(api_version: &str, kind: &str) -> usize {
    resources::by_kind(api_version, kind).unwrap_or_else(|| {
        panic!("fake apiserver: unknown kind {api_version}/{kind}; add it to resources::RESOURCES")
    })
}

fn object_key(resource: usize, namespace: Option<&str>, name: &str) -> store::ObjKey {
    let namespace = if resources::RESOURCES[resource].namespaced {
        namespace.unwrap_or("default").to_string()
    } else {
        String::new()
    };
    (namespace, name.to_string())
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Bind the port again after an outage, retrying briefly while the kernel lets go of it.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut attempt = 0;
    loop {
        match bind(addr) {
            Ok(listener) => return listener,
            Err(_) if attempt < 100 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("fake apiserver: cannot bind {addr} again: {e}"),
        }
    }
}

fn spawn_accept_loop(inner: Arc<Inner>, listener: TcpListener) -> Running {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(inner, listener, stopped));
    Running { stop, task }
}

/// Accept connections until told to stop (or the last handle is dropped), then
/// close the listener and abort every connection.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(inner.clone(), stream));
                }
                // Out of file descriptors and the like: back off a little.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        async move { Ok::<_, std::convert::Infallible>(http::handle(inner, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}
