//! Helpers for driving the fake with the real googleapis clients.

#![allow(dead_code)] // Each test file uses its own subset.

use fake_pubsub::FakePubSub;
use google_cloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use google_cloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient;
use google_cloud_googleapis::pubsub::v1::{
    PublishRequest, PubsubMessage, ReceivedMessage, StreamingPullRequest, StreamingPullResponse,
    Subscription, Topic,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// A guard against hangs only: every wait in these tests normally ends in
/// milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

pub const PROJECT: &str = "projects/test";

pub fn topic_name(id: &str) -> String {
    format!("{PROJECT}/topics/{id}")
}

pub fn sub_name(id: &str) -> String {
    format!("{PROJECT}/subscriptions/{id}")
}

/// The fake and real clients on one plaintext HTTP/2 channel.
pub struct Env {
    pub fake: FakePubSub,
    pub publisher: PublisherClient<Channel>,
    pub subscriber: SubscriberClient<Channel>,
}

pub async fn start() -> Env {
    let fake = FakePubSub::start().await.expect("start fake");
    let channel = Channel::from_shared(format!("http://{}", fake.emulator_host()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    Env {
        fake,
        publisher: PublisherClient::new(channel.clone()),
        subscriber: SubscriberClient::new(channel),
    }
}

impl Env {
    pub async fn create_topic(&mut self, id: &str) -> String {
        let name = topic_name(id);
        self.publisher
            .create_topic(Topic {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .expect("create topic");
        name
    }

    pub async fn create_subscription(&mut self, id: &str, topic: &str, ordered: bool) -> String {
        let name = sub_name(id);
        self.subscriber
            .create_subscription(Subscription {
                name: name.clone(),
                topic: topic.to_string(),
                enable_message_ordering: ordered,
                ..Default::default()
            })
            .await
            .expect("create subscription");
        name
    }

    /// Publishes messages with these payloads and ordering key; returns
    /// their message IDs.
    pub async fn publish(
        &mut self,
        topic: &str,
        key: &str,
        payloads: &[&str],
    ) -> Result<Vec<String>, Status> {
        let messages = payloads
            .iter()
            .map(|p| PubsubMessage {
                data: p.as_bytes().to_vec(),
                ordering_key: key.to_string(),
                ..Default::default()
            })
            .collect();
        let req = PublishRequest {
            topic: topic.to_string(),
            messages,
        };
        Ok(self.publisher.publish(req).await?.into_inner().message_ids)
    }

    /// Opens a StreamingPull stream with this first request.
    pub async fn pull(&mut self, first: StreamingPullRequest) -> Result<Puller, Status> {
        let (requests, rx) = mpsc::channel(16);
        requests.send(first).await.expect("queue first request");
        let responses = self
            .subscriber
            .streaming_pull(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Puller {
            requests,
            responses,
        })
    }

    /// Opens a stream on `subscription` with this ack deadline and no flow
    /// control.
    pub async fn pull_simple(&mut self, subscription: &str, ack_deadline_secs: i32) -> Puller {
        self.pull(first_request(subscription, ack_deadline_secs))
            .await
            .expect("open stream")
    }

    /// Polls the fake's stats until `cond` holds (or fails after [`WAIT`]).
    pub async fn until(&self, what: &str, cond: impl Fn(&fake_pubsub::Stats) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond(&self.fake.stats()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.fake.stats()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

pub fn first_request(subscription: &str, ack_deadline_secs: i32) -> StreamingPullRequest {
    StreamingPullRequest {
        subscription: subscription.to_string(),
        stream_ack_deadline_seconds: ack_deadline_secs,
        ..Default::default()
    }
}

/// One StreamingPull stream: requests in, responses out.
pub struct Puller {
    pub requests: mpsc::Sender<StreamingPullRequest>,
    pub responses: Streaming<StreamingPullResponse>,
}

impl Puller {
    /// The next response, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Vec<ReceivedMessage>, Status> {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(resp))) => Ok(resp.received_messages),
            Ok(Ok(None)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    /// Exactly `n` messages, over as many responses as it takes.
    pub async fn take(&mut self, n: usize) -> Vec<ReceivedMessage> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.next().await.expect("stream failed"));
        }
        assert_eq!(got.len(), n, "more messages than expected");
        got
    }

    /// The status the stream ends with, skipping responses still buffered.
    pub async fn end_status(&mut self) -> Status {
        loop {
            if let Err(status) = self.next().await {
                return status;
            }
        }
    }

    pub async fn ack(&self, ids: &[&ReceivedMessage]) {
        let req = StreamingPullRequest {
            ack_ids: ids.iter().map(|m| m.ack_id.clone()).collect(),
            ..Default::default()
        };
        self.requests.send(req).await.expect("send ack");
    }

    pub async fn nack(&self, ids: &[&ReceivedMessage]) {
        let req = StreamingPullRequest {
            modify_deadline_ack_ids: ids.iter().map(|m| m.ack_id.clone()).collect(),
            modify_deadline_seconds: vec![0; ids.len()],
            ..Default::default()
        };
        self.requests.send(req).await.expect("send nack");
    }
}

/// The payload of a received message, as text.
pub fn payload(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.message.as_ref().expect("message").data).into_owned()
}
