//! A fake Google Cloud Pub/Sub server for tests: an in-process tonic gRPC
//! server of the real `google.pubsub.v1` Publisher and Subscriber services on
//! 127.0.0.1, in plaintext HTTP/2 like the Pub/Sub emulator, so that the real
//! generated clients of `google-cloud-googleapis` (and anything built on them
//! that honours `PUBSUB_EMULATOR_HOST`) run against it unmodified.
//!
//! The server traits are generated from the same googleapis protos as the
//! clients, with every message type taken from `google-cloud-googleapis`
//! (see `GENERATE.md`).
//!
//! # What it speaks
//!
//! - Publisher: `CreateTopic`, `GetTopic`, `DeleteTopic`, `Publish`.
//! - Subscriber: `CreateSubscription`, `GetSubscription`,
//!   `DeleteSubscription`, `Acknowledge`, `ModifyAckDeadline` and the
//!   bidirectional `StreamingPull`, with per-stream flow control
//!   (`max_outstanding_messages`, `max_outstanding_bytes`), ack deadlines and
//!   redelivery, ordering keys, and subscription filters on attributes
//!   (`attributes:k`, `attributes.k = "v"`, `!=`, `hasPrefix`, `AND`, `OR`,
//!   `NOT`, parentheses).
//! - Errors with the real codes: INVALID_ARGUMENT (malformed names, empty or
//!   oversized messages, requests over 10 MiB), NOT_FOUND, ALREADY_EXISTS.
//! - Every other RPC answers UNIMPLEMENTED.
//!
//! # Semantics
//!
//! - A subscription receives the messages published to its topic after it
//!   was created. Each message goes to one stream of the subscription at a
//!   time; it is redelivered, under a new ack ID, when its ack deadline
//!   passes, when it is nacked (`ModifyAckDeadline` to 0 s), or at once when
//!   the stream holding it closes. Acks of ack IDs no longer outstanding are
//!   ignored.
//! - With `enable_message_ordering`, messages of one non-empty ordering key
//!   are delivered strictly in publish order, one at a time: the next goes
//!   only once the previous one is acked.
//! - Messages are pushed on open streams as soon as they are deliverable.
//!
//! # Deviations from the real service
//!
//! - Ack deadlines from 1 s are accepted (the real minimum is 10 s), and a
//!   stream's `stream_ack_deadline_seconds` may be 0 (the subscription's
//!   deadline is used).
//! - `delivery_attempt` is always set (1 on first delivery), not only with a
//!   dead-letter policy.
//! - Push/BigQuery/Cloud Storage delivery, dead-letter policies and
//!   exactly-once delivery are refused with UNIMPLEMENTED; retention,
//!   expiration and retry policies are stored but not enforced.
//! - Ordering is stricter than the real service (which may deliver several
//!   messages of a key at once): at most one outstanding message per key.
//! - A stream survives the client half-closing its side; it ends when the
//!   client cancels it, on an outage, or when its subscription is deleted.
//! - Filters: `attributes.k != "v"` also matches messages without `k` (not
//!   checked against the real service); `-` as NOT is not accepted.
//! - No authentication and no quotas (the `authorization` header of every call is
//!   kept for [`FakePubSub::authorizations`]); the state is in memory only.
//!
//! # Fault injection
//!
//! [`FakePubSub::set_down`] (an outage on the same port) and
//! [`FakePubSub::lose_next_publishes`] (messages accepted, never delivered).

// tonic's service traits return `Result<_, tonic::Status>`; the model uses
// the same error type throughout rather than boxing it.
#![allow(clippy::result_large_err)]

mod filter;
mod names;
mod service;
mod state;
mod stream;

/// The tonic server side of `google.pubsub.v1`, generated once by
/// tonic-build (see `GENERATE.md`); its message types are those of
/// `google-cloud-googleapis`.
#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!("generated/google.pubsub.v1.rs");
}

use generated::publisher_server::PublisherServer;
use generated::subscriber_server::SubscriberServer;
use service::Service;
use state::State;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// The largest gRPC message the server decodes: above the 10 MiB publish
/// limit, so an oversized publish gets the real service's INVALID_ARGUMENT
/// rather than tonic's own error.
const MAX_DECODING_BYTES: usize = 16 * 1024 * 1024;

/// Counters since the server started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages accepted by `Publish` (lost ones included).
    pub published: u64,
    /// Messages accepted and dropped by [`FakePubSub::lose_next_publishes`].
    pub lost: u64,
    /// Messages sent on StreamingPull streams, redeliveries included.
    pub delivered: u64,
    /// Of `delivered`, the redeliveries (delivery attempt above 1).
    pub redelivered: u64,
    /// Acks of outstanding messages (ignored acks not counted).
    pub acked: u64,
    /// Deadline changes of outstanding messages, nacks included.
    pub modacks: u64,
    /// StreamingPull streams open now.
    pub streams_open: usize,
    /// Subscriptions that exist now.
    pub subscriptions: usize,
    /// Messages accepted, per full topic name.
    pub published_per_topic: BTreeMap<String, u64>,
}

/// What the server, its streams and the handle share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Woken whenever a stream closes.
    streams_changed: Notify,
    /// Every distinct `authorization` header value received.
    authorizations: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    /// The state. Nothing panics while holding the lock, but a poisoned lock
    /// is taken as is rather than turned into a second panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake Pub/Sub server. Dropping it stops the server.
pub struct FakePubSub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FakePubSub {
    /// Starts a server on 127.0.0.1 on a free port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<FakePubSub> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        // TCP_NODELAY: small responses must not wait for Nagle's algorithm.
        let incoming = TcpIncoming::from_listener(listener, true, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            streams_changed: Notify::new(),
            authorizations: Mutex::new(Default::default()),
        });
        let service = Service {
            shared: shared.clone(),
        };
        // Keeps the credentials each call carries (checked, never required).
        let seen = shared.clone();
        let record = move |request: tonic::Request<()>| {
            if let Some(v) = request.metadata().get("authorization")
                && let Ok(v) = v.to_str()
            {
                seen.authorizations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(v.to_string());
            }
            Ok(request)
        };
        let router = Server::builder()
            .add_service(InterceptedService::new(
                PublisherServer::new(service.clone()).max_decoding_message_size(MAX_DECODING_BYTES),
                record.clone(),
            ))
            .add_service(InterceptedService::new(
                SubscriberServer::new(service).max_decoding_message_size(MAX_DECODING_BYTES),
                record,
            ));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let signal = async {
                let _ = stopped.await;
            };
            // Serving only fails if accepting connections does; a test then
            // sees its RPCs fail.
            let _ = router.serve_with_incoming_shutdown(incoming, signal).await;
        });
        Ok(FakePubSub {
            addr,
            shared,
            shutdown: Some(shutdown),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the value for `PUBSUB_EMULATOR_HOST`.
    pub fn emulator_host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`, for a tonic `Channel`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts (`true`) or ends (`false`) an outage. During one every RPC
    /// fails with UNAVAILABLE, and starting one ends every open StreamingPull
    /// stream with UNAVAILABLE; this returns once they are all closed.
    /// Published messages are kept, and unacked ones are delivered again
    /// after the outage.
    pub async fn set_down(&self, down: bool) {
        self.shared.lock().set_down(down);
        if !down {
            return;
        }
        loop {
            let mut closed = pin!(self.shared.streams_changed.notified());
            closed.as_mut().enable();
            if self.shared.lock().open_streams() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Makes the next `n` messages published to `topic` (a full name,
    /// `projects/P/topics/T`) be accepted, with message IDs, and never
    /// delivered to any subscription. Adds to what is still to be lost.
    pub fn lose_next_publishes(&self, topic: &str, n: usize) {
        self.shared.lock().lose_next_publishes(topic, n);
    }

    /// Counters since the server started.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }

    /// Full names of the subscriptions, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        self.shared.lock().subscription_names()
    }

    /// Every distinct `authorization` header value calls carried (e.g. `Bearer <token>`).
    pub fn authorizations(&self) -> Vec<String> {
        self.shared
            .authorizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Full names of the topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.shared.lock().topic_names()
    }
}

impl Drop for FakePubSub {
    /// Stops accepting connections, fails every later RPC with UNAVAILABLE
    /// and ends the open streams, so the server's connections wind down.
    fn drop(&mut self) {
        self.shared.lock().set_down(true);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
