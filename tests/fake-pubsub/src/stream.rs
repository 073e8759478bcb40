//! The task behind one StreamingPull stream: it pushes messages as soon as
//! they are deliverable, applies the acks and modacks the client streams in,
//! and hands the stream's unacked messages back when it ends.

use crate::Shared;
use crate::state::{OpenedStream, Take};
use google_cloud_googleapis::pubsub::v1::{StreamingPullRequest, StreamingPullResponse};
use std::pin::pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tonic::{Status, Streaming};

pub(crate) type Outbound = mpsc::Sender<Result<StreamingPullResponse, Status>>;

/// Serves the stream until it ends, then unregisters it and sends the final
/// status, if any (none when the client went away).
pub(crate) async fn run(
    shared: Arc<Shared>,
    opened: OpenedStream,
    inbound: Streaming<StreamingPullRequest>,
    tx: Outbound,
) {
    let id = opened.id;
    let end = serve(&shared, opened, inbound, &tx).await;
    // Unregister first, so the stream's messages go to other streams and
    // `set_down` sees it closed even if the client never reads the status.
    shared.lock().close_stream(id);
    shared.streams_changed.notify_waiters();
    if let Some(status) = end {
        tokio::select! {
            _ = tx.send(Err(status)) => {}
            () = tx.closed() => {}
        }
    }
}

/// The delivery loop. Returns the status to end the stream with, or `None`
/// when the client is gone.
async fn serve(
    shared: &Shared,
    opened: OpenedStream,
    mut inbound: Streaming<StreamingPullRequest>,
    tx: &Outbound,
) -> Option<Status> {
    let OpenedStream {
        id,
        notify,
        mut kill,
    } = opened;
    // Room for one response in the outbound channel, reserved before taking
    // messages so that taken messages are always sent.
    let mut permit = None;
    let mut inbound_open = true;
    loop {
        // Registered before looking at the state, so no wake-up is lost.
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();

        if permit.is_none() {
            permit = tx.try_reserve().ok();
        }
        let mut wake_at = None;
        if let Some(p) = permit.take() {
            let take = shared.lock().take_batch(id, Instant::now());
            match take {
                Take::Batch(received_messages) => {
                    p.send(Ok(StreamingPullResponse {
                        received_messages,
                        ..Default::default()
                    }));
                    continue;
                }
                Take::Idle(next_deadline) => {
                    permit = Some(p);
                    wake_at = next_deadline;
                }
                Take::Gone(status) => return Some(status),
            }
        }

        tokio::select! {
            biased;
            status = &mut kill => {
                return Some(status.unwrap_or_else(|_| Status::unavailable("fake-pubsub stopped")));
            }
            // Requests before cancellation: acks the client sent are kept.
            req = inbound.message(), if inbound_open => match req {
                Ok(Some(req)) => {
                    let applied = shared.lock().apply_stream_request(id, &req, Instant::now());
                    if let Err(status) = applied {
                        return Some(status);
                    }
                }
                // The client half-closed: keep delivering until it cancels.
                Ok(None) => inbound_open = false,
                // Reset or broken connection: the client is gone.
                Err(_) => return None,
            },
            () = tx.closed() => return None,
            () = &mut notified => {}
            // An ack deadline passes: expired messages get redelivered.
            () = sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
            // The client read a response: there is room again.
            p = tx.reserve(), if permit.is_none() => match p {
                Ok(p) => permit = Some(p),
                Err(_) => return None,
            },
        }
    }
}
