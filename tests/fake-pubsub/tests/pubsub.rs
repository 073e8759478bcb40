//! The fake driven by the real generated googleapis clients over plaintext
//! HTTP/2 on 127.0.0.1.

mod common;

use common::{Env, first_request, payload, start, sub_name, topic_name};
use google_cloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, DeleteSubscriptionRequest, DeleteTopicRequest, GetSubscriptionRequest,
    GetTopicRequest, ListTopicsRequest, ModifyAckDeadlineRequest, PublishRequest, PubsubMessage,
    StreamingPullRequest, Subscription, Topic,
};
use std::collections::{HashMap, HashSet};
use tonic::Code;

/// The error code of a failed RPC, `None` if it succeeded.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|e| e.code())
}

#[tokio::test]
async fn publish_stream_ack() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    // Published before the subscription existed: never delivered.
    let early_topic = env.create_topic("early").await;
    env.publish(&early_topic, "", &["too early"]).await.unwrap();
    let late = env.create_subscription("late", &early_topic, false).await;

    let ids = env.publish(&topic, "", &["a", "b", "c"]).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "distinct ids {ids:?}");

    let mut puller = env.pull_simple(&sub, 10).await;
    let got = puller.take(3).await;
    let payloads: Vec<_> = got.iter().map(payload).collect();
    assert_eq!(payloads, ["a", "b", "c"]);
    for (m, id) in got.iter().zip(&ids) {
        let msg = m.message.as_ref().unwrap();
        assert_eq!(&msg.message_id, id);
        assert!(msg.publish_time.is_some());
        assert_eq!(m.delivery_attempt, 1);
    }

    // Acked on the stream: closing the stream redelivers nothing.
    puller.ack(&got.iter().collect::<Vec<_>>()).await;
    env.until("3 acks", |s| s.acked == 3).await;
    drop(puller);
    env.until("stream closed", |s| s.streams_open == 0).await;
    env.publish(&topic, "", &["marker"]).await.unwrap();
    let mut puller = env.pull_simple(&sub, 10).await;
    let got = puller.take(1).await;
    assert_eq!(payload(&got[0]), "marker");

    // Acked with the unary RPC.
    env.subscriber
        .acknowledge(AcknowledgeRequest {
            subscription: sub.clone(),
            ack_ids: vec![got[0].ack_id.clone()],
        })
        .await
        .unwrap();
    let stats = env.fake.stats();
    assert_eq!(stats.acked, 4);
    assert_eq!(stats.delivered, 4);
    assert_eq!(stats.redelivered, 0);
    assert_eq!(stats.published, 5);
    assert_eq!(stats.published_per_topic[&topic], 4);
    assert_eq!(stats.subscriptions, 2);

    // The subscription made after the early publish got nothing: a message
    // published now is the first it sees.
    env.publish(&early_topic, "", &["on time"]).await.unwrap();
    let mut late_puller = env.pull_simple(&late, 10).await;
    assert_eq!(payload(&late_puller.take(1).await[0]), "on time");
    assert_eq!(env.fake.topics(), [early_topic, topic]);
    assert_eq!(env.fake.subscriptions(), [late, sub_name("sub1")]);
}

#[tokio::test]
async fn unacked_message_is_redelivered_after_its_deadline() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    env.publish(&topic, "", &["m"]).await.unwrap();

    // 1 s: below the real minimum of 10 s, allowed by the fake.
    let mut puller = env.pull_simple(&sub, 1).await;
    let first = puller.take(1).await.remove(0);
    assert_eq!(first.delivery_attempt, 1);
    let again = puller.take(1).await.remove(0);
    assert_eq!(payload(&again), "m");
    assert_eq!(again.delivery_attempt, 2);
    assert_ne!(again.ack_id, first.ack_id);

    // The expired ack ID is ignored; the new one acks.
    let ack = |id: &str| AcknowledgeRequest {
        subscription: sub.clone(),
        ack_ids: vec![id.to_string()],
    };
    env.subscriber
        .acknowledge(ack(&first.ack_id))
        .await
        .unwrap();
    assert_eq!(env.fake.stats().acked, 0);
    env.subscriber
        .acknowledge(ack(&again.ack_id))
        .await
        .unwrap();
    let stats = env.fake.stats();
    assert_eq!((stats.acked, stats.redelivered), (1, 1));
}

#[tokio::test]
async fn modify_ack_deadline_extends_and_nacks() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    env.publish(&topic, "", &["m"]).await.unwrap();
    let mut puller = env.pull_simple(&sub, 10).await;
    let m = puller.take(1).await.remove(0);

    let modack = |secs: i32| ModifyAckDeadlineRequest {
        subscription: sub.clone(),
        ack_ids: vec![m.ack_id.clone()],
        ack_deadline_seconds: secs,
    };
    env.subscriber
        .modify_ack_deadline(modack(60))
        .await
        .unwrap();
    let err = env
        .subscriber
        .modify_ack_deadline(modack(601))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // 0 s: a nack, redelivered at once.
    env.subscriber.modify_ack_deadline(modack(0)).await.unwrap();
    let again = puller.take(1).await.remove(0);
    assert_eq!((payload(&again), again.delivery_attempt), ("m".into(), 2));
    assert_eq!(env.fake.stats().modacks, 2);
}

#[tokio::test]
async fn ordering_keys_keep_publish_order() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, true).await;

    // 150 messages in 10 requests of 15: 100 with key a, 25 with key b, 25
    // without a key.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for batch in 0..10 {
        let messages = (batch * 15..batch * 15 + 15)
            .map(|i| {
                let key = match (i % 3, i % 2) {
                    (0 | 1, _) => "a",
                    (_, 0) => "b",
                    _ => "",
                };
                let data = format!("{key}{i:03}");
                expected
                    .entry(key.to_string())
                    .or_default()
                    .push(data.clone());
                PubsubMessage {
                    data: data.into_bytes(),
                    ordering_key: key.to_string(),
                    ..Default::default()
                }
            })
            .collect();
        let req = PublishRequest {
            topic: topic.clone(),
            messages,
        };
        env.publisher.publish(req).await.unwrap();
    }
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!((total, expected["a"].len()), (150, 100));

    let mut puller = env.pull_simple(&sub, 60).await;
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let mut nacked_once = false;
    let mut received = 0;
    while received < total {
        let batch = puller.next().await.expect("stream");
        // At most one message per ordering key is ever outstanding.
        let mut keys = HashSet::new();
        for m in &batch {
            let key = &m.message.as_ref().unwrap().ordering_key;
            assert!(key.is_empty() || keys.insert(key.clone()), "two of {key}");
        }
        let mut acks = Vec::new();
        for m in &batch {
            let key = m.message.as_ref().unwrap().ordering_key.clone();
            // Nack a040 once: it must come again before a042.
            if payload(m) == "a040" && !nacked_once {
                nacked_once = true;
                puller.nack(&[m]).await;
                continue;
            }
            got.entry(key).or_default().push(payload(m));
            acks.push(m);
            received += 1;
        }
        if !acks.is_empty() {
            puller.ack(&acks).await;
        }
    }
    assert!(nacked_once);
    for (key, want) in &expected {
        if key.is_empty() {
            let mut have = got[key].clone();
            have.sort();
            assert_eq!(&have, want, "unkeyed messages all arrive");
        } else {
            assert_eq!(&got[key], want, "order of key {key}");
        }
    }
}

#[tokio::test]
async fn flow_control_holds_back_messages_until_acked() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    env.publish(&topic, "", &["m1", "m2", "m3"]).await.unwrap();

    let mut limited = env
        .pull(StreamingPullRequest {
            max_outstanding_messages: 1,
            ..first_request(&sub, 60)
        })
        .await
        .unwrap();
    let m1 = limited.next().await.unwrap();
    assert_eq!(m1.iter().map(payload).collect::<Vec<_>>(), ["m1"]);

    // The limited stream holds one: a second stream gets the other two.
    let mut other = env.pull_simple(&sub, 60).await;
    let rest = other.take(2).await;
    assert_eq!(rest.iter().map(payload).collect::<Vec<_>>(), ["m2", "m3"]);
    // Closing it hands them back at once, but the limited stream, still
    // holding m1, gets nothing until it acks; then one at a time.
    drop(other);
    env.until("other stream closed", |s| s.streams_open == 1)
        .await;
    assert_eq!(env.fake.stats().delivered, 3);
    limited.ack(&[&m1[0]]).await;
    let m2 = limited.next().await.unwrap();
    assert_eq!(m2.iter().map(payload).collect::<Vec<_>>(), ["m2"]);
    limited.ack(&[&m2[0]]).await;
    let m3 = limited.next().await.unwrap();
    assert_eq!(m3.iter().map(payload).collect::<Vec<_>>(), ["m3"]);
    limited.ack(&[&m3[0]]).await;
    env.until("all acked", |s| s.acked == 3).await;
}

#[tokio::test]
async fn flow_control_by_bytes() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    let big = "x".repeat(1000);
    env.publish(&topic, "", &[&big, &big, &big]).await.unwrap();

    let mut puller = env
        .pull(StreamingPullRequest {
            max_outstanding_bytes: 1500,
            ..first_request(&sub, 60)
        })
        .await
        .unwrap();
    for _ in 0..3 {
        let batch = puller.next().await.unwrap();
        assert_eq!(batch.len(), 1, "one ~1000-byte message fits in 1500 bytes");
        puller.ack(&batch.iter().collect::<Vec<_>>()).await;
    }
    env.until("all acked", |s| s.acked == 3).await;
}

#[tokio::test]
async fn streams_share_a_subscription() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    let mut p1 = env
        .pull(StreamingPullRequest {
            max_outstanding_messages: 5,
            ..first_request(&sub, 60)
        })
        .await
        .unwrap();
    let mut p2 = env.pull_simple(&sub, 60).await;
    env.until("two streams", |s| s.streams_open == 2).await;

    let payloads: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    env.publish(&topic, "", &refs).await.unwrap();
    let first = p1.take(5).await;
    let second = p2.take(15).await;
    let mut all: Vec<String> = first.iter().chain(&second).map(payload).collect();
    all.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(all, want, "each message to exactly one stream");
    assert_eq!(env.fake.stats().delivered, 20);
}

#[tokio::test]
async fn outage_ends_streams_and_keeps_messages() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    env.publish(&topic, "", &["before"]).await.unwrap();
    let mut puller = env.pull_simple(&sub, 60).await;
    puller.take(1).await; // Not acked.

    env.fake.set_down(true).await;
    assert_eq!(puller.end_status().await.code(), Code::Unavailable);
    assert_eq!(env.fake.stats().streams_open, 0);
    let err = env.publish(&topic, "", &["during"]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let err = env.pull(first_request(&sub, 60)).await.err().unwrap();
    assert_eq!(err.code(), Code::Unavailable);

    env.fake.set_down(false).await;
    env.publish(&topic, "", &["after"]).await.unwrap();
    let mut puller = env.pull_simple(&sub, 60).await;
    let got = puller.take(2).await;
    let seen: Vec<_> = got
        .iter()
        .map(|m| (payload(m), m.delivery_attempt))
        .collect();
    assert_eq!(seen, [("before".into(), 2), ("after".into(), 1)]);
}

#[tokio::test]
async fn lost_publishes_are_never_delivered() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    env.fake.lose_next_publishes(&topic, 1);
    let lost = env.publish(&topic, "", &["lost"]).await.unwrap();
    let kept = env.publish(&topic, "", &["kept"]).await.unwrap();
    assert_eq!(lost.len(), 1, "a lost message still gets an id");

    let mut puller = env.pull_simple(&sub, 60).await;
    let got = puller.take(1).await;
    assert_eq!(payload(&got[0]), "kept");
    assert_eq!(got[0].message.as_ref().unwrap().message_id, kept[0]);
    let stats = env.fake.stats();
    assert_eq!((stats.published, stats.lost), (2, 1));
}

#[tokio::test]
async fn deleting_a_subscription_ends_its_streams() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    let mut puller = env.pull_simple(&sub, 60).await;
    env.until("stream open", |s| s.streams_open == 1).await;

    env.subscriber
        .delete_subscription(DeleteSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .unwrap();
    assert_eq!(puller.end_status().await.code(), Code::NotFound);
    let err = env
        .subscriber
        .get_subscription(GetSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.until("stream closed", |s| s.streams_open == 0).await;
    assert_eq!(env.fake.stats().subscriptions, 0);
}

#[tokio::test]
async fn error_codes() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;

    let new_topic = |name: &str| Topic {
        name: name.to_string(),
        ..Default::default()
    };
    assert_eq!(
        code(env.publisher.create_topic(new_topic(&topic)).await),
        Some(Code::AlreadyExists)
    );
    assert_eq!(
        code(
            env.publisher
                .create_topic(new_topic("projects/p/topics/x"))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(env.publisher.create_topic(new_topic("topics/abc")).await),
        Some(Code::InvalidArgument)
    );
    let get = GetTopicRequest {
        topic: topic_name("nope"),
    };
    assert_eq!(
        code(env.publisher.get_topic(get).await),
        Some(Code::NotFound)
    );
    let got = env
        .publisher
        .get_topic(GetTopicRequest {
            topic: topic.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().name, topic);

    // Publish: unknown topic, empty message, oversized message.
    let err = env
        .publish(&topic_name("nope"), "", &["x"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = env.publish(&topic, "", &[""]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let huge = PublishRequest {
        topic: topic.clone(),
        messages: vec![PubsubMessage {
            data: vec![b'x'; 11 * 1024 * 1024],
            ..Default::default()
        }],
    };
    assert_eq!(
        code(env.publisher.publish(huge).await),
        Some(Code::InvalidArgument)
    );

    // Subscriptions: exists, unknown topic, unknown on stream.
    let new_sub = |name: &str, topic: &str| Subscription {
        name: name.to_string(),
        topic: topic.to_string(),
        ..Default::default()
    };
    assert_eq!(
        code(
            env.subscriber
                .create_subscription(new_sub(&sub, &topic))
                .await
        ),
        Some(Code::AlreadyExists)
    );
    assert_eq!(
        code(
            env.subscriber
                .create_subscription(new_sub(&sub_name("sub2"), &topic_name("nope")))
                .await
        ),
        Some(Code::NotFound)
    );
    let err = env
        .pull(first_request(&sub_name("nope"), 10))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::NotFound);
    let err = env.pull(first_request(&sub, 601)).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Defaults filled in as the real service does.
    let created = env
        .subscriber
        .get_subscription(GetSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.ack_deadline_seconds, 10);
    assert!(created.expiration_policy.is_some());

    // Deleting the topic detaches its subscriptions.
    env.publisher
        .delete_topic(DeleteTopicRequest {
            topic: topic.clone(),
        })
        .await
        .unwrap();
    let detached = env
        .subscriber
        .get_subscription(GetSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detached.topic, "_deleted-topic_");

    assert_eq!(
        code(
            env.publisher
                .list_topics(ListTopicsRequest::default())
                .await
        ),
        Some(Code::Unimplemented)
    );
}

#[tokio::test]
async fn works_on_a_multi_thread_runtime_too() {
    // The fake's tasks run wherever the runtime puts them.
    let handle = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = std::thread::spawn(move || {
        handle.block_on(async {
            let mut env: Env = start().await;
            let topic = env.create_topic("topic1").await;
            let sub = env.create_subscription("sub1", &topic, false).await;
            let mut puller = env.pull_simple(&sub, 10).await;
            env.until("stream open", |s| s.streams_open == 1).await;
            env.publish(&topic, "", &["m"]).await.unwrap();
            payload(&puller.take(1).await[0])
        })
    })
    .join()
    .unwrap();
    assert_eq!(result, "m");
}

#[tokio::test]
async fn a_half_closed_stream_keeps_delivering() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    // The request side ends right after the first request.
    let first = tokio_stream::iter(vec![first_request(&sub, 10)]);
    let mut responses = env
        .subscriber
        .streaming_pull(first)
        .await
        .unwrap()
        .into_inner();
    env.until("stream open", |s| s.streams_open == 1).await;
    env.publish(&topic, "", &["m"]).await.unwrap();
    let resp = tokio::time::timeout(common::WAIT, responses.message())
        .await
        .expect("no response")
        .unwrap()
        .unwrap();
    assert_eq!(payload(&resp.received_messages[0]), "m");
}

#[tokio::test]
async fn dropping_the_fake_ends_its_streams() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let sub = env.create_subscription("sub1", &topic, false).await;
    let mut puller = env.pull_simple(&sub, 10).await;
    env.until("stream open", |s| s.streams_open == 1).await;
    let Env {
        fake,
        mut publisher,
        ..
    } = env;
    drop(fake);
    assert_eq!(puller.end_status().await.code(), Code::Unavailable);
    let err = publisher
        .get_topic(GetTopicRequest { topic })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn filters_select_messages_by_attribute() {
    let mut env = start().await;
    let topic = env.create_topic("topic1").await;
    let create = |id: &str, filter: &str| Subscription {
        name: sub_name(id),
        topic: topic.clone(),
        filter: filter.to_string(),
        ..Default::default()
    };
    let bad = env
        .subscriber
        .create_subscription(create("sub-bad", "attributes.cluster = eu"))
        .await;
    let bad = bad.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("filter"), "{bad:?}");
    env.subscriber
        .create_subscription(create("sub-eu", r#"attributes."cluster" = "eu""#))
        .await
        .unwrap();

    let message = |cluster: &str, data: &str| PubsubMessage {
        data: data.as_bytes().to_vec(),
        attributes: [("cluster".to_string(), cluster.to_string())].into(),
        ..Default::default()
    };
    let req = PublishRequest {
        topic: topic.clone(),
        messages: vec![message("us", "for us"), message("eu", "for eu")],
    };
    env.publisher.publish(req).await.unwrap();
    let mut puller = env.pull_simple(&sub_name("sub-eu"), 10).await;
    let got = puller.take(1).await;
    assert_eq!(payload(&got[0]), "for eu");
}
