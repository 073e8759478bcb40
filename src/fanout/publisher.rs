//! The publisher: the one instance per cluster that holds the Lease sends the local cluster's
//! slice (as the local kube source put it in the catalog) to the cluster's own topic.
//!
//! On taking the lease, and every `resync`, it sends a full snapshot in parts; in between,
//! after each catalog snapshot that changed the local slice, one delta with the services that
//! changed (diffed against what it last sent, so changes that pile up while a publish is in
//! flight go out together). Every message carries the epoch of the leadership and the next
//! sequence number; the ordering key is the cluster, so Pub/Sub keeps them in order. Before
//! each publish the leadership is checked ([`Term::valid`]): a leader that could not renew the
//! lease stops before another can take it.
//!
//! A publish that keeps failing is given up; the next message is then a full snapshot (its
//! subscribers see a gap in the sequence and keep their last slice until it comes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use google_cloud_googleapis::pubsub::v1::{PubsubMessage, Topic};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use prost::Message;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::client::{PubSub, retryable};
use super::lease::{self, LeaseSettings, Term};
use super::pull::{self, Pull};
use super::wire::{
    ATTR_CLUSTER, Body, Delta, Envelope, SnapshotPart, WIRE_VERSION, WireKey, WireService,
};
use crate::catalog::{CatalogReader, Changes, unix_micros};
use crate::config::{Config, KubeSourceConfig, PublishConfig, SourceConfig};
use crate::metrics::{KindLabels, fanout};
use crate::model::{ClusterId, ServiceKey, Slice, SourceState};
use crate::sources::{backoff, pause};

/// Room left in a message for the envelope around the services.
const ENVELOPE_BYTES: usize = 1024;
/// The least time between two snapshots sent because peers asked.
const REQUESTED_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Everything the publisher needs from the config; a reload restarts it only if this changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub publish: PublishConfig,
    pub cluster: ClusterId,
    pub kube: KubeSourceConfig,
    pub identity: String,
}

impl Plan {
    pub fn from_config(config: &Config) -> Option<Plan> {
        let publish = config.publish.clone()?;
        let cluster = config.local_cluster.clone()?;
        let kube = config.clusters.iter().find_map(|c| match &c.source {
            SourceConfig::Kube(k) if c.name == cluster => Some(k.clone()),
            _ => None,
        })?;
        // The lease holder's name must tell instances apart even where `identity` is hidden.
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| config.identity.clone())
            .unwrap_or_else(|| format!("meshdns-{}", std::process::id()));
        Some(Plan {
            publish,
            cluster,
            kube,
            identity,
        })
    }
}

/// The running publisher.
pub struct Publisher {
    pub plan: Plan,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(plan: Plan, catalog: CatalogReader) -> Publisher {
        let stop = CancellationToken::new();
        let span = info_span!("publisher", cluster = %plan.cluster, topic = %plan.publish.topic);
        let task = tokio::spawn(run(plan.clone(), catalog, stop.clone()).instrument(span));
        Publisher { plan, stop, task }
    }

    /// Steps down (releasing the lease) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(plan: Plan, catalog: CatalogReader, stop: CancellationToken) {
    let mut retry = backoff();
    let client = loop {
        match crate::sources::kube::connect(&plan.kube).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "cannot reach the local API server for the lease");
                if !pause(&mut retry, &stop).await {
                    return;
                }
            }
        }
    };
    let pubsub = loop {
        match PubSub::from_env().await {
            Ok(p) => break p,
            Err(e) => {
                warn!(error = %e, "cannot reach Pub/Sub");
                if !pause(&mut retry, &stop).await {
                    return;
                }
            }
        }
    };
    let api: Api<Lease> = Api::namespaced(client, &plan.publish.lease_namespace);
    let settings = LeaseSettings {
        name: plan.publish.lease_name.clone(),
        identity: plan.identity.clone(),
        duration: plan.publish.lease_duration,
    };
    let (tx, mut leadership) = watch::channel(None);
    let election_stop = CancellationToken::new();
    let election = tokio::spawn(
        lease::run(api, settings, tx, election_stop.clone()).instrument(tracing::Span::current()),
    );
    // The last message's (epoch, sequence): a term that lapsed and was renewed in time after
    // all (a busy process) is the same epoch, whose numbering goes on.
    let mut last = (0, 0);
    loop {
        let term = leadership.borrow_and_update().clone();
        match term {
            Some(term) if term.valid() => {
                fanout().leader_epoch.set(term.epoch as i64);
                let seq = if last.0 == term.epoch { last.1 } else { 0 };
                let seq = lead(&plan, &pubsub, &catalog, &term, seq, &mut leadership, &stop).await;
                last = (term.epoch, seq);
                fanout().leader_epoch.set(0);
            }
            // No term, or one that ran out and may yet be renewed (that is not announced):
            // look again soon.
            _ => {
                tokio::select! {
                    r = leadership.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    election_stop.cancel();
    let _ = election.await;
}

/// Publishes for as long as `term` lasts, numbering messages after `seq`; returns the last
/// sequence number used.
async fn lead(
    plan: &Plan,
    pubsub: &PubSub,
    catalog: &CatalogReader,
    term: &Term,
    seq: u64,
    leadership: &mut watch::Receiver<Option<Term>>,
    stop: &CancellationToken,
) -> u64 {
    info!(epoch = term.epoch, seq, "publishing");
    let mut out = Outbox {
        plan,
        pubsub,
        term,
        seq,
        topic_checked: false,
    };
    // Peers that lost their place ask for a snapshot; only the leader listens.
    let requested = Arc::new(Notify::new());
    let listener_stop = stop.child_token();
    let listener = plan.publish.requests_topic.clone().map(|topic| {
        tokio::spawn(
            listen_for_requests(
                pubsub.clone(),
                topic,
                plan.cluster.to_string(),
                requested.clone(),
                listener_stop.clone(),
            )
            .instrument(tracing::Span::current()),
        )
    });
    let mut published = catalog.subscribe();
    let mut dirty = Dirty::new(catalog);
    // What subscribers have, as far as this leader knows; `None`: a snapshot is due.
    let mut sent: Option<(Slice, u64)> = None;
    let mut next_full = tokio::time::Instant::now();
    let mut last_requested = tokio::time::Instant::now() - REQUESTED_SNAPSHOT_EVERY;
    let mut snapshot_asked = false;
    let mut retry = backoff();
    loop {
        if !term.valid() || leadership.borrow().as_ref().map(|t| t.epoch) != Some(term.epoch) {
            break;
        }
        let snap = catalog.load();
        dirty.catch_up(snap.generation).await;
        let local = snap.cluster(&plan.cluster).filter(|c| c.synced_once);
        let mut failed = false;
        if let Some(local) = local {
            let stale_since = match local.state {
                SourceState::Stale { since_unix } => since_unix,
                _ => 0,
            };
            let now = tokio::time::Instant::now();
            let asked = snapshot_asked && now >= last_requested + REQUESTED_SNAPSHOT_EVERY;
            if sent.is_none() || now >= next_full || asked {
                if asked {
                    snapshot_asked = false;
                    last_requested = now;
                    fanout()
                        .requests
                        .get_or_create(&KindLabels { kind: "answered" })
                        .inc();
                }
                match out.snapshot(&local.slice, stale_since).await {
                    Ok(()) => {
                        sent = Some((local.slice.clone(), stale_since));
                        dirty.sent();
                        next_full = now + plan.publish.resync;
                    }
                    Err(()) => {
                        sent = None;
                        failed = true;
                    }
                }
            } else if let Some((before, before_stale)) = &sent {
                let state_changed = *before_stale != stale_since;
                if before.ptr_eq(&local.slice) && !state_changed {
                    // Only other clusters changed.
                    dirty.sent();
                } else {
                    match out
                        .delta(before, &local.slice, stale_since, state_changed, &dirty)
                        .await
                    {
                        Ok(()) => {
                            sent = Some((local.slice.clone(), stale_since));
                            dirty.sent();
                        }
                        Err(()) => {
                            sent = None;
                            failed = true;
                        }
                    }
                }
            }
        }
        if failed {
            let wait = retry.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = stop.cancelled() => break,
                _ = leadership.changed() => continue,
            }
        }
        retry = backoff();
        // A change already published by the catalog while this one went out is taken at once.
        if published.has_changed().unwrap_or(false) {
            published.borrow_and_update();
            continue;
        }
        let request_at = if snapshot_asked {
            last_requested + REQUESTED_SNAPSHOT_EVERY
        } else {
            next_full
        };
        tokio::select! {
            r = published.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(next_full.min(request_at)) => {}
            _ = requested.notified() => snapshot_asked = true,
            r = leadership.changed() => if r.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    listener_stop.cancel();
    if let Some(l) = listener {
        let _ = l.await;
    }
    info!(epoch = term.epoch, seq = out.seq, "stopped publishing");
    out.seq
}

/// Numbers, encodes and publishes messages for one term.
struct Outbox<'a> {
    plan: &'a Plan,
    pubsub: &'a PubSub,
    term: &'a Term,
    seq: u64,
    topic_checked: bool,
}

impl Outbox<'_> {
    fn envelope(&mut self, stale_since: u64, body: Body) -> Envelope {
        self.seq += 1;
        Envelope {
            version: WIRE_VERSION,
            cluster: self.plan.cluster.to_string(),
            epoch: self.term.epoch,
            seq: self.seq,
            sent_unix_micros: 0,
            resync_secs: self.plan.publish.resync.as_secs().clamp(1, u32::MAX as u64) as u32,
            stale_since_unix: stale_since,
            body: Some(body),
        }
    }

    async fn snapshot(&mut self, slice: &Slice, stale_since: u64) -> Result<(), ()> {
        let chunks = chunk(slice, self.plan.publish.max_message_bytes - ENVELOPE_BYTES);
        let parts = chunks.len() as u32;
        let envelopes: Vec<Envelope> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, services)| {
                self.envelope(
                    stale_since,
                    Body::Snapshot(SnapshotPart {
                        part: i as u32,
                        parts,
                        services,
                    }),
                )
            })
            .collect();
        debug!(parts, services = slice.len(), "snapshot");
        self.send("snapshot", envelopes).await
    }

    /// One delta from `before` to `after`; a full snapshot when it would not fit a message.
    async fn delta(
        &mut self,
        before: &Slice,
        after: &Slice,
        stale_since: u64,
        state_changed: bool,
        dirty: &Dirty,
    ) -> Result<(), ()> {
        let mut delta = Delta::default();
        let mut size = 0;
        let mut add = |k: &ServiceKey| {
            let changed = match (before.get(k), after.get(k)) {
                (Some(o), Some(n)) => !Arc::ptr_eq(o, n) && o != n,
                (None, None) => false,
                _ => true,
            };
            if !changed {
                return;
            }
            match after.get(k) {
                Some(v) => {
                    let w = WireService::from_model(k, v);
                    size += w.encoded_len() + 8;
                    delta.services.push(w);
                }
                None => {
                    let w = WireKey::from_model(k);
                    size += w.encoded_len() + 8;
                    delta.removed.push(w);
                }
            }
        };
        if dirty.all {
            // The change log was lost: compare everything.
            after
                .keys()
                .chain(before.keys().filter(|k| !after.contains_key(*k)))
                .for_each(&mut add);
        } else {
            dirty.keys.iter().for_each(&mut add);
        }
        if delta.services.is_empty() && delta.removed.is_empty() && !state_changed {
            // Relisted to the same content: nothing to tell.
            return Ok(());
        }
        if size > self.plan.publish.max_message_bytes - ENVELOPE_BYTES {
            return self.snapshot(after, stale_since).await;
        }
        let envelope = self.envelope(stale_since, Body::Delta(delta));
        self.send("delta", vec![envelope]).await
    }

    /// Publishes in order while the term is valid; retries what failed for the service's
    /// sake a few times (the same sequence numbers: subscribers drop duplicates).
    async fn send(&mut self, kind: &'static str, envelopes: Vec<Envelope>) -> Result<(), ()> {
        let cluster = self.plan.cluster.to_string();
        let count = envelopes.len() as u64;
        let messages: Vec<PubsubMessage> = envelopes
            .into_iter()
            .map(|mut e| {
                e.sent_unix_micros = unix_micros();
                PubsubMessage {
                    data: e.encode_to_vec(),
                    attributes: HashMap::from([(ATTR_CLUSTER.to_string(), cluster.clone())]),
                    ordering_key: cluster.clone(),
                    ..PubsubMessage::default()
                }
            })
            .collect();
        let topic = &self.plan.publish.topic;
        for attempt in 0..4u32 {
            if !self.term.valid() {
                return Err(());
            }
            match pull::publish(self.pubsub, topic, messages.clone()).await {
                Ok(()) => {
                    let labels = KindLabels { kind };
                    fanout().published.get_or_create(&labels).inc_by(count);
                    fanout()
                        .published_bytes
                        .get_or_create(&labels)
                        .inc_by(messages.iter().map(|m| m.data.len() as u64).sum());
                    return Ok(());
                }
                Err(e) if e.code() == tonic::Code::NotFound && !self.topic_checked => {
                    self.topic_checked = true;
                    self.create_topic().await;
                }
                Err(e) => {
                    fanout().publish_errors.inc();
                    warn!(error = %e, attempt, "publish failed");
                    if !retryable(&e) {
                        return Err(());
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        Err(())
    }

    /// Makes the topic when it is missing (where the publisher may; otherwise the operator
    /// creates it, see docs/install.md).
    async fn create_topic(&self) {
        let topic = Topic {
            name: self.plan.publish.topic.clone(),
            labels: HashMap::from([("app".to_string(), "meshdns".to_string())]),
            ..Topic::default()
        };
        let result = match self.pubsub.request(topic).await {
            Ok(r) => self.pubsub.publisher().create_topic(r).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => info!(topic = %self.plan.publish.topic, "topic created"),
            Err(e) if e.code() == tonic::Code::AlreadyExists => {}
            Err(e) => {
                warn!(topic = %self.plan.publish.topic, error = %e, "the topic is missing and cannot be created")
            }
        }
    }
}

/// The services that changed since the last message, from the catalog's change log: a delta
/// costs what changed, not the size of the slice. The log has one entry per snapshot, in
/// order, so reading up to the snapshot being sent never reads past it.
struct Dirty {
    log: broadcast::Receiver<Arc<Changes>>,
    /// The last generation read from the log.
    upto: u64,
    /// Changed since the last message.
    keys: HashSet<ServiceKey>,
    /// The log lost entries (lagged, or stalled): compare whole slices once.
    all: bool,
}

impl Dirty {
    fn new(catalog: &CatalogReader) -> Dirty {
        // Subscribed before the first load: nothing published after it is missed.
        let log = catalog.changes();
        Dirty {
            log,
            upto: catalog.load().generation,
            keys: HashSet::new(),
            all: false,
        }
    }

    /// Reads the log up to the snapshot of generation `to` (its entry is sent right after it
    /// is stored, so this waits a moment at most). When entries were lost, the whole slice is
    /// compared instead, and what the log still holds is read next time.
    async fn catch_up(&mut self, to: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.upto < to {
            match tokio::time::timeout_at(deadline, self.log.recv()).await {
                Ok(Ok(c)) => {
                    self.upto = self.upto.max(c.generation);
                    self.keys.extend(c.keys.iter().cloned());
                }
                lost => {
                    if let Ok(Err(broadcast::error::RecvError::Lagged(n))) = lost {
                        warn!(
                            lost = n,
                            "the change log ran ahead: comparing whole slices once"
                        );
                    }
                    self.all = true;
                    self.upto = to;
                }
            }
        }
    }

    /// Everything up to the snapshot being sent went out.
    fn sent(&mut self) {
        self.all = false;
        self.keys.clear();
    }
}

/// The slice's services in groups that each encode to at most `budget` bytes (in a stable
/// order; one service larger than that is sent alone, and Pub/Sub may refuse it).
fn chunk(slice: &Slice, budget: usize) -> Vec<Vec<WireService>> {
    let mut keys: Vec<_> = slice.keys().collect();
    keys.sort_unstable();
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for k in keys {
        let w = WireService::from_model(k, &slice[k]);
        let len = w.encoded_len() + 8;
        if size + len > budget && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        chunks.last_mut().expect("never empty").push(w);
    }
    chunks
}

/// Listens on the requests topic (own subscription, only while leader) and notifies on each
/// request for this cluster.
async fn listen_for_requests(
    pubsub: PubSub,
    topic: String,
    cluster: String,
    requested: Arc<Notify>,
    stop: CancellationToken,
) {
    let name =
        pull::own_subscription_name(pull::project_of(&topic), &format!("requests-{cluster}"));
    let filter = format!("attributes.\"{ATTR_CLUSTER}\" = \"{cluster}\"");
    let mut created = false;
    let mut retry = backoff();
    while !stop.is_cancelled() {
        let opened = async {
            if !created {
                pull::create_own(&pubsub, &name, &topic, Duration::from_secs(86_400), &filter)
                    .await?;
                created = true;
            }
            Pull::open(&pubsub, &name, 100).await
        };
        let result = tokio::select! {
            r = opened => r,
            _ = stop.cancelled() => break,
        };
        let mut pull = match result {
            Ok(p) => p,
            Err(e) => {
                debug!(%topic, error = %e, "snapshot requests not heard");
                if !pause(&mut retry, &stop).await {
                    break;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                batch = pull.messages.next() => match batch {
                    Some(Ok(messages)) => {
                        let mine = messages.iter().any(|m| {
                            m.message.as_ref().and_then(|m| m.attributes.get(ATTR_CLUSTER)) == Some(&cluster)
                        });
                        pull.ack(messages.into_iter().map(|m| m.ack_id).collect());
                        if mine {
                            requested.notify_one();
                        }
                    }
                    _ => break,
                },
                _ = stop.cancelled() => break,
            }
        }
        if !pause(&mut retry, &stop).await {
            break;
        }
    }
    if created {
        pull::delete(&pubsub, &name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Service, ServiceKey};

    #[test]
    fn snapshots_are_chunked_under_the_budget_and_keep_every_service() {
        let mut slice = Slice::new();
        for i in 0..500u32 {
            let endpoints = (0..20)
                .map(|j| Endpoint {
                    ip: std::net::IpAddr::from([10, (i >> 8) as u8, i as u8, j]),
                    hostname: None,
                    zone: None,
                    node: None,
                    ready: true,
                })
                .collect();
            slice.insert(
                ServiceKey::new("ns", &format!("svc-{i}")),
                Arc::new(Service::Endpoints {
                    ports: vec![],
                    endpoints,
                    policy: Default::default(),
                }),
            );
        }
        let budget = 16 * 1024;
        let chunks = chunk(&slice, budget);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for c in &chunks {
            let size: usize = c.iter().map(|w| w.encoded_len() + 8).sum();
            assert!(size <= budget, "{size} > {budget}");
        }
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 500);
        // An empty slice is one empty part (it still replaces what peers had).
        assert_eq!(
            chunk(&Slice::new(), budget),
            vec![Vec::<WireService>::new()]
        );
    }
}
