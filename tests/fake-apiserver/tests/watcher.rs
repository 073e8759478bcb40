//! kube_runtime's `watcher` against the fake: initial list, live events,
//! relist after compaction, outages, selectors, streaming lists.

mod common;

use common::{Mirror, client, secret, service, within};
use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn watcher_lists_then_follows_changes() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(service("a", "one", json!({})));
    srv.apply(service("b", "two", json!({})));
    let api: Api<Service> = Api::all(client(&srv).await);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut m = Mirror::default();

    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    assert_eq!(
        m.log,
        ["Init", "InitApply(a/one)", "InitApply(b/two)", "InitDone"]
    );

    srv.apply(service("a", "three", json!({})));
    m.sync_until(&mut stream, "Apply(a/three)", |m| {
        m.logged("Apply(a/three)")
    })
    .await;
    let rv = srv.apply(service("a", "one", json!({"changed": "yes"})));
    m.sync_until(&mut stream, "modified a/one", |m| {
        m.objects["a/one"] == rv.to_string()
    })
    .await;
    assert!(srv.delete("v1", "Service", Some("b"), "two"));
    m.sync_until(&mut stream, "Delete(b/two)", |m| m.logged("Delete(b/two)"))
        .await;

    assert_eq!(m.names(), ["a/one", "a/three"]);
    assert_eq!(
        m.log[4..],
        ["Apply(a/three)", "Apply(a/one)", "Delete(b/two)"]
    );
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let stats = srv.stats();
    assert_eq!((stats.lists, stats.watches, stats.open_watches), (1, 1, 1));
}

#[tokio::test]
async fn watcher_relists_after_compaction() {
    let srv = FakeApiServer::start().await.unwrap();
    // No bookmarks in the way: the watcher's resourceVersion is that of its last event.
    srv.set_bookmark_interval(Duration::from_secs(3600));
    srv.apply_many(vec![
        service("ns", "a", json!({})),
        service("ns", "b", json!({})),
    ]);
    let api: Api<Service> = Api::namespaced(client(&srv).await, "ns");
    let mut stream = watcher(api, watcher::Config::default().page_size(1)).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    srv.apply(service("ns", "b", json!({"v": "2"})));
    m.sync_until(&mut stream, "the watch to run", |m| m.logged("Apply(ns/b)"))
        .await;

    // While the watcher is not being polled: change services, then move the
    // global resourceVersion past them with a write it does not watch, compact
    // everything, and cut the watch. Its resume point is now too old.
    srv.apply(service("ns", "c", json!({})));
    srv.delete("v1", "Service", Some("ns"), "a");
    srv.apply(secret("ns", "s"));
    srv.compact();
    srv.drop_watches();

    m.sync_until(&mut stream, "relist", |m| m.inits() == 2)
        .await;
    assert_eq!(m.names(), ["ns/b", "ns/c"]);
    assert!(
        m.errors
            .iter()
            .any(|e| e.contains("too old resource version")),
        "expected a 410 from the re-watch: {:?}",
        m.errors
    );
    assert!(srv.stats().gone >= 1);

    // And it keeps following changes afterwards.
    srv.apply(service("ns", "d", json!({})));
    m.sync_until(&mut stream, "Apply(ns/d)", |m| m.logged("Apply(ns/d)"))
        .await;
    assert_eq!(m.names(), ["ns/b", "ns/c", "ns/d"]);
}

#[tokio::test]
async fn watcher_resumes_without_relist_after_a_dropped_watch() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(service("ns", "a", json!({})));
    let api: Api<Service> = Api::all(client(&srv).await);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    // The watch request goes out after InitDone; wait until it runs.
    srv.apply(service("ns", "b", json!({})));
    m.sync_until(&mut stream, "Apply(ns/b)", |m| m.logged("Apply(ns/b)"))
        .await;
    assert_eq!(srv.stats().watches, 1);

    srv.drop_watches();
    srv.apply(service("ns", "c", json!({})));
    m.sync_until(&mut stream, "Apply(ns/c)", |m| m.logged("Apply(ns/c)"))
        .await;
    assert_eq!(
        m.inits(),
        1,
        "resumed from its resourceVersion: {:?}",
        m.log
    );
    assert_eq!(srv.stats().lists, 1);
    assert_eq!(srv.stats().watches, 2);
}

#[tokio::test]
async fn watcher_survives_an_outage() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(service("ns", "a", json!({})));
    let api: Api<Service> = Api::all(client(&srv).await);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    srv.apply(service("ns", "a", json!({"v": "2"})));
    m.sync_until(&mut stream, "the watch to run", |m| m.logged("Apply(ns/a)"))
        .await;

    srv.set_down(true).await;
    let refused = tokio::net::TcpStream::connect(srv.addr()).await;
    assert!(
        refused.is_err(),
        "the port must refuse connections while down"
    );
    m.sync_until(&mut stream, "an error while down", |m| !m.errors.is_empty())
        .await;

    // The world changes during the outage, and history is compacted.
    srv.apply(service("ns", "b", json!({})));
    srv.delete("v1", "Service", Some("ns"), "a");
    srv.compact();
    srv.set_down(false).await;

    m.sync_until(&mut stream, "relist after the outage", |m| m.inits() == 2)
        .await;
    assert_eq!(m.names(), ["ns/b"]);
    srv.apply(service("ns", "c", json!({})));
    m.sync_until(&mut stream, "Apply(ns/c)", |m| m.logged("Apply(ns/c)"))
        .await;
}

#[tokio::test]
async fn watcher_with_label_selector() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply_many(vec![
        service("ns", "web", json!({"app": "web"})),
        service("ns", "db", json!({"app": "db"})),
        service("ns", "none", json!({})),
    ]);
    let api: Api<Service> = Api::all(client(&srv).await);
    let config = watcher::Config::default().labels("app in (web, cache)");
    let mut stream = watcher(api, config).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    assert_eq!(m.names(), ["ns/web"]);

    // Moving out of the selector is a DELETED, moving in an ADDED.
    srv.apply(service("ns", "web", json!({"app": "other"})));
    m.sync_until(&mut stream, "Delete(ns/web)", |m| {
        m.logged("Delete(ns/web)")
    })
    .await;
    srv.apply(service("ns", "db", json!({"app": "cache"})));
    m.sync_until(&mut stream, "Apply(ns/db)", |m| m.logged("Apply(ns/db)"))
        .await;
    srv.apply(service("ns", "none", json!({"unrelated": "x"})));
    srv.apply(service("ns", "late", json!({"app": "web"})));
    m.sync_until(&mut stream, "Apply(ns/late)", |m| {
        m.logged("Apply(ns/late)")
    })
    .await;
    assert_eq!(m.names(), ["ns/db", "ns/late"]);
    assert!(!m.log.iter().any(|e| e.contains("ns/none")), "{:?}", m.log);
}

#[tokio::test]
async fn watcher_with_streaming_lists() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply_many(vec![
        service("a", "one", json!({})),
        service("b", "two", json!({})),
    ]);
    let api: Api<Service> = Api::all(client(&srv).await);
    let mut stream = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial events", |m| m.inits() == 1)
        .await;
    assert_eq!(
        m.log,
        ["Init", "InitApply(a/one)", "InitApply(b/two)", "InitDone"]
    );

    srv.apply(service("a", "three", json!({})));
    srv.delete("v1", "Service", Some("a"), "one");
    m.sync_until(&mut stream, "Delete(a/one)", |m| m.logged("Delete(a/one)"))
        .await;
    assert_eq!(m.names(), ["a/three", "b/two"]);
    assert_eq!(srv.stats().lists, 0, "streaming lists need no LIST");

    // A cut watch resumes from the bookmark's resourceVersion, without initial events.
    srv.drop_watches();
    srv.apply(service("b", "four", json!({})));
    m.sync_until(&mut stream, "Apply(b/four)", |m| m.logged("Apply(b/four)"))
        .await;
    assert_eq!(m.inits(), 1);
}

#[tokio::test]
async fn metadata_watcher() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(service("ns", "a", json!({"app": "web"})));
    // `Api<PartialObjectMeta<K>>` asks for `Accept: ...;as=PartialObjectMetadata`.
    let api: Api<PartialObjectMeta<Service>> = Api::all(client(&srv).await);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;
    srv.apply(service("ns", "b", json!({})));
    m.sync_until(&mut stream, "Apply(ns/b)", |m| m.logged("Apply(ns/b)"))
        .await;
    assert_eq!(m.names(), ["ns/a", "ns/b"]);
}

#[tokio::test]
async fn watchers_share_the_server() {
    let srv = FakeApiServer::start().await.unwrap();
    let client = client(&srv).await;
    let mut streams: Vec<_> = (0..20)
        .map(|_| {
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            )
            .boxed()
        })
        .collect();
    let mut mirrors: Vec<Mirror> = (0..20).map(|_| Mirror::default()).collect();
    for (m, s) in mirrors.iter_mut().zip(&mut streams) {
        m.sync_until(s, "initial list", |m| m.inits() == 1).await;
    }
    let objs = (0..200)
        .map(|i| service("ns", &format!("s{i:03}"), json!({})))
        .collect();
    srv.apply_many(objs);
    for (m, s) in mirrors.iter_mut().zip(&mut streams) {
        m.sync_until(s, "200 objects", |m| m.objects.len() == 200)
            .await;
    }
    assert_eq!(srv.stats().open_watches, 20);
    drop(streams);
    within("watches to close", async {
        while srv.stats().open_watches > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_stalled_watch_does_not_block_others() {
    let srv = FakeApiServer::start().await.unwrap();
    let client = client(&srv).await;
    // Opened and never read: its socket buffers fill up and stay full.
    let stalled = Api::<Service>::all(client.clone())
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap();
    let mut stream = watcher(Api::<Service>::all(client), watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    m.sync_until(&mut stream, "initial list", |m| m.inits() == 1)
        .await;

    // ~24 MB of events: far more than loopback socket buffers hold.
    let padding = "x".repeat(8000);
    for batch in 0..10 {
        let objs = (0..300)
            .map(|i| {
                let mut svc = service("ns", &format!("s{batch}-{i:03}"), json!({}));
                svc["metadata"]["annotations"] = json!({ "pad": padding });
                svc
            })
            .collect();
        srv.apply_many(objs);
    }
    m.sync_until(&mut stream, "3000 objects", |m| m.objects.len() == 3000)
        .await;
    assert_eq!(srv.stats().open_watches, 2);
    drop(stalled);
}
