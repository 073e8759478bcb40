//! The gRPC services: the generated `Publisher` and `Subscriber` server
//! traits, implemented over the shared [`State`](crate::state::State).
//! RPCs the fake does not model answer UNIMPLEMENTED.

use crate::Shared;
use crate::generated::publisher_server::Publisher;
use crate::generated::subscriber_server::Subscriber;
use crate::state::State;
use crate::stream;
use google_cloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, CreateSnapshotRequest, DeleteSnapshotRequest, DeleteSubscriptionRequest,
    DeleteTopicRequest, DetachSubscriptionRequest, DetachSubscriptionResponse, GetSnapshotRequest,
    GetSubscriptionRequest, GetTopicRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    ListSubscriptionsRequest, ListSubscriptionsResponse, ListTopicSnapshotsRequest,
    ListTopicSnapshotsResponse, ListTopicSubscriptionsRequest, ListTopicSubscriptionsResponse,
    ListTopicsRequest, ListTopicsResponse, ModifyAckDeadlineRequest, ModifyPushConfigRequest,
    PublishRequest, PublishResponse, PullRequest, PullResponse, SeekRequest, SeekResponse,
    Snapshot, StreamingPullRequest, StreamingPullResponse, Subscription, Topic,
    UpdateSnapshotRequest, UpdateSubscriptionRequest, UpdateTopicRequest,
};
use prost::Message as _;
use std::sync::{Arc, MutexGuard};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses buffered per StreamingPull stream before the server waits for
/// the client to read.
const STREAM_BUFFER: usize = 4;

#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) shared: Arc<Shared>,
}

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented<T>(rpc: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "fake-pubsub does not implement {rpc}"
    )))
}

impl Service {
    /// The state, or UNAVAILABLE during an outage.
    fn up(&self) -> Result<MutexGuard<'_, State>, Status> {
        let state = self.shared.lock();
        state.check_up()?;
        Ok(state)
    }
}

#[tonic::async_trait]
impl Publisher for Service {
    async fn create_topic(&self, request: Request<Topic>) -> Reply<Topic> {
        let topic = self.up()?.create_topic(request.into_inner())?;
        Ok(Response::new(topic))
    }

    async fn update_topic(&self, _: Request<UpdateTopicRequest>) -> Reply<Topic> {
        unimplemented("UpdateTopic")
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Reply<PublishResponse> {
        let req = request.into_inner();
        let request_bytes = req.encoded_len();
        let message_ids = self
            .up()?
            .publish(&req.topic, req.messages, request_bytes)?;
        Ok(Response::new(PublishResponse { message_ids }))
    }

    async fn get_topic(&self, request: Request<GetTopicRequest>) -> Reply<Topic> {
        let topic = self.up()?.get_topic(&request.get_ref().topic)?;
        Ok(Response::new(topic))
    }

    async fn list_topics(&self, _: Request<ListTopicsRequest>) -> Reply<ListTopicsResponse> {
        unimplemented("ListTopics")
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<ListTopicSubscriptionsRequest>,
    ) -> Reply<ListTopicSubscriptionsResponse> {
        unimplemented("ListTopicSubscriptions")
    }

    async fn list_topic_snapshots(
        &self,
        _: Request<ListTopicSnapshotsRequest>,
    ) -> Reply<ListTopicSnapshotsResponse> {
        unimplemented("ListTopicSnapshots")
    }

    async fn delete_topic(&self, request: Request<DeleteTopicRequest>) -> Reply<()> {
        self.up()?.delete_topic(&request.get_ref().topic)?;
        Ok(Response::new(()))
    }

    async fn detach_subscription(
        &self,
        _: Request<DetachSubscriptionRequest>,
    ) -> Reply<DetachSubscriptionResponse> {
        unimplemented("DetachSubscription")
    }
}

#[tonic::async_trait]
impl Subscriber for Service {
    async fn create_subscription(&self, request: Request<Subscription>) -> Reply<Subscription> {
        let sub = self.up()?.create_subscription(request.into_inner())?;
        Ok(Response::new(sub))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Reply<Subscription> {
        let sub = self
            .up()?
            .get_subscription(&request.get_ref().subscription)?;
        Ok(Response::new(sub))
    }

    async fn update_subscription(
        &self,
        _: Request<UpdateSubscriptionRequest>,
    ) -> Reply<Subscription> {
        unimplemented("UpdateSubscription")
    }

    async fn list_subscriptions(
        &self,
        _: Request<ListSubscriptionsRequest>,
    ) -> Reply<ListSubscriptionsResponse> {
        unimplemented("ListSubscriptions")
    }

    async fn delete_subscription(&self, request: Request<DeleteSubscriptionRequest>) -> Reply<()> {
        self.up()?
            .delete_subscription(&request.get_ref().subscription)?;
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(&self, request: Request<ModifyAckDeadlineRequest>) -> Reply<()> {
        let req = request.get_ref();
        if req.ack_ids.is_empty() {
            return Err(Status::invalid_argument("No ack IDs given."));
        }
        self.up()?.modify_ack_deadline(
            &req.subscription,
            &req.ack_ids,
            req.ack_deadline_seconds,
            Instant::now(),
        )?;
        Ok(Response::new(()))
    }

    async fn acknowledge(&self, request: Request<AcknowledgeRequest>) -> Reply<()> {
        let req = request.get_ref();
        if req.ack_ids.is_empty() {
            return Err(Status::invalid_argument("No ack IDs given."));
        }
        self.up()?
            .acknowledge(&req.subscription, &req.ack_ids, Instant::now())?;
        Ok(Response::new(()))
    }

    async fn pull(&self, _: Request<PullRequest>) -> Reply<PullResponse> {
        unimplemented("Pull")
    }

    type StreamingPullStream = ReceiverStream<Result<StreamingPullResponse, Status>>;

    async fn streaming_pull(
        &self,
        request: Request<Streaming<StreamingPullRequest>>,
    ) -> Reply<Self::StreamingPullStream> {
        drop(self.up()?);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("The StreamingPull stream ended before its first request.")
        })?;
        let opened = {
            let mut state = self.up()?;
            let opened = state.open_stream(&first)?;
            // The first request may carry acks and modacks too.
            if let Err(status) = state.apply_stream_request(opened.id, &first, Instant::now()) {
                state.close_stream(opened.id);
                return Err(status);
            }
            opened
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream::run(self.shared.clone(), opened, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn modify_push_config(&self, _: Request<ModifyPushConfigRequest>) -> Reply<()> {
        unimplemented("ModifyPushConfig")
    }

    async fn get_snapshot(&self, _: Request<GetSnapshotRequest>) -> Reply<Snapshot> {
        unimplemented("GetSnapshot")
    }

    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Reply<ListSnapshotsResponse> {
        unimplemented("ListSnapshots")
    }

    async fn create_snapshot(&self, _: Request<CreateSnapshotRequest>) -> Reply<Snapshot> {
        unimplemented("CreateSnapshot")
    }

    async fn update_snapshot(&self, _: Request<UpdateSnapshotRequest>) -> Reply<Snapshot> {
        unimplemented("UpdateSnapshot")
    }

    async fn delete_snapshot(&self, _: Request<DeleteSnapshotRequest>) -> Reply<()> {
        unimplemented("DeleteSnapshot")
    }

    async fn seek(&self, _: Request<SeekRequest>) -> Reply<SeekResponse> {
        unimplemented("Seek")
    }
}
