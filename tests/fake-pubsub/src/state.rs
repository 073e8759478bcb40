//! The in-memory model of the fake: topics, subscriptions, their pending and
//! outstanding messages, and the open StreamingPull streams.
//!
//! Everything here is synchronous and runs under one `std::sync::Mutex`
//! (never held across an `.await`); the gRPC layer in `service.rs` and the
//! stream tasks in `stream.rs` call in with `now` and wake each other through
//! one [`Notify`] per subscription.
//!
//! # Message life cycle, per subscription
//!
//! A publish copies the message into the `pending` queue of every
//! subscription of the topic, keyed by its global publish sequence number (its
//! `message_id`), so the queue is always in publish order. A stream takes
//! messages from `pending` into `outstanding` under a fresh ack ID and an ack
//! deadline. From there an ack removes the message for good; a nack (modack
//! to 0 s), a passed deadline, or the closing of the stream that holds it puts
//! it back into `pending` at its original place, to be delivered again under a
//! new ack ID. Ack IDs that are no longer outstanding are ignored.

use crate::Stats;
use crate::filter::Filter;
use crate::names;
use google_cloud_googleapis::pubsub::v1::{
    ExpirationPolicy, PubsubMessage, ReceivedMessage, StreamingPullRequest, Subscription, Topic,
    subscription, topic,
};
use prost::Message as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tonic::Status;

/// The real service's largest ack deadline.
pub(crate) const MAX_ACK_DEADLINE_SECS: i32 = 600;
/// The smallest ack deadline the fake accepts. The real service's is 10 s;
/// the fake goes down to 1 s so redelivery tests stay fast.
pub(crate) const MIN_ACK_DEADLINE_SECS: i32 = 1;
/// The real service's default ack deadline for a subscription.
const DEFAULT_ACK_DEADLINE_SECS: i32 = 10;
/// The real service's limit on a publish request and on one message (10 MiB).
pub(crate) const MAX_PUBLISH_BYTES: usize = 10 * 1024 * 1024;
/// The real service's limit on messages in one publish request.
const MAX_MESSAGES_PER_PUBLISH: usize = 1000;
/// Limits on attributes and ordering keys, as documented for the real service.
const MAX_ATTRIBUTES: usize = 100;
const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// At most this many messages in one StreamingPullResponse.
const MAX_RESPONSE_MESSAGES: usize = 1000;
/// At most about this many bytes in one StreamingPullResponse (unless a single
/// message is larger), below tonic's default 4 MiB decoding limit of clients.
const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;
/// What the real service shows as the topic of a subscription whose topic was
/// deleted.
const DELETED_TOPIC: &str = "_deleted-topic_";

/// A message waiting to be delivered on a subscription.
struct Pending {
    message: PubsubMessage,
    /// How many times it was delivered before.
    attempts: i32,
    /// Its encoded size, for flow control by bytes.
    size: usize,
}

/// A message delivered on a stream and not yet acked.
struct Outstanding {
    /// Publish sequence number: where it goes back into `pending`.
    seq: u64,
    message: PubsubMessage,
    /// Delivery attempts so far, this one included.
    attempts: i32,
    size: usize,
    deadline: Instant,
    /// The stream it was delivered on.
    stream: u64,
}

struct Sub {
    proto: Subscription,
    /// The parsed `proto.filter`, if any.
    filter: Option<Filter>,
    /// Deliverable messages by publish sequence number, i.e. in publish order.
    pending: BTreeMap<u64, Pending>,
    /// Delivered, unacked messages by ack ID.
    outstanding: HashMap<String, Outstanding>,
    /// Woken whenever something may have become deliverable.
    notify: Arc<Notify>,
}

impl Sub {
    /// Puts the outstanding message `ack_id` back into `pending`; its ack ID
    /// becomes invalid. Returns whether there was such a message.
    fn requeue(&mut self, ack_id: &str) -> bool {
        let Some(o) = self.outstanding.remove(ack_id) else {
            return false;
        };
        let pending = Pending {
            message: o.message,
            attempts: o.attempts,
            size: o.size,
        };
        self.pending.insert(o.seq, pending);
        true
    }

    /// Requeues every outstanding message whose ack deadline has passed.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.requeue(id);
        }
        if !expired.is_empty() {
            self.notify.notify_waiters();
        }
    }

    /// The earliest ack deadline of the outstanding messages.
    fn next_deadline(&self) -> Option<Instant> {
        self.outstanding.values().map(|o| o.deadline).min()
    }
}

/// One open StreamingPull stream.
struct StreamEntry {
    subscription: String,
    ack_deadline: Duration,
    /// Flow control; 0 means no limit.
    max_messages: usize,
    max_bytes: usize,
    /// Ends the stream with a status; taken when used.
    kill: Option<oneshot::Sender<Status>>,
}

/// What a stream task gets back when it opens a stream.
pub(crate) struct OpenedStream {
    pub(crate) id: u64,
    pub(crate) notify: Arc<Notify>,
    pub(crate) kill: oneshot::Receiver<Status>,
}

/// The outcome of [`State::take_batch`].
pub(crate) enum Take {
    /// Messages to send now.
    Batch(Vec<ReceivedMessage>),
    /// Nothing to send; look again when notified or at this deadline.
    Idle(Option<Instant>),
    /// The stream must end with this status.
    Gone(Status),
}

#[derive(Default)]
struct Counters {
    published: u64,
    lost: u64,
    delivered: u64,
    redelivered: u64,
    acked: u64,
    modacks: u64,
    published_per_topic: BTreeMap<String, u64>,
}

#[derive(Default)]
pub(crate) struct State {
    /// An outage: every RPC fails with UNAVAILABLE.
    pub(crate) down: bool,
    topics: BTreeMap<String, Topic>,
    subs: BTreeMap<String, Sub>,
    /// Per topic: how many of the next published messages to lose.
    lose_next: HashMap<String, usize>,
    streams: HashMap<u64, StreamEntry>,
    last_message_id: u64,
    last_ack_id: u64,
    last_stream_id: u64,
    counters: Counters,
}

fn not_found(resource: &str) -> Status {
    Status::not_found(format!("Resource not found (resource={resource})."))
}

fn already_exists(resource: &str) -> Status {
    Status::already_exists(format!(
        "Resource already exists in the project (resource={resource})."
    ))
}

fn unavailable() -> Status {
    Status::unavailable("fake-pubsub: the service is down")
}

/// Checks an ack deadline given in a request, in seconds.
fn check_deadline(secs: i32, allow_zero: bool) -> Result<(), Status> {
    let min = if allow_zero { 0 } else { MIN_ACK_DEADLINE_SECS };
    if (min..=MAX_ACK_DEADLINE_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Invalid ack deadline given: {secs} s; it must be in [{min}, {MAX_ACK_DEADLINE_SECS}] \
             (the real service's minimum is 10 s)"
        )))
    }
}

fn deadline_after(now: Instant, secs: i32) -> Instant {
    now + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn check_message(m: &PubsubMessage) -> Result<(), Status> {
    let invalid = |what: &str| Err(Status::invalid_argument(what.to_string()));
    if m.data.is_empty() && m.attributes.is_empty() {
        return invalid(
            "One or more messages in the publish request is empty. Each message must contain \
             either non-empty data, or at least one attribute.",
        );
    }
    if m.encoded_len() > MAX_PUBLISH_BYTES {
        return invalid("Message size exceeds the limit: 10485760 bytes.");
    }
    if m.attributes.len() > MAX_ATTRIBUTES {
        return invalid("A message has more than 100 attributes.");
    }
    for (key, value) in &m.attributes {
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY_BYTES || key.starts_with("goog") {
            return invalid("Invalid attribute key: empty, over 256 bytes, or starting with goog.");
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return invalid("An attribute value is over 1024 bytes.");
        }
    }
    if m.ordering_key.len() > MAX_ORDERING_KEY_BYTES {
        return invalid("The ordering key is over 1024 bytes.");
    }
    Ok(())
}

impl State {
    pub(crate) fn check_up(&self) -> Result<(), Status> {
        if self.down {
            Err(unavailable())
        } else {
            Ok(())
        }
    }

    // ---- topics -------------------------------------------------------------

    pub(crate) fn create_topic(&mut self, mut topic: Topic) -> Result<Topic, Status> {
        names::check_topic(&topic.name)?;
        if self.topics.contains_key(&topic.name) {
            return Err(already_exists(&topic.name));
        }
        topic.state = topic::State::Active as i32;
        self.topics.insert(topic.name.clone(), topic.clone());
        Ok(topic)
    }

    pub(crate) fn get_topic(&self, name: &str) -> Result<Topic, Status> {
        names::check_topic(name)?;
        self.topics
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Deletes a topic. As in the real service its subscriptions stay, with
    /// the topic shown as `_deleted-topic_`, and keep their messages.
    pub(crate) fn delete_topic(&mut self, name: &str) -> Result<(), Status> {
        names::check_topic(name)?;
        self.topics.remove(name).ok_or_else(|| not_found(name))?;
        for sub in self.subs.values_mut() {
            if sub.proto.topic == name {
                DELETED_TOPIC.clone_into(&mut sub.proto.topic);
            }
        }
        Ok(())
    }

    /// Publishes, all or nothing: returns the message IDs in request order.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        messages: Vec<PubsubMessage>,
        request_bytes: usize,
    ) -> Result<Vec<String>, Status> {
        names::check_topic(topic)?;
        if !self.topics.contains_key(topic) {
            return Err(not_found(topic));
        }
        if messages.is_empty() {
            return Err(Status::invalid_argument(
                "The publish request contains no messages.",
            ));
        }
        if messages.len() > MAX_MESSAGES_PER_PUBLISH {
            return Err(Status::invalid_argument(
                "The publish request has more than 1000 messages.",
            ));
        }
        if request_bytes > MAX_PUBLISH_BYTES {
            return Err(Status::invalid_argument(
                "Request payload size exceeds the limit: 10485760 bytes.",
            ));
        }
        messages.iter().try_for_each(check_message)?;

        let publish_time = prost_types::Timestamp::from(SystemTime::now());
        let mut ids = Vec::with_capacity(messages.len());
        for mut message in messages {
            self.last_message_id += 1;
            let seq = self.last_message_id;
            message.message_id = seq.to_string();
            message.publish_time = Some(publish_time);
            ids.push(message.message_id.clone());

            self.counters.published += 1;
            *self
                .counters
                .published_per_topic
                .entry(topic.to_string())
                .or_default() += 1;
            if let Some(n) = self.lose_next.get_mut(topic).filter(|n| **n > 0) {
                // Accepted, and never delivered anywhere.
                *n -= 1;
                self.counters.lost += 1;
                continue;
            }
            let size = message.encoded_len();
            let attributes = &message.attributes;
            let receivers = self.subs.values_mut().filter(|s| {
                s.proto.topic == topic && s.filter.as_ref().is_none_or(|f| f.matches(attributes))
            });
            // Subscriptions whose filter does not match never see the message
            // (the real service acks it for them).
            for sub in receivers {
                let pending = Pending {
                    message: message.clone(),
                    attempts: 0,
                    size,
                };
                sub.pending.insert(seq, pending);
            }
        }
        for sub in self.subs.values().filter(|s| s.proto.topic == topic) {
            sub.notify.notify_waiters();
        }
        Ok(ids)
    }

    pub(crate) fn lose_next_publishes(&mut self, topic: &str, n: usize) {
        *self.lose_next.entry(topic.to_string()).or_default() += n;
    }

    // ---- subscriptions ------------------------------------------------------

    pub(crate) fn create_subscription(
        &mut self,
        mut proto: Subscription,
    ) -> Result<Subscription, Status> {
        names::check_subscription(&proto.name)?;
        names::check_topic(&proto.topic)?;
        if self.subs.contains_key(&proto.name) {
            return Err(already_exists(&proto.name));
        }
        if !self.topics.contains_key(&proto.topic) {
            return Err(not_found(&proto.topic));
        }
        let filter =
            match proto.filter.as_str() {
                "" => None,
                text => Some(Filter::parse(text).map_err(|e| {
                    Status::invalid_argument(format!("Invalid filter {text:?}: {e}"))
                })?),
            };
        let unsupported = [
            (proto.push_config.is_some(), "push_config"),
            (proto.bigquery_config.is_some(), "bigquery_config"),
            (proto.cloud_storage_config.is_some(), "cloud_storage_config"),
            (proto.dead_letter_policy.is_some(), "dead_letter_policy"),
            (
                proto.enable_exactly_once_delivery,
                "enable_exactly_once_delivery",
            ),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(Status::unimplemented(format!(
                "fake-pubsub does not support Subscription.{field}"
            )));
        }
        if proto.ack_deadline_seconds == 0 {
            proto.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_SECS;
        }
        check_deadline(proto.ack_deadline_seconds, false)?;
        // The real service's defaults: 7 days of retention, expiry after 31
        // idle days. The fake stores them and enforces neither.
        proto
            .message_retention_duration
            .get_or_insert(prost_types::Duration {
                seconds: 7 * 24 * 3600,
                nanos: 0,
            });
        proto.expiration_policy.get_or_insert(ExpirationPolicy {
            ttl: Some(prost_types::Duration {
                seconds: 31 * 24 * 3600,
                nanos: 0,
            }),
        });
        proto.state = subscription::State::Active as i32;
        let sub = Sub {
            proto: proto.clone(),
            filter,
            pending: BTreeMap::new(),
            outstanding: HashMap::new(),
            notify: Arc::new(Notify::new()),
        };
        self.subs.insert(proto.name.clone(), sub);
        Ok(proto)
    }

    pub(crate) fn get_subscription(&self, name: &str) -> Result<Subscription, Status> {
        names::check_subscription(name)?;
        self.subs
            .get(name)
            .map(|s| s.proto.clone())
            .ok_or_else(|| not_found(name))
    }

    /// Deletes a subscription with its messages and ends its streams with
    /// NOT_FOUND.
    pub(crate) fn delete_subscription(&mut self, name: &str) -> Result<(), Status> {
        names::check_subscription(name)?;
        self.subs.remove(name).ok_or_else(|| not_found(name))?;
        for entry in self.streams.values_mut() {
            if entry.subscription == name
                && let Some(kill) = entry.kill.take()
            {
                let _ = kill.send(not_found(name));
            }
        }
        Ok(())
    }

    fn sub_mut(&mut self, name: &str) -> Result<&mut Sub, Status> {
        names::check_subscription(name)?;
        self.subs.get_mut(name).ok_or_else(|| not_found(name))
    }

    /// Acks: ack IDs that are unknown, expired or already acked are ignored.
    pub(crate) fn acknowledge(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        now: Instant,
    ) -> Result<(), Status> {
        let sub = self.sub_mut(subscription)?;
        sub.expire(now);
        let acked = ack_ids
            .iter()
            .filter(|id| sub.outstanding.remove(id.as_str()).is_some())
            .count();
        if acked > 0 {
            // Room under flow control, and the next message of an ordering key.
            sub.notify.notify_waiters();
        }
        self.counters.acked += acked as u64;
        Ok(())
    }

    /// Sets the ack deadline of outstanding messages to `secs` from now; 0
    /// nacks them: they are redelivered at once.
    pub(crate) fn modify_ack_deadline(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        secs: i32,
        now: Instant,
    ) -> Result<(), Status> {
        check_deadline(secs, true)?;
        let sub = self.sub_mut(subscription)?;
        sub.expire(now);
        let mut modified = 0;
        for id in ack_ids {
            let known = if secs == 0 {
                sub.requeue(id)
            } else if let Some(o) = sub.outstanding.get_mut(id) {
                o.deadline = deadline_after(now, secs);
                true
            } else {
                false
            };
            modified += u64::from(known);
        }
        if secs == 0 && modified > 0 {
            sub.notify.notify_waiters();
        }
        self.counters.modacks += modified;
        Ok(())
    }

    // ---- streams ------------------------------------------------------------

    /// Opens a StreamingPull stream from its first request.
    pub(crate) fn open_stream(
        &mut self,
        first: &StreamingPullRequest,
    ) -> Result<OpenedStream, Status> {
        self.check_up()?;
        if first.subscription.is_empty() {
            return Err(Status::invalid_argument(
                "The first StreamingPullRequest must name a subscription.",
            ));
        }
        let sub = self.sub_mut(&first.subscription)?;
        let ack_deadline_secs = match first.stream_ack_deadline_seconds {
            // Required by the real service; the fake falls back to the
            // subscription's deadline.
            0 => sub.proto.ack_deadline_seconds,
            secs => {
                check_deadline(secs, false)?;
                secs
            }
        };
        let notify = sub.notify.clone();
        let (kill_tx, kill_rx) = oneshot::channel();
        self.last_stream_id += 1;
        let id = self.last_stream_id;
        let entry = StreamEntry {
            subscription: first.subscription.clone(),
            ack_deadline: Duration::from_secs(u64::try_from(ack_deadline_secs).unwrap_or(0)),
            // Zero or negative means no limit.
            max_messages: usize::try_from(first.max_outstanding_messages).unwrap_or(0),
            max_bytes: usize::try_from(first.max_outstanding_bytes).unwrap_or(0),
            kill: Some(kill_tx),
        };
        self.streams.insert(id, entry);
        Ok(OpenedStream {
            id,
            notify,
            kill: kill_rx,
        })
    }

    /// Applies the acks, modacks and deadline change of a StreamingPull
    /// request. An invalid request ends the stream with its status.
    pub(crate) fn apply_stream_request(
        &mut self,
        stream: u64,
        req: &StreamingPullRequest,
        now: Instant,
    ) -> Result<(), Status> {
        self.check_up()?;
        let entry = self
            .streams
            .get_mut(&stream)
            .ok_or_else(|| Status::not_found("stream closed"))?;
        if req.modify_deadline_seconds.len() != req.modify_deadline_ack_ids.len() {
            return Err(Status::invalid_argument(
                "modify_deadline_seconds and modify_deadline_ack_ids must have the same length",
            ));
        }
        for &secs in &req.modify_deadline_seconds {
            check_deadline(secs, true)?;
        }
        if req.stream_ack_deadline_seconds != 0 {
            check_deadline(req.stream_ack_deadline_seconds, false)?;
            entry.ack_deadline =
                Duration::from_secs(u64::try_from(req.stream_ack_deadline_seconds).unwrap_or(0));
        }
        let subscription = entry.subscription.clone();
        if !req.ack_ids.is_empty() {
            self.acknowledge(&subscription, &req.ack_ids, now)?;
        }
        for (id, &secs) in req
            .modify_deadline_ack_ids
            .iter()
            .zip(&req.modify_deadline_seconds)
        {
            self.modify_ack_deadline(&subscription, std::slice::from_ref(id), secs, now)?;
        }
        Ok(())
    }

    /// Takes the messages that `stream` may be sent now, within its flow
    /// control and, with message ordering, one outstanding message per
    /// ordering key.
    pub(crate) fn take_batch(&mut self, stream: u64, now: Instant) -> Take {
        if self.down {
            return Take::Gone(unavailable());
        }
        let State {
            streams,
            subs,
            counters,
            last_ack_id,
            ..
        } = self;
        let Some(entry) = streams.get(&stream) else {
            return Take::Gone(Status::not_found("stream closed"));
        };
        let Some(sub) = subs.get_mut(&entry.subscription) else {
            return Take::Gone(not_found(&entry.subscription));
        };
        sub.expire(now);

        // What this stream already holds, against its flow control.
        let (mut count, mut bytes) = sub
            .outstanding
            .values()
            .filter(|o| o.stream == stream)
            .fold((0, 0), |(n, b), o| (n + 1, b + o.size));
        // Ordering keys with a message outstanding on any stream.
        let ordered = sub.proto.enable_message_ordering;
        let mut busy_keys: HashSet<&str> = if ordered {
            sub.outstanding
                .values()
                .map(|o| o.message.ordering_key.as_str())
                .filter(|k| !k.is_empty())
                .collect()
        } else {
            HashSet::new()
        };

        let mut chosen = Vec::new();
        let mut batch_bytes = 0;
        for (&seq, p) in &sub.pending {
            let full = (entry.max_messages > 0 && count >= entry.max_messages)
                // The first message always goes, however large.
                || (entry.max_bytes > 0 && count > 0 && bytes + p.size > entry.max_bytes)
                || chosen.len() >= MAX_RESPONSE_MESSAGES
                || (!chosen.is_empty() && batch_bytes + p.size > MAX_RESPONSE_BYTES);
            if full {
                break;
            }
            let key = p.message.ordering_key.as_str();
            if ordered && !key.is_empty() && !busy_keys.insert(key) {
                // An earlier message of this key is outstanding or in this
                // batch: this one waits, later ones of other keys go on.
                continue;
            }
            chosen.push(seq);
            count += 1;
            bytes += p.size;
            batch_bytes += p.size;
        }
        if chosen.is_empty() {
            return Take::Idle(sub.next_deadline());
        }

        let deadline = now + entry.ack_deadline;
        let mut batch = Vec::with_capacity(chosen.len());
        for seq in chosen {
            let Some(p) = sub.pending.remove(&seq) else {
                continue;
            };
            *last_ack_id += 1;
            let ack_id = format!("ack-{seq}-{last_ack_id}");
            let attempts = p.attempts + 1;
            counters.delivered += 1;
            if attempts > 1 {
                counters.redelivered += 1;
            }
            batch.push(ReceivedMessage {
                ack_id: ack_id.clone(),
                message: Some(p.message.clone()),
                delivery_attempt: attempts,
            });
            let outstanding = Outstanding {
                seq,
                message: p.message,
                attempts,
                size: p.size,
                deadline,
                stream,
            };
            sub.outstanding.insert(ack_id, outstanding);
        }
        Take::Batch(batch)
    }

    /// Forgets a stream; the messages it held become deliverable at once.
    pub(crate) fn close_stream(&mut self, stream: u64) {
        let Some(entry) = self.streams.remove(&stream) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&entry.subscription) else {
            return;
        };
        let held: Vec<String> = sub
            .outstanding
            .iter()
            .filter(|(_, o)| o.stream == stream)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &held {
            sub.requeue(id);
        }
        if !held.is_empty() {
            sub.notify.notify_waiters();
        }
    }

    pub(crate) fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Starts or ends an outage. Starting one ends every stream with
    /// UNAVAILABLE.
    pub(crate) fn set_down(&mut self, down: bool) {
        self.down = down;
        if down {
            for entry in self.streams.values_mut() {
                if let Some(kill) = entry.kill.take() {
                    let _ = kill.send(unavailable());
                }
            }
        }
    }

    // ---- inspection ---------------------------------------------------------

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            published: c.published,
            lost: c.lost,
            delivered: c.delivered,
            redelivered: c.redelivered,
            acked: c.acked,
            modacks: c.modacks,
            streams_open: self.streams.len(),
            subscriptions: self.subs.len(),
            published_per_topic: c.published_per_topic.clone(),
        }
    }

    pub(crate) fn topic_names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    pub(crate) fn subscription_names(&self) -> Vec<String> {
        self.subs.keys().cloned().collect()
    }
}
