//! The object store: current objects per resource, one global resourceVersion
//! counter (like etcd's revision), and the event history that watches and
//! paginated lists read from.

use crate::resources::RESOURCES;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// `(namespace, name)`; the namespace is empty for cluster-scoped resources.
pub(crate) type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as kept in the history.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub resource: usize,
    pub key: ObjKey,
    pub kind: EventType,
    /// The object after the write. For a deletion: the last state, carrying the
    /// deletion's resourceVersion (what the real server sends in DELETED).
    pub object: Arc<Value>,
    /// The object before the write (`None` for a creation).
    pub prev: Option<Arc<Value>>,
}

/// Why a write through the API was refused.
#[derive(Debug)]
pub(crate) enum WriteError {
    AlreadyExists,
    NotFound,
    Conflict(String),
    /// The result would not be a valid object (e.g. a bad patch).
    Invalid(String),
}

/// How many events an open watch may fall behind before its stream is ended.
/// Its client then re-watches from its last resourceVersion (and relists if
/// that was compacted meanwhile), as with a real apiserver's slow watchers.
pub(crate) const MAX_WATCH_LAG: u64 = 100_000;

pub(crate) struct Store {
    /// The resourceVersion of the last write. Every write takes the next one,
    /// so the history holds consecutive resourceVersions.
    pub rv: u64,
    /// New requests may start at any resourceVersion `>= compacted_rv`; older
    /// ones are answered with 410 Gone, as after an etcd compaction.
    pub compacted_rv: u64,
    pub objects: Vec<BTreeMap<ObjKey, Arc<Value>>>,
    /// Events after `compacted_rv`, plus older ones that open watches have not
    /// read yet (compaction does not disturb watches that are already running).
    pub history: VecDeque<Arc<Event>>,
    pub installed: Vec<bool>,
    /// Keep at most this many events for new requests (older ones are compacted), if set.
    pub history_limit: Option<usize>,
    /// Open watches: id -> the resourceVersion each has read up to.
    watch_cursors: HashMap<u64, u64>,
    next_watch_id: u64,
    uid_seed: u64,
    uid_counter: u64,
}

impl Store {
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Self {
            rv: 1,
            compacted_rv: 1,
            objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            installed: RESOURCES.iter().map(|r| r.installed_by_default).collect(),
            history_limit: None,
            watch_cursors: HashMap::new(),
            next_watch_id: 0,
            uid_seed: nanos ^ (u64::from(std::process::id()) << 32),
            uid_counter: 0,
        }
    }

    /// Key of `obj` in `resource`, normalising the namespace to the resource's scope.
    pub fn key_of(resource: usize, obj: &Value) -> ObjKey {
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let namespace = if RESOURCES[resource].namespaced {
            let ns = meta("namespace");
            if ns.is_empty() { "default".into() } else { ns }
        } else {
            String::new()
        };
        (namespace, meta("name"))
    }

    pub fn get(&self, resource: usize, key: &ObjKey) -> Option<&Arc<Value>> {
        self.objects[resource].get(key)
    }

    /// Create or replace `obj` unconditionally (the in-process `apply`).
    pub fn put(&mut self, resource: usize, obj: Value) -> Arc<Value> {
        let key = Self::key_of(resource, &obj);
        assert!(!key.1.is_empty(), "object without metadata.name: {obj}");
        self.write(resource, key, obj)
    }

    /// Create through the API: refuses an existing name.
    pub fn create(&mut self, resource: usize, obj: Value) -> Result<Arc<Value>, WriteError> {
        let key = Self::key_of(resource, &obj);
        if self.objects[resource].contains_key(&key) {
            return Err(WriteError::AlreadyExists);
        }
        Ok(self.write(resource, key, obj))
    }

    /// Replace through the API: the object must exist, and a resourceVersion or
    /// uid in the new object must match the stored one (optimistic concurrency).
    pub fn update(&mut self, resource: usize, obj: Value) -> Result<Arc<Value>, WriteError> {
        let key = Self::key_of(resource, &obj);
        let current = self.objects[resource]
            .get(&key)
            .ok_or(WriteError::NotFound)?;
        check_preconditions(
            current,
            meta_str(&obj, "resourceVersion"),
            meta_str(&obj, "uid"),
        )?;
        // Like the apiserver, an update that changes nothing writes nothing.
        let mut unchanged = obj.clone();
        let field = |f: &str| meta_str(current, f).unwrap_or_default().to_string();
        let current_rv = field("resourceVersion").parse().unwrap_or_default();
        stamp(
            &mut unchanged,
            resource,
            &key,
            field("uid"),
            field("creationTimestamp"),
            current_rv,
        );
        if unchanged == **current {
            return Ok(current.clone());
        }
        Ok(self.write(resource, key, obj))
    }

    /// Delete through the API, honouring DeleteOptions preconditions.
    pub fn delete_checked(
        &mut self,
        resource: usize,
        key: &ObjKey,
        rv: Option<&str>,
        uid: Option<&str>,
    ) -> Result<Arc<Value>, WriteError> {
        let current = self.objects[resource]
            .get(key)
            .ok_or(WriteError::NotFound)?;
        check_preconditions(current, rv, uid)?;
        Ok(self.remove(resource, key).expect("checked above"))
    }

    fn write(&mut self, resource: usize, key: ObjKey, mut obj: Value) -> Arc<Value> {
        let prev = self.objects[resource].get(&key).cloned();
        self.rv += 1;
        let uid = match prev.as_deref().and_then(|p| meta_str(p, "uid")) {
            Some(uid) => uid.to_string(),
            None => self.next_uid(),
        };
        let created = prev
            .as_deref()
            .and_then(|p| meta_str(p, "creationTimestamp"))
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        stamp(&mut obj, resource, &key, uid, created, self.rv);
        let rv = self.rv;

        let object = Arc::new(obj);
        self.objects[resource].insert(key.clone(), object.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv,
            resource,
            key,
            kind,
            object: object.clone(),
            prev,
        });
        object
    }

    /// Delete unconditionally. Returns the deleted object carrying the deletion's resourceVersion.
    pub fn remove(&mut self, resource: usize, key: &ObjKey) -> Option<Arc<Value>> {
        let prev = self.objects[resource].remove(key)?;
        self.rv += 1;
        let mut tombstone = (*prev).clone();
        set_resource_version(&mut tombstone, self.rv);
        let tombstone = Arc::new(tombstone);
        self.record(Event {
            rv: self.rv,
            resource,
            key: key.clone(),
            kind: EventType::Deleted,
            object: tombstone.clone(),
            prev: Some(prev),
        });
        Some(tombstone)
    }

    fn record(&mut self, event: Event) {
        self.history.push_back(Arc::new(event));
        if let Some(limit) = self.history_limit {
            let oldest_kept = self.rv.saturating_sub(limit as u64);
            if oldest_kept > self.compacted_rv {
                self.compacted_rv = oldest_kept;
                self.prune();
            }
        }
    }

    /// Forget all history: every resourceVersion before now is compacted.
    pub fn compact(&mut self) {
        self.compacted_rv = self.rv;
        self.prune();
    }

    /// Drop events that neither new requests nor open watches (other than
    /// hopelessly lagging ones) can still need.
    fn prune(&mut self) {
        let lag_floor = self.rv.saturating_sub(MAX_WATCH_LAG);
        let keep_after = self
            .watch_cursors
            .values()
            .copied()
            .filter(|&c| c >= lag_floor)
            .fold(self.compacted_rv, u64::min);
        while self.history.front().is_some_and(|e| e.rv <= keep_after) {
            self.history.pop_front();
        }
    }

    /// Is the state at `rv` (and every event after it) still available to a new request?
    pub fn is_available(&self, rv: u64) -> bool {
        rv >= self.compacted_rv && self.has_events_after(rv)
    }

    /// Are all events after `rv` still in the history?
    pub fn has_events_after(&self, rv: u64) -> bool {
        rv >= self.rv || self.history.front().is_some_and(|e| e.rv <= rv + 1)
    }

    /// Register an open watch positioned at `cursor`; returns its id.
    pub fn register_watch(&mut self, cursor: u64) -> u64 {
        self.next_watch_id += 1;
        self.watch_cursors.insert(self.next_watch_id, cursor);
        self.next_watch_id
    }

    /// Record how far a watch has read, releasing history nobody needs any more.
    pub fn advance_watch(&mut self, id: u64, cursor: u64) {
        self.watch_cursors.insert(id, cursor);
        if self
            .history
            .front()
            .is_some_and(|e| e.rv <= self.compacted_rv)
        {
            self.prune();
        }
    }

    pub fn unregister_watch(&mut self, id: u64) {
        self.watch_cursors.remove(&id);
        self.prune();
    }

    /// Up to `max` events with `rv > after`, and whether more remain.
    pub fn events_after(&self, after: u64, max: usize) -> (Vec<Arc<Event>>, bool) {
        let start = self.history.partition_point(|e| e.rv <= after);
        let end = self.history.len().min(start + max);
        let events = self.history.range(start..end).cloned().collect();
        (events, end < self.history.len())
    }

    /// The objects of `resource` (optionally in one namespace) as they were at `rv`.
    /// The caller checks `is_available(rv)` first.
    pub fn snapshot(
        &self,
        resource: usize,
        namespace: Option<&str>,
        rv: u64,
    ) -> BTreeMap<ObjKey, Arc<Value>> {
        let in_ns = |key: &ObjKey| namespace.is_none_or(|ns| key.0 == ns);
        let mut objects: BTreeMap<ObjKey, Arc<Value>> = self.objects[resource]
            .iter()
            .filter(|(k, _)| in_ns(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if rv >= self.rv {
            return objects;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        for event in self.history.range(start..).rev() {
            if event.resource != resource || !in_ns(&event.key) {
                continue;
            }
            match &event.prev {
                Some(prev) => objects.insert(event.key.clone(), prev.clone()),
                None => objects.remove(&event.key),
            };
        }
        objects
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        let a = self.uid_seed;
        let b = self.uid_counter;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Set what the server owns in an object: type meta, namespace, uid,
/// creationTimestamp and resourceVersion.
fn stamp(obj: &mut Value, resource: usize, key: &ObjKey, uid: String, created: String, rv: u64) {
    let def = &RESOURCES[resource];
    let root = obj.as_object_mut().expect("objects are JSON objects");
    root.insert("apiVersion".into(), def.api_version().into());
    root.insert("kind".into(), def.kind.into());
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("metadata is an object");
    if def.namespaced {
        meta.insert("namespace".into(), key.0.clone().into());
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), uid.into());
    meta.insert("creationTimestamp".into(), created.into());
    meta.insert("resourceVersion".into(), rv.to_string().into());
}

fn check_preconditions(
    current: &Value,
    rv: Option<&str>,
    uid: Option<&str>,
) -> Result<(), WriteError> {
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        let have = meta_str(current, "uid").unwrap_or_default();
        if uid != have {
            return Err(WriteError::Conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
            )));
        }
    }
    if let Some(rv) = rv.filter(|r| !r.is_empty())
        && Some(rv) != meta_str(current, "resourceVersion")
    {
        return Err(WriteError::Conflict(
            "the object has been modified; please apply your changes to the latest version and try again".into(),
        ));
    }
    Ok(())
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub(crate) fn set_resource_version(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), rv.to_string().into());
    }
}

/// The current UTC time as `2006-01-02T15:04:05Z`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;
    use serde_json::json;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn snapshot_rolls_back_to_an_older_version() {
        let res = by_kind("v1", "Service").unwrap();
        let mut store = Store::new();
        store.put(res, svc("a", 1));
        store.put(res, svc("b", 1));
        let at = store.rv;
        store.put(res, svc("a", 2));
        store.remove(res, &("ns".into(), "b".into()));
        store.put(res, svc("c", 1));

        let then = store.snapshot(res, None, at);
        let names: Vec<_> = then.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            then[&("ns".into(), "a".into())]["spec"]["ports"][0]["port"],
            1
        );
        let now = store.snapshot(res, Some("ns"), store.rv);
        let names: Vec<_> = now.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn writes_set_metadata_and_keep_identity() {
        let res = by_kind("v1", "Service").unwrap();
        let mut store = Store::new();
        let first = store.put(res, svc("a", 1));
        let second = store.put(res, svc("a", 2));
        assert_eq!(first["metadata"]["uid"], second["metadata"]["uid"]);
        assert_ne!(
            first["metadata"]["resourceVersion"],
            second["metadata"]["resourceVersion"]
        );
        let ts = first["metadata"]["creationTimestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.starts_with("20"), "{ts}");
    }

    #[test]
    fn history_limit_compacts() {
        let res = by_kind("v1", "Service").unwrap();
        let mut store = Store::new();
        store.history_limit = Some(2);
        for i in 0..5 {
            store.put(res, svc("a", i));
        }
        assert_eq!(store.history.len(), 2);
        assert!(!store.is_available(store.rv - 3));
        assert!(store.is_available(store.rv - 2));
    }

    #[test]
    fn compaction_keeps_what_open_watches_still_need() {
        let res = by_kind("v1", "Service").unwrap();
        let mut store = Store::new();
        store.put(res, svc("a", 1));
        let watch = store.register_watch(store.rv);
        store.put(res, svc("a", 2));
        store.put(res, svc("a", 3));
        store.compact();
        assert!(
            !store.is_available(store.rv - 1),
            "new requests see the compaction"
        );
        assert!(
            store.has_events_after(store.rv - 2),
            "the open watch still can read"
        );
        store.advance_watch(watch, store.rv);
        assert!(store.history.is_empty());
        store.put(res, svc("a", 4));
        store.unregister_watch(watch);
        store.compact();
        assert!(store.history.is_empty());
    }
}
