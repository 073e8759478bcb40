//! A peer cluster's slice read from Google Cloud Pub/Sub, where that cluster's publisher
//! (one instance there, elected by a Lease) writes it: full snapshots and deltas, in order
//! (ordering key = cluster), numbered by epoch and sequence (see `fanout::wire`).
//!
//! The rules, in [`Follower::step`]:
//! - a full snapshot (its parts in consecutive sequence numbers) replaces the slice whole;
//! - a delta applies only on top of the message before it (same epoch, sequence + 1);
//! - a gap, or a new epoch that does not start with a snapshot, keeps the last good slice
//!   serving and waits for the next snapshot (and asks the publisher for one) — a partial
//!   slice is never served;
//! - a message of an older epoch (a deposed leader's), of another cluster, of an unknown
//!   encoding, or that does not decode, is dropped and counted.
//!
//! A message is acknowledged once its change is in a published catalog snapshot. A stream
//! that cannot be opened again (an outage), or a publisher silent for three of its resync
//! intervals, turns the cluster stale:
//! its last data keeps serving, marked, and `expire_after` applies as for a Kubernetes source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use google_cloud_googleapis::pubsub::v1::{PubsubMessage, ReceivedMessage};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Status, backoff, pause};
use crate::catalog::{SourceHandle, Update};
use crate::config::PubSubSourceConfig;
use crate::fanout::client::PubSub;
use crate::fanout::pull::{self, Pull};
use crate::fanout::wire::{ATTR_CLUSTER, Body, Envelope, WIRE_VERSION, WireService};
use crate::metrics::fanout;
use crate::model::{Service, ServiceKey, Slice, SourceState};

/// What one message means for the catalog.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A complete snapshot: the new slice.
    Replace(Slice),
    /// A delta on top of what is served.
    Patch(Vec<(ServiceKey, Option<Arc<Service>>)>),
    /// A part of a snapshot still being gathered.
    Part,
    /// Dropped, with the reason (a metric label).
    Dropped(&'static str),
    /// Out of step: the last good slice keeps serving until the next snapshot.
    Gap,
}

/// A snapshot whose parts are still arriving.
struct Assembly {
    first_seq: u64,
    parts: u32,
    services: Vec<WireService>,
}

/// Where a subscriber stands in one cluster's message stream.
pub struct Follower {
    cluster: String,
    epoch: u64,
    /// The last sequence number taken in `epoch` (0: none yet).
    last_seq: u64,
    /// A snapshot of `epoch` has been applied: deltas of this epoch can follow it.
    based: bool,
    assembly: Option<Assembly>,
    /// Services left out of the last step because they did not decode (name, reason).
    pub skipped: Vec<String>,
}

impl Follower {
    pub fn new(cluster: &str) -> Follower {
        Follower {
            cluster: cluster.to_string(),
            epoch: 0,
            last_seq: 0,
            based: false,
            assembly: None,
            skipped: Vec::new(),
        }
    }

    /// Whether deltas apply: a snapshot of the current epoch is in.
    pub fn based(&self) -> bool {
        self.based
    }

    pub fn step(&mut self, env: Envelope) -> Step {
        self.skipped.clear();
        if env.version != WIRE_VERSION {
            return Step::Dropped("unknown_version");
        }
        if env.cluster != self.cluster {
            return Step::Dropped("foreign_cluster");
        }
        if env.epoch < self.epoch {
            return Step::Dropped("old_epoch");
        }
        if env.epoch > self.epoch {
            // A new leader: nothing of the old epoch's sequence carries over.
            self.epoch = env.epoch;
            self.last_seq = 0;
            self.based = false;
            self.assembly = None;
        }
        if self.last_seq != 0 && env.seq <= self.last_seq {
            return Step::Dropped("duplicate");
        }
        match env.body {
            None => Step::Dropped("empty"),
            Some(Body::Snapshot(part)) => {
                if part.parts == 0 || part.part >= part.parts {
                    return Step::Dropped("invalid");
                }
                if part.part == 0 {
                    self.assembly = Some(Assembly {
                        first_seq: env.seq,
                        parts: part.parts,
                        services: Vec::new(),
                    });
                }
                // Every part follows the one before it: nothing lost in between.
                let in_step = self.assembly.as_ref().is_some_and(|a| {
                    a.parts == part.parts
                        && a.first_seq + u64::from(part.part) == env.seq
                        && (part.part == 0 || env.seq == self.last_seq + 1)
                });
                if !in_step {
                    self.assembly = None;
                    self.last_seq = env.seq;
                    return Step::Gap;
                }
                self.last_seq = env.seq;
                let a = self.assembly.as_mut().expect("checked in step");
                a.services.extend(part.services);
                if part.part + 1 < part.parts {
                    return Step::Part;
                }
                let a = self.assembly.take().expect("checked in step");
                let mut slice = Slice::new();
                for w in a.services {
                    match w.into_model() {
                        Ok((k, s)) => {
                            slice.insert(k, Arc::new(s));
                        }
                        Err(e) => self.skipped.push(e),
                    }
                }
                self.based = true;
                Step::Replace(slice)
            }
            Some(Body::Delta(delta)) => {
                let in_step = self.based && env.seq == self.last_seq + 1;
                self.last_seq = env.seq;
                if !in_step {
                    self.based = false;
                    return Step::Gap;
                }
                let mut changes = Vec::with_capacity(delta.services.len() + delta.removed.len());
                for w in delta.services {
                    match w.into_model() {
                        Ok((k, s)) => changes.push((k, Some(Arc::new(s)))),
                        Err(e) => self.skipped.push(e),
                    }
                }
                for k in delta.removed {
                    match k.into_model() {
                        Ok(k) => changes.push((k, None)),
                        Err(e) => self.skipped.push(e),
                    }
                }
                Step::Patch(changes)
            }
        }
    }
}

/// Follows the cluster's topic until `stop`.
pub async fn run(
    cluster: String,
    cfg: PubSubSourceConfig,
    handle: SourceHandle,
    stop: CancellationToken,
) {
    let mut status = Status::new(handle);
    let mut retry = backoff();
    let pubsub = loop {
        match PubSub::from_env().await {
            Ok(p) => break p,
            Err(e) => {
                warn!(error = %e, "cannot reach Pub/Sub");
                status.error(e);
                if !pause(&mut retry, &stop).await {
                    return;
                }
            }
        }
    };
    let project = pull::project_of(&cfg.topic).to_string();
    let own = cfg.subscription.is_none();
    let subscription = cfg
        .subscription
        .clone()
        .unwrap_or_else(|| pull::own_subscription_name(&project, &cluster));
    let mut follower = Follower::new(&cluster);
    let mut requests = Requests::new(&cluster, cfg.requests_topic.clone());
    let mut created = false;
    // Stale after three silent resync intervals of the publisher (learnt from its messages).
    let mut silent_after: Option<Duration> = None;
    let mut last_heard = Instant::now();

    while !stop.is_cancelled() {
        if own && !created {
            match pull::create_own(
                &pubsub,
                &subscription,
                &cfg.topic,
                cfg.subscription_expiry,
                "",
            )
            .await
            {
                Ok(()) => {
                    info!(%subscription, topic = %cfg.topic, "subscribed");
                    created = true;
                }
                Err(e) => {
                    warn!(topic = %cfg.topic, error = %e, "cannot create the subscription");
                    status.error(format!(
                        "create subscription on {}: {}",
                        cfg.topic,
                        e.message()
                    ));
                    if !pause(&mut retry, &stop).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let mut pull = match Pull::open(&pubsub, &subscription, 1000).await {
            Ok(p) => p,
            Err(e) => {
                if e.code() == tonic::Code::NotFound && own {
                    // Expired or deleted under us: make it again (and take a snapshot).
                    created = false;
                    follower = Follower::new(&cluster);
                }
                warn!(%subscription, error = %e, "cannot open the stream");
                status.error(format!("streaming pull: {}", e.message()));
                if !pause(&mut retry, &stop).await {
                    break;
                }
                continue;
            }
        };
        let opened_at = Instant::now();
        // Without a base, or back after an outage (stale): a snapshot tells where things are.
        if !follower.based() || status.is_stale() {
            requests.ask(&pubsub).await;
        }
        let ended = loop {
            let silence = silent_after.map(|d| d.saturating_sub(last_heard.elapsed()));
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tokio::time::sleep(silence.unwrap_or(Duration::MAX)), if silence.is_some() => {
                    warn!(silent_secs = last_heard.elapsed().as_secs(), "the publisher has been silent for three resync intervals");
                    status.stale();
                    silent_after = None;
                }
                _ = requests.due(), if !follower.based() => requests.ask(&pubsub).await,
                batch = pull.messages.next() => match batch {
                    Some(Ok(messages)) => {
                        retry = backoff();
                        last_heard = Instant::now();
                        let acks = take(&mut follower, &mut status, messages, &mut silent_after).await;
                        if status.handle.is_closed() {
                            break None;
                        }
                        pull.ack(acks);
                    }
                    Some(Err(e)) => break Some(e),
                    None => break Some(tonic::Status::unavailable("stream ended")),
                },
            }
        };
        let Some(e) = ended else { break };
        if e.code() == tonic::Code::NotFound && own {
            // Deleted or expired under us: make it again, and start from a snapshot.
            created = false;
            follower = Follower::new(&cluster);
        }
        // Pub/Sub ends streams now and then: open another at once, and only if that fails
        // (the open above) is the cluster stale. A stream that ends as soon as it opens is a
        // failure all the same.
        if opened_at.elapsed() >= Duration::from_secs(1) {
            debug!(%subscription, error = %e, "stream ended: opening another");
            continue;
        }
        warn!(%subscription, error = %e, "stream broken: last data kept (stale)");
        status.error(format!("streaming pull: {}", e.message()));
        if !pause(&mut retry, &stop).await {
            break;
        }
    }
    if own && created {
        pull::delete(&pubsub, &subscription).await;
    }
}

/// Takes one batch of messages into the catalog; returns the ack ids (every message is acked:
/// applied ones once applied, dropped ones at once).
async fn take(
    follower: &mut Follower,
    status: &mut Status,
    messages: Vec<ReceivedMessage>,
    silent_after: &mut Option<Duration>,
) -> Vec<String> {
    let cluster = follower.cluster.clone();
    let mut acks = Vec::with_capacity(messages.len());
    for m in messages {
        acks.push(m.ack_id);
        let Some(message) = m.message else { continue };
        let env = match decode(&message) {
            Ok(env) => env,
            Err(outcome) => {
                fanout().received(&cluster, outcome);
                status.handle.send(Update::Skipped(format!(
                    "message {}: {outcome}",
                    message.message_id
                )));
                continue;
            }
        };
        if env.resync_secs > 0 {
            *silent_after = Some(Duration::from_secs(3 * u64::from(env.resync_secs) + 10));
        }
        let sent = env.sent_unix_micros;
        let stale_since = env.stale_since_unix;
        let (msg_cluster, epoch, seq) = (env.cluster.clone(), env.epoch, env.seq);
        let step = follower.step(env);
        for reason in follower.skipped.drain(..) {
            status.handle.send(Update::Skipped(reason));
        }
        let update = match step {
            Step::Replace(slice) => {
                debug!(epoch, seq, services = slice.len(), "snapshot");
                Some(Update::Replace(slice))
            }
            Step::Patch(changes) => Some(Update::Patch(changes)),
            Step::Part => {
                fanout().received(&cluster, "snapshot_part");
                None
            }
            Step::Gap => {
                info!(
                    epoch,
                    seq, "out of step: keeping the last slice until the next snapshot"
                );
                fanout().received(&cluster, "gap");
                None
            }
            Step::Dropped(outcome) => {
                fanout().received(&cluster, outcome);
                if outcome == "foreign_cluster" {
                    warn!(message_cluster = %msg_cluster, "a message of another cluster on this topic: ignored");
                    status.handle.send(Update::Skipped(format!(
                        "message {} of cluster {msg_cluster:?} ignored",
                        message.message_id
                    )));
                }
                None
            }
        };
        let Some(update) = update else { continue };
        let replace = matches!(update, Update::Replace(_));
        if status.handle.send_applied(update).await.is_err() {
            return acks;
        }
        fanout().received(&cluster, "applied");
        if sent > 0 {
            let micros = crate::catalog::unix_micros().saturating_sub(sent);
            fanout()
                .propagation
                .get_or_create(&crate::metrics::ClusterLabels {
                    cluster: cluster.clone(),
                })
                .observe(micros as f64 / 1e6);
        }
        if replace {
            // The catalog marks the cluster synced on a whole slice.
            status.state = SourceState::Synced;
        }
        if stale_since > 0 {
            status.set(SourceState::Stale {
                since_unix: stale_since,
            });
        } else {
            status.set(SourceState::Synced);
        }
    }
    acks
}

fn decode(message: &PubsubMessage) -> Result<Envelope, &'static str> {
    Envelope::decode(&message.data[..]).map_err(|_| "undecodable")
}

/// Snapshot requests this source sends: at start and after a gap, at most every 5 s.
struct Requests {
    cluster: String,
    topic: Option<String>,
    last: Option<Instant>,
}

const REQUEST_EVERY: Duration = Duration::from_secs(5);

impl Requests {
    fn new(cluster: &str, topic: Option<String>) -> Requests {
        Requests {
            cluster: cluster.to_string(),
            topic,
            last: None,
        }
    }

    /// Resolves when another request may go out (never, without a requests topic).
    async fn due(&self) {
        match (&self.topic, self.last) {
            (None, _) => std::future::pending().await,
            (Some(_), None) => {}
            (Some(_), Some(at)) => tokio::time::sleep_until((at + REQUEST_EVERY).into()).await,
        }
    }

    async fn ask(&mut self, pubsub: &PubSub) {
        let Some(topic) = &self.topic else { return };
        if self.last.is_some_and(|at| at.elapsed() < REQUEST_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let message = PubsubMessage {
            attributes: [(ATTR_CLUSTER.to_string(), self.cluster.clone())].into(),
            data: Vec::new(),
            ..PubsubMessage::default()
        };
        match pull::publish(pubsub, topic, vec![message]).await {
            Ok(()) => {
                fanout()
                    .requests
                    .get_or_create(&crate::metrics::KindLabels { kind: "sent" })
                    .inc();
                debug!(%topic, "asked for a snapshot");
            }
            // Not fatal: the next periodic snapshot comes anyway.
            Err(e) => debug!(%topic, error = %e, "could not ask for a snapshot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::wire::{Delta, SnapshotPart, WireKey};

    fn svc(name: &str, ip: &str) -> WireService {
        let key = ServiceKey::new("ns", name);
        let s = Service::Endpoints {
            ports: vec![],
            endpoints: vec![crate::model::Endpoint {
                ip: ip.parse().unwrap(),
                hostname: None,
                zone: None,
                node: None,
                ready: true,
            }],
            policy: Default::default(),
        };
        WireService::from_model(&key, &s)
    }

    fn env(epoch: u64, seq: u64, body: Body) -> Envelope {
        Envelope {
            version: WIRE_VERSION,
            cluster: "beta".into(),
            epoch,
            seq,
            body: Some(body),
            ..Envelope::default()
        }
    }

    fn part(part: u32, parts: u32, services: Vec<WireService>) -> Body {
        Body::Snapshot(SnapshotPart {
            part,
            parts,
            services,
        })
    }

    fn delta(services: Vec<WireService>, removed: &[&str]) -> Body {
        Body::Delta(Delta {
            services,
            removed: removed
                .iter()
                .map(|n| WireKey {
                    namespace: "ns".into(),
                    name: n.to_string(),
                })
                .collect(),
        })
    }

    #[test]
    fn snapshot_parts_then_deltas_in_step() {
        let mut f = Follower::new("beta");
        assert_eq!(
            f.step(env(1, 1, part(0, 2, vec![svc("a", "10.0.0.1")]))),
            Step::Part
        );
        let Step::Replace(slice) = f.step(env(1, 2, part(1, 2, vec![svc("b", "10.0.0.2")]))) else {
            panic!("not replaced")
        };
        assert_eq!(slice.len(), 2);
        let Step::Patch(changes) = f.step(env(1, 3, delta(vec![svc("c", "10.0.0.3")], &["a"])))
        else {
            panic!("not patched")
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1], (ServiceKey::new("ns", "a"), None));
        // Redelivered: dropped as a duplicate.
        assert_eq!(
            f.step(env(1, 3, delta(vec![], &[]))),
            Step::Dropped("duplicate")
        );
    }

    #[test]
    fn a_gap_waits_for_the_next_snapshot() {
        let mut f = Follower::new("beta");
        assert!(matches!(
            f.step(env(1, 1, part(0, 1, vec![svc("a", "10.0.0.1")]))),
            Step::Replace(_)
        ));
        // Message 2 was lost.
        assert_eq!(f.step(env(1, 3, delta(vec![], &["a"]))), Step::Gap);
        assert_eq!(f.step(env(1, 4, delta(vec![], &["a"]))), Step::Gap);
        assert!(!f.based());
        assert!(matches!(
            f.step(env(1, 5, part(0, 1, vec![]))),
            Step::Replace(_)
        ));
        assert!(matches!(
            f.step(env(1, 6, delta(vec![], &[]))),
            Step::Patch(_)
        ));
    }

    #[test]
    fn a_missing_part_never_serves_a_partial_snapshot() {
        let mut f = Follower::new("beta");
        assert_eq!(
            f.step(env(1, 1, part(0, 3, vec![svc("a", "10.0.0.1")]))),
            Step::Part
        );
        // Part 1 (seq 2) lost.
        assert_eq!(
            f.step(env(1, 3, part(2, 3, vec![svc("c", "10.0.0.3")]))),
            Step::Gap
        );
        assert!(!f.based());
    }

    #[test]
    fn epochs_fence_old_leaders() {
        let mut f = Follower::new("beta");
        assert!(matches!(
            f.step(env(2, 1, part(0, 1, vec![]))),
            Step::Replace(_)
        ));
        // The old leader's late message.
        assert_eq!(
            f.step(env(1, 50, delta(vec![], &[]))),
            Step::Dropped("old_epoch")
        );
        // A new leader's delta before its snapshot: wait.
        assert_eq!(f.step(env(3, 2, delta(vec![], &[]))), Step::Gap);
        assert!(matches!(
            f.step(env(3, 3, part(0, 1, vec![]))),
            Step::Replace(_)
        ));
    }

    #[test]
    fn foreign_unknown_and_bad_messages_are_dropped() {
        let mut f = Follower::new("beta");
        let mut e = env(1, 1, part(0, 1, vec![]));
        e.cluster = "gamma".into();
        assert_eq!(f.step(e), Step::Dropped("foreign_cluster"));
        let mut e = env(1, 1, part(0, 1, vec![]));
        e.version = 2;
        assert_eq!(f.step(e), Step::Dropped("unknown_version"));
        assert_eq!(
            f.step(env(1, 1, part(3, 1, vec![]))),
            Step::Dropped("invalid")
        );
        // One bad service is skipped, the rest applies.
        let mut bad = svc("bad", "10.0.0.9");
        bad.endpoints[0].ip = vec![1];
        let Step::Replace(slice) = f.step(env(1, 1, part(0, 1, vec![bad, svc("ok", "10.0.0.1")])))
        else {
            panic!("not replaced")
        };
        assert_eq!(slice.len(), 1);
        assert_eq!(f.skipped.len(), 1);
    }
}
