//! The catalog: one writer task merges what every source says into immutable snapshots.
//!
//! Sources send [`SourceEvent`]s over a channel; the writer applies them to its own state,
//! coalesces bursts for `coalesce` (a few ms), rebuilds the views of the services that changed
//! (and only those), and publishes a new [`Snapshot`] with the next SOA serial through an
//! `ArcSwap`. Readers load the current snapshot without locks and answer a whole query from
//! it, so no answer mixes two versions.
//!
//! Each cluster's slice is only ever replaced or patched by events for that cluster: a source
//! holds a [`SourceHandle`] bound to its cluster and cannot name another.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::rr::SerialNumber;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::model::{ClusterId, ClusterStatus, Service, ServiceKey, Slice, SourceState};
use crate::zone::records::ServiceView;
use crate::zone::{ZoneData, ZoneSettings};

/// What a source tells the catalog about its cluster.
#[derive(Debug)]
pub enum Update {
    /// The whole slice, e.g. after a (re)list or a file reload: swapped in whole.
    Replace(Slice),
    /// Some services changed (`None`: deleted), e.g. one watch event.
    Patch(Vec<(ServiceKey, Option<Arc<Service>>)>),
    /// The source's connection state changed.
    State(SourceState),
    /// A failure talking to the source (counted; shown as the last error).
    Error(String),
    /// The source could not use new input (e.g. an invalid file) and keeps its last slice.
    Rejected(String),
    /// One malformed object (or part of one) was skipped; the rest serves.
    Skipped(String),
}

#[derive(Debug)]
pub struct SourceEvent {
    pub cluster: ClusterId,
    pub update: Update,
}

/// A source's only way to talk to the catalog: bound to one cluster.
#[derive(Clone, Debug)]
pub struct SourceHandle {
    cluster: ClusterId,
    tx: mpsc::UnboundedSender<Input>,
}

impl SourceHandle {
    /// Sends an update; false when the catalog is gone (shutting down).
    pub fn send(&self, update: Update) -> bool {
        self.input(update, None)
    }

    /// Whether the catalog is gone (shutting down).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends an update and resolves once a snapshot that contains it is published (readers
    /// see it), or with an error when the catalog is gone. A Pub/Sub source acknowledges a
    /// message only then.
    pub async fn send_applied(&self, update: Update) -> Result<(), ()> {
        let (tx, rx) = oneshot::channel();
        if !self.input(update, Some(tx)) {
            return Err(());
        }
        rx.await.map_err(|_| ())
    }

    fn input(&self, update: Update, applied: Option<oneshot::Sender<()>>) -> bool {
        let event = SourceEvent {
            cluster: self.cluster.clone(),
            update,
        };
        self.tx.send(Input::Source(event, applied)).is_ok()
    }
}

/// One immutable version of everything served.
#[derive(Debug)]
pub struct Snapshot {
    pub zone: ZoneData,
    /// In answer order (local cluster first).
    pub clusters: Vec<ClusterStatus>,
    /// How long building this snapshot took (apply + rebuild), microseconds.
    pub build_micros: u64,
    /// Counts the snapshots published (the change log's clock; unlike the serial it never
    /// wraps).
    pub generation: u64,
}

/// The services whose answers a snapshot changed (in any cluster), as the change log tells
/// them: the publisher sends a delta of these instead of comparing whole slices.
#[derive(Debug)]
pub struct Changes {
    pub generation: u64,
    pub keys: Vec<ServiceKey>,
}

impl Snapshot {
    pub fn serial(&self) -> u32 {
        self.zone.serial
    }

    /// Every cluster has synced at least once.
    pub fn all_synced(&self) -> bool {
        self.clusters.iter().all(|c| c.synced_once)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterStatus> {
        self.clusters.iter().find(|c| &*c.name == name)
    }

    /// Answers one question from this snapshot for a client at `client` (see
    /// [`ZoneData::resolve`]).
    pub fn resolve(
        &self,
        qname: &hickory_proto::rr::Name,
        qtype: hickory_proto::rr::RecordType,
        client: &crate::zone::locality::Locality,
    ) -> crate::zone::Answer {
        self.zone.resolve(qname, qtype, &self.clusters, client)
    }
}

/// The read side: cheap to clone, lock-free to read.
#[derive(Clone)]
pub struct CatalogReader {
    current: Arc<ArcSwap<Snapshot>>,
    published: watch::Receiver<u32>,
    changes: broadcast::Sender<Arc<Changes>>,
}

impl CatalogReader {
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Told the serial of every new snapshot (the latest one only, if several came quickly).
    pub fn subscribe(&self) -> watch::Receiver<u32> {
        self.published.clone()
    }

    /// The change log: one entry per snapshot, sent once the snapshot is readable. A receiver
    /// that falls more than 1,024 snapshots behind is told it lagged.
    pub fn changes(&self) -> broadcast::Receiver<Arc<Changes>> {
        self.changes.subscribe()
    }

    /// Waits until a snapshot satisfies `pred` (tests, `dump`).
    pub async fn wait_for(&self, pred: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = self.published.clone();
        loop {
            let snap = self.load();
            if pred(&snap) {
                return snap;
            }
            if rx.changed().await.is_err() {
                return self.load();
            }
        }
    }
}

/// What the writer receives: source events, and new configs (SIGHUP).
#[derive(Debug)]
enum Input {
    /// With a sender to tell once the event is in a published snapshot.
    Source(SourceEvent, Option<oneshot::Sender<()>>),
    Reconfigure(Box<Config>),
}

/// Sends to the catalog: hands out [`SourceHandle`]s and reconfigures it. The writer stops
/// once every sender and handle is dropped.
#[derive(Clone, Debug)]
pub struct CatalogSender {
    tx: mpsc::UnboundedSender<Input>,
}

impl CatalogSender {
    /// The handle a cluster's source uses; the catalog ignores events for unknown clusters.
    pub fn source(&self, cluster: &ClusterId) -> SourceHandle {
        SourceHandle {
            cluster: cluster.clone(),
            tx: self.tx.clone(),
        }
    }

    /// Applies a new config: clusters added start empty, clusters removed lose their data,
    /// the others keep theirs; the zone is rebuilt with the new settings.
    pub fn reconfigure(&self, config: &Config) {
        let _ = self.tx.send(Input::Reconfigure(Box::new(config.clone())));
    }
}

/// The catalog's writer side, before it runs.
pub struct Catalog {
    rx: mpsc::UnboundedReceiver<Input>,
    sender: CatalogSender,
    writer: Writer,
    reader: CatalogReader,
}

fn new_status(c: &crate::config::ClusterConfig) -> ClusterStatus {
    ClusterStatus {
        name: c.name.clone(),
        origin: c.origin.clone(),
        region: c.region.clone(),
        zones: c.zones.clone(),
        state: SourceState::Syncing,
        synced_once: false,
        slice: Slice::new(),
        endpoints: 0,
        last_change_unix: None,
        last_error: None,
        rejected: 0,
        relists: 0,
        errors: 0,
        skipped: 0,
    }
}

/// Cluster statuses in answer order, reusing `old` ones by name.
fn cluster_statuses(
    config: &Config,
    settings: &ZoneSettings,
    mut old: HashMap<ClusterId, ClusterStatus>,
) -> Vec<ClusterStatus> {
    settings
        .cluster_order
        .iter()
        .filter_map(|name| config.clusters.iter().find(|c| c.name == *name))
        .map(|c| match old.remove(&c.name) {
            Some(mut status) => {
                status.origin = c.origin.clone();
                status.region = c.region.clone();
                status.zones = c.zones.clone();
                status
            }
            None => new_status(c),
        })
        .collect()
}

impl Catalog {
    pub fn new(config: &Config) -> Catalog {
        let settings = Arc::new(ZoneSettings::from_config(config));
        let serial = initial_serial();
        let clusters = cluster_statuses(config, &settings, HashMap::new());
        let snapshot = Snapshot {
            zone: ZoneData::new(settings, serial),
            clusters,
            build_micros: 0,
            generation: 0,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (published_tx, published) = watch::channel(serial);
        let current = Arc::new(ArcSwap::from_pointee(snapshot));
        let (changes, _) = broadcast::channel(1024);
        Catalog {
            writer: Writer {
                current: current.clone(),
                published: published_tx,
                changes: changes.clone(),
                generation: 0,
                coalesce: config.coalesce,
                expire_after: config.expire_after,
            },
            reader: CatalogReader {
                current,
                published,
                changes,
            },
            sender: CatalogSender { tx },
            rx,
        }
    }

    pub fn reader(&self) -> CatalogReader {
        self.reader.clone()
    }

    pub fn sender(&self) -> CatalogSender {
        self.sender.clone()
    }

    /// Runs the writer until every sender and [`SourceHandle`] is dropped.
    pub async fn run(self) {
        let Catalog {
            rx, writer, sender, ..
        } = self;
        // Our own sender must not keep the channel open.
        drop(sender);
        writer.run(rx).await;
    }
}

struct Writer {
    current: Arc<ArcSwap<Snapshot>>,
    published: watch::Sender<u32>,
    changes: broadcast::Sender<Arc<Changes>>,
    generation: u64,
    coalesce: Duration,
    expire_after: Option<Duration>,
}

/// Changes gathered during one coalescing window.
#[derive(Default)]
struct Pending {
    services: HashSet<ServiceKey>,
    /// Clusters whose status (not data) changed.
    status: bool,
    /// Told once the snapshot with these events is published.
    applied: Vec<oneshot::Sender<()>>,
}

impl Pending {
    fn tell_applied(&mut self) {
        for tx in self.applied.drain(..) {
            let _ = tx.send(());
        }
    }
}

/// The writer's own copy of what it publishes.
struct State {
    zone: ZoneData,
    clusters: Vec<ClusterStatus>,
    index: HashMap<ClusterId, usize>,
}

impl State {
    fn reindex(&mut self) {
        self.index = self
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let base = self.current.load_full();
        let mut state = State {
            zone: base.zone.clone(),
            clusters: base.clusters.clone(),
            index: HashMap::new(),
        };
        state.reindex();
        drop(base);
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let mut pending = Pending::default();
            let first = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => Some(ev),
                    None => return,
                },
                _ = expiry.tick() => None,
            };
            let started = Instant::now();
            match first {
                Some(input) => {
                    self.input(&mut state, input, &mut pending);
                    // Coalesce a burst: take what arrives within the window.
                    let deadline = tokio::time::Instant::now() + self.coalesce;
                    while let Ok(Some(input)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                        self.input(&mut state, input, &mut pending);
                    }
                }
                None => self.expire(&mut state.clusters, &mut pending),
            }
            if pending.services.is_empty() && !pending.status {
                // Nothing to publish: what was sent is already in the current snapshot.
                pending.tell_applied();
                continue;
            }
            let build_started = Instant::now();
            for key in &pending.services {
                let parts = state
                    .clusters
                    .iter()
                    .filter_map(|c| c.slice.get(key).map(|s| (&c.name, &**s)));
                let view =
                    ServiceView::build(key.clone(), parts, &state.zone.settings).map(Arc::new);
                state.zone.set_service(key, view);
            }
            state.zone.serial = next_serial(state.zone.serial);
            self.generation += 1;
            let snapshot = Snapshot {
                zone: state.zone.clone(),
                clusters: state.clusters.clone(),
                build_micros: build_started.elapsed().as_micros() as u64,
                generation: self.generation,
            };
            let serial = snapshot.zone.serial;
            self.current.store(Arc::new(snapshot));
            let _ = self.published.send(serial);
            // Always sent, even with nobody listening: a listener that subscribed after this
            // check could otherwise wait for an entry that never comes.
            let _ = self.changes.send(Arc::new(Changes {
                generation: self.generation,
                keys: pending.services.iter().cloned().collect(),
            }));
            pending.tell_applied();
            debug!(
                serial,
                services_changed = pending.services.len(),
                micros = started.elapsed().as_micros() as u64,
                "published snapshot"
            );
        }
    }

    fn input(&mut self, state: &mut State, input: Input, pending: &mut Pending) {
        match input {
            Input::Source(ev, applied) => {
                apply(state, ev, pending);
                pending.applied.extend(applied);
            }
            Input::Reconfigure(config) => {
                self.coalesce = config.coalesce;
                self.expire_after = config.expire_after;
                let settings = Arc::new(ZoneSettings::from_config(&config));
                let old: HashMap<ClusterId, ClusterStatus> = state
                    .clusters
                    .drain(..)
                    .map(|c| (c.name.clone(), c))
                    .collect();
                // Everything any cluster had: removed clusters' services must go too.
                pending
                    .services
                    .extend(old.values().flat_map(|c| c.slice.keys().cloned()));
                state.clusters = cluster_statuses(&config, &settings, old);
                state.reindex();
                // New settings (zone, TTLs, networks, order) change every answer: rebuild.
                state.zone = ZoneData::new(settings, state.zone.serial);
                pending.status = true;
                info!(clusters = state.clusters.len(), "catalog reconfigured");
            }
        }
    }

    /// Drops the data of sources that have been stale for longer than `expire_after`.
    fn expire(&self, clusters: &mut [ClusterStatus], pending: &mut Pending) {
        let Some(after) = self.expire_after else {
            return;
        };
        let now = unix_now();
        for c in clusters.iter_mut() {
            if let SourceState::Stale { since_unix } = c.state
                && now.saturating_sub(since_unix) >= after.as_secs()
            {
                warn!(cluster = %c.name, stale_for_secs = now - since_unix, "source expired: dropping its data");
                pending.services.extend(c.slice.keys().cloned());
                c.slice = Slice::new();
                c.endpoints = 0;
                c.state = SourceState::Expired;
                c.last_change_unix = Some(now);
                pending.status = true;
            }
        }
    }
}

/// Applies one event to the writer's state, noting what changed.
fn apply(state: &mut State, ev: SourceEvent, pending: &mut Pending) {
    // A source stopped by a reload may still send a last event: ignore it.
    let Some(&i) = state.index.get(&ev.cluster) else {
        debug!(cluster = %ev.cluster, "event for an unknown cluster ignored");
        return;
    };
    let c = &mut state.clusters[i];
    let now = unix_now();
    match ev.update {
        Update::Replace(slice) => {
            let before = pending.services.len();
            for (k, v) in c.slice.iter() {
                if slice.get(k).is_none_or(|n| !same(n, v)) {
                    pending.services.insert(k.clone());
                }
            }
            for (k, v) in slice.iter() {
                if c.slice.get(k).is_none_or(|o| !same(o, v)) {
                    pending.services.insert(k.clone());
                }
            }
            if pending.services.len() != before || !c.synced_once {
                c.last_change_unix = Some(now);
            }
            c.slice = slice;
            c.endpoints = count_endpoints(&c.slice);
            c.relists += 1;
            if !c.synced_once {
                info!(cluster = %c.name, services = c.slice.len(), endpoints = c.endpoints, "cluster synced");
            }
            c.synced_once = true;
            c.state = SourceState::Synced;
            c.last_error = None;
            pending.status = true;
        }
        Update::Patch(changes) => {
            for (k, v) in changes {
                let changed = match (&v, c.slice.get(&k)) {
                    (Some(n), Some(o)) => !same(n, o),
                    (None, None) => false,
                    _ => true,
                };
                if !changed {
                    continue;
                }
                // Kept up to date by difference: a patch costs what it changes.
                let added = v.as_ref().map_or(0, |s| s.ready_endpoints().count());
                let old = match v {
                    Some(s) => c.slice.insert(k.clone(), s),
                    None => c.slice.remove(&k),
                };
                let removed = old.map_or(0, |s| s.ready_endpoints().count());
                c.endpoints = (c.endpoints + added).saturating_sub(removed);
                pending.services.insert(k);
                c.last_change_unix = Some(now);
            }
        }
        Update::State(state) => {
            // Expired data was dropped: only a whole new slice brings the cluster back. A
            // cluster without data yet is syncing, not stale.
            let stale = matches!(state, SourceState::Stale { .. });
            if c.state == SourceState::Expired || c.state == state || (stale && !c.synced_once) {
                return;
            }
            if state == SourceState::Synced {
                c.last_error = None;
            }
            c.state = state;
            pending.status = true;
        }
        Update::Error(error) => {
            c.errors += 1;
            c.last_error = Some(error);
            pending.status = true;
        }
        Update::Rejected(error) => {
            c.rejected += 1;
            c.last_error = Some(error);
            pending.status = true;
        }
        Update::Skipped(reason) => {
            c.skipped += 1;
            c.last_error = Some(reason);
            pending.status = true;
        }
    }
}

fn same(a: &Arc<Service>, b: &Arc<Service>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn count_endpoints(slice: &Slice) -> usize {
    slice.values().map(|s| s.ready_endpoints().count()).sum()
}

/// Microseconds since the Unix epoch (message timestamps across machines).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seeded from the clock, so a restarted instance moves forward from any serial it published
/// before (as long as it published fewer than one snapshot per second on average).
fn initial_serial() -> u32 {
    unix_now() as u32
}

/// The next serial (RFC 1982): the clock if it is ahead, else one more.
fn next_serial(prev: u32) -> u32 {
    let now = unix_now() as u32;
    if SerialNumber::new(now) > SerialNumber::new(prev) {
        now
    } else {
        prev.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            Path::new("/t/meshdns.yaml"),
            "local_cluster: beta\nclusters:\n  - name: alpha\n    source: { file: a.yaml }\n  - name: beta\n    source: { file: b.yaml }\n",
        )
        .unwrap()
    }

    fn service(ips: &[&str]) -> Arc<Service> {
        Arc::new(Service::Endpoints {
            policy: Default::default(),
            ports: vec![],
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    hostname: None,
                    zone: None,
                    node: None,
                    ready: true,
                })
                .collect(),
        })
    }

    #[test]
    fn serials_move_forward_with_wraparound() {
        let now = unix_now() as u32;
        // Behind the clock: jump to the clock. Ahead of it, or at the wrap: one more.
        for prev in [now.wrapping_sub(100), now, now.wrapping_add(10), u32::MAX] {
            let next = next_serial(prev);
            assert!(
                SerialNumber::new(next) > SerialNumber::new(prev),
                "{prev} -> {next}"
            );
        }
        assert_eq!(next_serial(now.wrapping_add(10)), now.wrapping_add(11));
    }

    #[tokio::test]
    async fn slices_merge_and_patch_per_cluster() {
        let cfg = config();
        let catalog = Catalog::new(&cfg);
        let reader = catalog.reader();
        let alpha = catalog.sender().source(&"alpha".into());
        let beta = catalog.sender().source(&"beta".into());
        let first_serial = reader.load().serial();
        tokio::spawn(catalog.run());

        let key = ServiceKey::new("ns", "web");
        let mut a = Slice::new();
        a.insert(key.clone(), service(&["10.0.0.1"]));
        alpha.send(Update::Replace(a));
        let mut b = Slice::new();
        b.insert(key.clone(), service(&["10.1.0.1"]));
        beta.send(Update::Replace(b));
        let snap = reader.wait_for(|s| s.all_synced()).await;
        let view = snap.zone.services.get(&key).unwrap();
        // beta is local: first.
        let ips: Vec<String> = view.members.iter().map(|m| m.ip.to_string()).collect();
        assert_eq!(ips, ["10.1.0.1", "10.0.0.1"]);
        assert!(SerialNumber::new(snap.serial()) > SerialNumber::new(first_serial));

        // A patch in alpha touches only alpha's part.
        alpha.send(Update::Patch(vec![(key.clone(), None)]));
        let snap = reader
            .wait_for(|s| {
                s.zone
                    .services
                    .get(&key)
                    .is_some_and(|v| v.clusters.len() == 1)
            })
            .await;
        let view = snap.zone.services.get(&key).unwrap();
        assert_eq!(&*view.clusters[0].cluster, "beta");
        assert_eq!(snap.cluster("beta").unwrap().slice.len(), 1);
        assert_eq!(snap.cluster("alpha").unwrap().slice.len(), 0);
    }

    #[tokio::test]
    async fn a_burst_is_one_snapshot() {
        let cfg = config();
        let catalog = Catalog::new(&cfg);
        let reader = catalog.reader();
        let alpha = catalog.sender().source(&"alpha".into());
        let mut published = reader.published.clone();
        tokio::spawn(catalog.run());
        for i in 0..50 {
            let key = ServiceKey::new("ns", &format!("s{i}"));
            alpha.send(Update::Patch(vec![(key, Some(service(&["10.0.0.1"])))]));
        }
        published.changed().await.unwrap();
        let snap = reader.load();
        assert_eq!(
            snap.zone.services.len(),
            50,
            "the whole burst is in the first snapshot"
        );
    }
}
