//! Subscriptions and StreamingPull, shared by the `pubsub` source and the publisher's
//! snapshot-request listener.

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use google_cloud_googleapis::pubsub::v1::{
    DeleteSubscriptionRequest, ExpirationPolicy, PublishRequest, PubsubMessage, ReceivedMessage,
    StreamingPullRequest, Subscription,
};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use tracing::{debug, warn};

use super::client::PubSub;

/// How long Pub/Sub waits for an ack before it delivers a message again.
pub const ACK_DEADLINE_SECS: i32 = 10;

/// What an instance's own subscription is called: `meshdns-<what>-<instance>-<random>`,
/// trimmed to Pub/Sub's 255 characters. The random part keeps a restarted process with the
/// same host name off the subscription (and backlog) of its predecessor.
pub fn own_subscription_name(project: &str, what: &str) -> String {
    let instance: String = crate::config::instance_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect();
    let random: String = (0..6).map(|_| fastrand::alphanumeric()).collect();
    let id: String = format!("meshdns-{what}-{instance}-{}", random.to_ascii_lowercase())
        .chars()
        .take(255)
        .collect();
    format!("projects/{project}/subscriptions/{id}")
}

/// The project of a `projects/{project}/...` name.
pub fn project_of(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or_default()
}

/// Creates this instance's own subscription to `topic`: ordered, short retention (old
/// messages are of no use: a newer snapshot supersedes them), deleted by Pub/Sub after
/// `expiry` without a client (a crashed instance's).
pub async fn create_own(
    pubsub: &PubSub,
    name: &str,
    topic: &str,
    expiry: Duration,
    filter: &str,
) -> Result<(), Status> {
    let subscription = Subscription {
        name: name.to_string(),
        topic: topic.to_string(),
        ack_deadline_seconds: ACK_DEADLINE_SECS,
        enable_message_ordering: true,
        message_retention_duration: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        expiration_policy: Some(ExpirationPolicy {
            ttl: Some(prost_types::Duration {
                seconds: expiry.as_secs() as i64,
                nanos: 0,
            }),
        }),
        labels: HashMap::from([("app".to_string(), "meshdns".to_string())]),
        filter: filter.to_string(),
        ..Subscription::default()
    };
    let request = pubsub.request(subscription).await?;
    match pubsub.subscriber().create_subscription(request).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(s),
    }
}

/// Deletes a subscription, giving up after two seconds (shutdown must not hang on it).
pub async fn delete(pubsub: &PubSub, name: &str) {
    let call = async {
        let request = pubsub
            .request(DeleteSubscriptionRequest {
                subscription: name.to_string(),
            })
            .await?;
        pubsub.subscriber().delete_subscription(request).await
    };
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(_)) => debug!(subscription = name, "subscription deleted"),
        Ok(Err(e)) if e.code() == Code::NotFound => {}
        Ok(Err(e)) => {
            warn!(subscription = name, error = %e, "could not delete the subscription (it expires by itself)")
        }
        Err(_) => warn!(
            subscription = name,
            "deleting the subscription timed out (it expires by itself)"
        ),
    }
}

/// One open StreamingPull stream: received messages come from `messages`; acks go back
/// through [`Pull::ack`].
pub struct Pull {
    pub messages:
        std::pin::Pin<Box<dyn Stream<Item = Result<Vec<ReceivedMessage>, Status>> + Send>>,
    requests: mpsc::UnboundedSender<StreamingPullRequest>,
}

impl Pull {
    /// Opens a stream on `subscription` with flow control: at most `max_outstanding` unacked
    /// messages at a time.
    pub async fn open(
        pubsub: &PubSub,
        subscription: &str,
        max_outstanding: i64,
    ) -> Result<Pull, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(StreamingPullRequest {
            subscription: subscription.to_string(),
            stream_ack_deadline_seconds: ACK_DEADLINE_SECS,
            client_id: fastrand::u64(..).to_string(),
            max_outstanding_messages: max_outstanding,
            max_outstanding_bytes: 0,
            ..StreamingPullRequest::default()
        });
        let outgoing = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|request| (request, rx))
        });
        let request = pubsub.request(outgoing).await?;
        let response = pubsub.subscriber().streaming_pull(request).await?;
        let messages = response
            .into_inner()
            .map(|r| r.map(|r| r.received_messages))
            .boxed();
        Ok(Pull {
            messages,
            requests: tx,
        })
    }

    /// Acknowledges messages on the stream (nothing is sent for an empty list).
    pub fn ack(&self, ack_ids: Vec<String>) {
        if !ack_ids.is_empty() {
            let _ = self.requests.send(StreamingPullRequest {
                ack_ids,
                ..StreamingPullRequest::default()
            });
        }
    }
}

/// Publishes messages in order, in as few requests as fit Pub/Sub's request limit.
pub async fn publish(
    pubsub: &PubSub,
    topic: &str,
    messages: Vec<PubsubMessage>,
) -> Result<(), Status> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut rest = messages.into_iter().peekable();
    while let Some(m) = rest.next() {
        bytes += m.data.len() + 256;
        batch.push(m);
        let full = rest
            .peek()
            .is_none_or(|n| bytes + n.data.len() + 256 > super::client::MAX_REQUEST_BYTES - 65_536);
        if full {
            let request = pubsub
                .request(PublishRequest {
                    topic: topic.to_string(),
                    messages: std::mem::take(&mut batch),
                })
                .await?;
            pubsub.publisher().publish(request).await?;
            bytes = 0;
        }
    }
    Ok(())
}
