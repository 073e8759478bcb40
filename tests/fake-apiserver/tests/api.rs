//! The kube client's plain API calls against the fake: lists and pagination,
//! raw watches, bookmarks, errors, writes, discovery.

mod common;

use common::{client, secret, service, within};
use fake_apiserver::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::{Error, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};

fn api_status(err: Error) -> (u16, String) {
    match err {
        Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn list_paginates_over_a_consistent_snapshot() {
    let srv = FakeApiServer::start().await.unwrap();
    for (ns, name) in [("b", "x"), ("a", "z"), ("a", "y"), ("c", "w"), ("b", "v")] {
        srv.apply(service(ns, name, json!({})));
    }
    let api: Api<Service> = Api::all(client(&srv).await);

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let snapshot_rv = first.metadata.resource_version.clone().unwrap();
    // Writes between pages do not show up in the remaining pages.
    srv.apply(service("a", "zz", json!({})));
    srv.delete("v1", "Service", Some("c"), "w");

    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any()))
        .collect();
    let mut token = first.metadata.continue_.clone();
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(snapshot_rv.as_str())
        );
        names.extend(
            page.items
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any())),
        );
        token = page.metadata.continue_.clone();
        pages += 1;
    }
    assert_eq!(names, ["a/y", "a/z", "b/v", "b/x", "c/w"]);
    assert_eq!(pages, 3);
    assert_eq!(srv.stats().lists, 3);
    assert_eq!(
        first.items[0]
            .metadata
            .resource_version
            .as_deref()
            .map(|rv| !rv.is_empty()),
        Some(true)
    );

    // A fresh list sees the writes; a namespaced one only its namespace.
    let now = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(now.items.len(), 5);
    let in_a: Api<Service> = Api::namespaced(client(&srv).await, "a");
    let names: Vec<_> = in_a
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(names, ["y", "z", "zz"]);

    // An exact read at the old version is the old state.
    let exact = ListParams::default()
        .at(&snapshot_rv)
        .matching(VersionMatch::Exact);
    assert_eq!(api.list(&exact).await.unwrap().items.len(), 5);
    let names: Vec<_> = api
        .list(&exact)
        .await
        .unwrap()
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert!(names.contains(&"w".to_string()) && !names.contains(&"zz".to_string()));

    // After compaction the old token and the old version are gone.
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    srv.apply(secret("a", "later"));
    srv.compact();
    let t = first.metadata.continue_.unwrap();
    let err = api
        .list(&ListParams::default().limit(2).continue_token(&t))
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (410, "Expired".to_string()));
    let err = api.list(&exact).await.unwrap_err();
    assert_eq!(api_status(err), (410, "Expired".to_string()));
    // Not-older-than reads of the current state still work.
    let any = ListParams::default()
        .at("0")
        .matching(VersionMatch::NotOlderThan);
    assert_eq!(api.list(&any).await.unwrap().items.len(), 5);
    assert_eq!(srv.stats().gone, 2);
}

#[tokio::test]
async fn list_selectors() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply_many(vec![
        service("ns", "web", json!({"app": "web", "tier": "front"})),
        service("ns", "db", json!({"app": "db", "tier": "back"})),
        service("ns", "bare", json!({})),
    ]);
    let api: Api<Service> = Api::all(client(&srv).await);
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            api.list(&lp)
                .await
                .unwrap()
                .iter()
                .map(|s| s.name_any())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names(ListParams::default().labels("app=web")).await,
        ["web"]
    );
    assert_eq!(
        names(ListParams::default().labels("app!=web")).await,
        ["bare", "db"]
    );
    assert_eq!(
        names(ListParams::default().labels("app")).await,
        ["db", "web"]
    );
    assert_eq!(names(ListParams::default().labels("!app")).await, ["bare"]);
    assert_eq!(
        names(ListParams::default().labels("tier in (front,back),app notin (db)")).await,
        ["web"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=db")).await,
        ["db"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.namespace=ns,metadata.name!=db")).await,
        ["bare", "web"]
    );

    let err = api
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 400);
    let err = api
        .list(&ListParams::default().fields("spec.selector=x"))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 400);
}

#[tokio::test]
async fn raw_watch_protocol() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.set_bookmark_interval(Duration::from_millis(100));
    srv.apply(service("ns", "a", json!({})));
    let api: Api<Service> = Api::all(client(&srv).await);

    // resourceVersion "0": the current state as ADDED, then live events and bookmarks.
    let mut events = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match within("ADDED", events.try_next()).await.unwrap() {
        Some(WatchEvent::Added(s)) => assert_eq!(s.name_any(), "a"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let rv = srv.apply(secret("ns", "unrelated"));
    loop {
        match within("BOOKMARK", events.try_next()).await.unwrap() {
            Some(WatchEvent::Bookmark(b)) if b.metadata.resource_version == rv.to_string() => {
                assert_eq!(b.types.kind, "Service");
                assert_eq!(b.types.api_version, "v1");
                break;
            }
            Some(WatchEvent::Bookmark(_)) => continue,
            other => panic!("expected a BOOKMARK, got {other:?}"),
        }
    }

    // Resume from an old resourceVersion: the history is replayed.
    let start = srv.resource_version();
    srv.apply(service("ns", "b", json!({})));
    srv.delete("v1", "Service", Some("ns"), "a");
    let replay = api
        .watch(
            &WatchParams::default().disable_bookmarks(),
            &start.to_string(),
        )
        .await
        .unwrap()
        .take(2)
        .map_ok(|e| match e {
            WatchEvent::Added(s) => format!("ADDED {}", s.name_any()),
            WatchEvent::Modified(s) => format!("MODIFIED {}", s.name_any()),
            WatchEvent::Deleted(s) => format!("DELETED {}", s.name_any()),
            other => format!("{other:?}"),
        })
        .try_collect::<Vec<_>>();
    let replay = within("the replay", replay).await.unwrap();
    assert_eq!(replay, ["ADDED b", "DELETED a"]);

    // timeoutSeconds ends the stream cleanly.
    let began = Instant::now();
    let quiet = api
        .watch(
            &WatchParams::default().timeout(1),
            &srv.resource_version().to_string(),
        )
        .await
        .unwrap();
    let rest: Vec<_> = within("the watch timeout", quiet.try_collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(rest.iter().all(|e| matches!(e, WatchEvent::Bookmark(_))));
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );

    // A compacted resourceVersion is a single ERROR 410 event.
    srv.compact();
    let gone: Vec<_> = api
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match gone.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected one ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn endpointslices_and_metadata_only() {
    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }));
    let client = client(&srv).await;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "ns");
    let list = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].endpoints[0].addresses, ["10.0.0.1"]);
    let one = api.get("web-abc").await.unwrap();
    assert_eq!(one.address_type, "IPv4");
    let meta = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items[0].name_any(), "web-abc");
    let err = api.get("nope").await.unwrap_err();
    assert_eq!(api_status(err), (404, "NotFound".to_string()));
}

#[tokio::test]
async fn lease_writes_with_optimistic_concurrency() {
    let srv = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&srv).await, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "meshdns"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("kube-system"));
    let err = api
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "AlreadyExists".to_string()));

    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let replaced = api
        .replace("meshdns", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), created.resource_version());
    assert_eq!(replaced.uid(), created.uid());
    // A replace that changes nothing writes nothing.
    let same = api
        .replace("meshdns", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), replaced.resource_version());
    // Replacing with the stale resourceVersion loses the race.
    let err = api
        .replace("meshdns", &PostParams::default(), &mine)
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "Conflict".to_string()));

    let patch = json!({"spec": {"holderIdentity": "pod-c"}});
    let patched = api
        .patch("meshdns", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        patched.spec.unwrap().holder_identity.as_deref(),
        Some("pod-c")
    );
    let stale = json!({"metadata": {"resourceVersion": created.resource_version()}, "spec": {"holderIdentity": "x"}});
    let err = api
        .patch("meshdns", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "Conflict".to_string()));
    let apply = api
        .patch("meshdns", &PatchParams::apply("me"), &Patch::Apply(&patch))
        .await
        .unwrap_err();
    assert_eq!(api_status(apply).0, 415);

    let got = api.get("meshdns").await.unwrap();
    assert_eq!(
        srv.get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("kube-system"),
            "meshdns"
        )
        .unwrap()["spec"]["holderIdentity"],
        "pod-c"
    );
    api.delete("meshdns", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        srv.get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("kube-system"),
            "meshdns"
        )
        .is_none()
    );
    let err = api
        .delete("meshdns", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 404);
    assert!(got.metadata.creation_timestamp.is_some());
}

#[tokio::test]
async fn discovery_and_optional_resources() {
    let srv = FakeApiServer::start().await.unwrap();
    let client = client(&srv).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");

    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let v1 = client.list_core_api_resources("v1").await.unwrap();
    assert!(
        v1.resources
            .iter()
            .any(|r| r.name == "services" && r.namespaced)
    );
    assert!(
        v1.resources
            .iter()
            .any(|r| r.name == "namespaces" && !r.namespaced)
    );

    let gv = "multicluster.x-k8s.io/v1alpha1";
    let err = client.list_api_group_resources(gv).await.unwrap_err();
    assert_eq!(api_status(err).0, 404);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
        "serviceexports",
    );
    let exports: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    assert_eq!(
        api_status(exports.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );

    srv.set_resource_installed(gv, "serviceexports", true);
    srv.apply(json!({"apiVersion": gv, "kind": "ServiceExport", "metadata": {"name": "web", "namespace": "ns"}}));
    let resources = client.list_api_group_resources(gv).await.unwrap();
    assert_eq!(resources.resources[0].kind, "ServiceExport");
    let list = exports.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items[0].types.as_ref().unwrap().kind,
        "ServiceExport",
        "CRD list items keep their kind"
    );

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("multicluster.x-k8s.io"));
    assert!(discovery.has_group("discovery.k8s.io"));
    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(aggregated.has_group("multicluster.x-k8s.io"));
    assert!(aggregated.has_group("coordination.k8s.io"));

    srv.set_resource_installed(gv, "serviceexports", false);
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(!discovery.has_group("multicluster.x-k8s.io"));
    assert_eq!(
        api_status(exports.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );

    let secrets: Api<Secret> = Api::namespaced(client, "ns");
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// Below the client: the bytes on the wire of a watch.
#[tokio::test]
async fn watch_wire_format() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let srv = FakeApiServer::start().await.unwrap();
    srv.apply(service("ns", "a", json!({"app": "web"})));
    let mut conn = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let request = "GET /api/v1/namespaces/ns/services?&watch=true&timeoutSeconds=290&resourceVersion=0 HTTP/1.1\r\n\
                   Host: fake\r\nAccept: application/json\r\n\r\n";
    conn.write_all(request.as_bytes()).await.unwrap();

    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("\"ADDED\"") {
        let n = within("the ADDED line", conn.read(&mut buf)).await.unwrap();
        assert!(n > 0, "connection closed early");
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    let line = text.lines().find(|l| l.contains("\"added\"")).unwrap();
    assert!(
        line.starts_with("{\"type\":\"added\",\"object\":{"),
        "{line}"
    );
    assert!(
        line.contains("\"kind\":\"service\""),
        "watch objects carry their kind: {line}"
    );

    // drop_watches closes the connection without the terminating zero-length chunk.
    srv.drop_watches();
    let mut rest = Vec::new();
    within("the connection to close", conn.read_to_end(&mut rest))
        .await
        .ok();
    assert!(
        !String::from_utf8_lossy(&rest).contains("0\r\n\r\n"),
        "{rest:?}"
    );
    within("the watch to be released", async {
        while srv.stats().open_watches > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // An unknown path is a NotFound Status.
    let mut conn = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    conn.write_all(
        b"GET /apis/nope.io/v1/things HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = String::new();
    within("the 404", conn.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(body["code"], 404);
}
