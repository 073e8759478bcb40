//! Request routing: discovery documents, LIST, GET and writes. WATCH lives in `watch.rs`.

use crate::Counters;
use crate::Inner;
use crate::encode::{self, View};
use crate::patch;
use crate::resources::{RESOURCES, ResourceDef, VERBS, by_plural};
use crate::selector::{FieldSelector, LabelSelector, ObjectFilter};
use crate::store::{ObjKey, Store, WriteError, meta_str};
use crate::watch;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A response, or a failure to answer with a `Status`.
type Reply = Result<Response<Body>, ApiError>;

/// A failed request, answered with a `Status` object.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    pub fn response(self) -> Response<Body> {
        let status = encode::status(self.code, self.reason, &self.message, self.details);
        json_response(self.code, &status)
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

pub(crate) async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(400, "BadRequest", &format!("reading the request body: {e}")).response();
        }
    };
    let accept = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let request = Req {
        method: parts.method.clone(),
        query: match Query::parse(parts.uri.query().unwrap_or_default()) {
            Ok(q) => q,
            Err(e) => return error(400, "BadRequest", &e).response(),
        },
        accept,
        content_type,
        body,
    };
    let segments: Vec<&str> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    route(&inner, &segments, &request).unwrap_or_else(ApiError::response)
}

struct Req<'a> {
    method: Method,
    query: Query,
    accept: &'a str,
    content_type: &'a str,
    body: Bytes,
}

impl Req<'_> {
    fn view(&self) -> View {
        if self.accept.contains("as=PartialObjectMetadata") {
            View::Metadata
        } else {
            View::Full
        }
    }

    fn aggregated_discovery(&self) -> bool {
        self.accept.contains("as=APIGroupDiscoveryList")
    }
}

fn route(inner: &Arc<Inner>, segments: &[&str], req: &Req) -> Reply {
    let discovery = |doc: Option<Value>| match doc {
        Some(doc) if req.method == Method::GET => Ok(json_response(200, &doc)),
        Some(_) => Err(method_not_allowed()),
        None => Err(not_found()),
    };
    match segments {
        ["version"] => discovery(Some(version())),
        ["healthz" | "livez" | "readyz"] => Ok(text_response(200, "ok")),
        ["api"] if req.aggregated_discovery() => Ok(aggregated(inner, true)),
        ["api"] => discovery(Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}
            ],
        }))),
        ["apis"] if req.aggregated_discovery() => Ok(aggregated(inner, false)),
        ["apis"] => discovery(Some(api_group_list(inner))),
        ["apis", group] => discovery(api_group(inner, group)),
        ["api", "v1"] => discovery(api_resource_list(inner, "", "v1")),
        ["apis", group, version] => discovery(api_resource_list(inner, group, version)),
        ["api", "v1", rest @ ..] => resource_request(inner, "", "v1", rest, req),
        ["apis", group, version, rest @ ..] => resource_request(inner, group, version, rest, req),
        _ => Err(not_found()),
    }
}

/// `[watch/][namespaces/{ns}/]{plural}[/{name}]` under a group version.
fn resource_request(
    inner: &Arc<Inner>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: &Req,
) -> Reply {
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (namespace, plural, name) = match *rest {
        [plural] => (None, plural, None),
        [plural, name] => (None, plural, Some(name)),
        ["namespaces", ns, plural] => (Some(ns), plural, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name)),
        _ => return Err(not_found()),
    };
    let resource = by_plural(group, version, plural)
        .filter(|&r| inner.lock().installed[r])
        .ok_or_else(not_found)?;
    let def = &RESOURCES[resource];
    if namespace.is_some() && !def.namespaced {
        return Err(not_found());
    }
    let target = Target {
        resource,
        def,
        namespace: namespace.map(str::to_string),
    };
    let watching = watch_path || req.query.watch;
    match (&req.method, name) {
        (&Method::GET, _) if watching => {
            let filter = target.filter(name, &req.query)?;
            watch::start(inner.clone(), resource, filter, &req.query, req.view())
        }
        (&Method::GET, None) => list(inner, &target, req),
        (&Method::GET, Some(name)) => get(inner, &target, name, req.view()),
        (&Method::POST, None) => create(inner, &target, req),
        (&Method::PUT, Some(name)) => replace(inner, &target, name, req),
        (&Method::PATCH, Some(name)) => patch(inner, &target, name, req),
        (&Method::DELETE, Some(name)) => delete(inner, &target, name, req),
        _ => Err(method_not_allowed()),
    }
}

/// The resource and namespace a request addresses.
struct Target {
    resource: usize,
    def: &'static ResourceDef,
    namespace: Option<String>,
}

impl Target {
    fn filter(&self, name: Option<&str>, q: &Query) -> Result<ObjectFilter, ApiError> {
        let labels = LabelSelector::parse(q.label_selector.as_deref().unwrap_or_default())
            .map_err(|e| {
                error(
                    400,
                    "BadRequest",
                    &format!("unable to parse requirement: {e}"),
                )
            })?;
        let fields =
            FieldSelector::parse(q.field_selector.as_deref().unwrap_or_default(), self.def)
                .map_err(|e| error(400, "BadRequest", &e))?;
        Ok(ObjectFilter {
            namespace: self.namespace.clone(),
            name: name.map(str::to_string),
            labels,
            fields,
        })
    }

    fn key(&self, name: &str) -> ObjKey {
        (self.namespace.clone().unwrap_or_default(), name.to_string())
    }

    fn not_found(&self, name: &str) -> ApiError {
        error(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", self.def.qualified_plural()),
        )
        .with_details(encode::details(self.def, name))
    }
}

// ---------------------------------------------------------------- LIST

/// A continue token: the snapshot's resourceVersion and the last key returned.
struct ContinueToken {
    rv: u64,
    after: ObjKey,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let raw = json!({"rv": self.rv, "ns": self.after.0, "name": self.after.1}).to_string();
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str) -> Option<ContinueToken> {
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some(ContinueToken {
            rv: v["rv"].as_u64()?,
            after: (
                v["ns"].as_str()?.to_string(),
                v["name"].as_str()?.to_string(),
            ),
        })
    }
}

fn list(inner: &Arc<Inner>, target: &Target, req: &Req) -> Reply {
    Counters::bump(&inner.stats.lists);
    let q = &req.query;
    let filter = target.filter(None, q)?;
    let store = inner.lock();
    let (at, after) = list_start(&store, q).inspect_err(|e| {
        if e.code == 410 {
            Counters::bump(&inner.stats.gone);
        }
    })?;
    let snapshot = store.snapshot(target.resource, target.namespace.as_deref(), at);
    drop(store);

    let mut matching = snapshot
        .iter()
        .filter(|(key, _)| after.as_ref().is_none_or(|a| *key > a))
        .filter(|(_, obj)| filter.matches(obj));
    let limit = q.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
    let page: Vec<(&ObjKey, &Arc<Value>)> = matching.by_ref().take(limit).collect();
    let remaining = matching.count();

    let mut meta = json!({"resourceVersion": at.to_string()});
    if remaining > 0
        && let Some((last, _)) = page.last()
    {
        let token = ContinueToken {
            rv: at,
            after: (*last).clone(),
        };
        meta["continue"] = token.encode().into();
        if !filter.has_selectors() {
            meta["remainingItemCount"] = remaining.into();
        }
    }
    let body = encode::list_body(
        target.def,
        req.view(),
        meta,
        page.iter().map(|(_, o)| o.as_ref()),
    );
    Ok(bytes_response(200, body))
}

/// The snapshot (resourceVersion) and start key a list reads, from its
/// `continue`, `resourceVersion` and `resourceVersionMatch` parameters.
fn list_start(store: &Store, q: &Query) -> Result<(u64, Option<ObjKey>), ApiError> {
    let rv = q.resource_version.as_deref().filter(|s| !s.is_empty());
    let rv_match = q
        .resource_version_match
        .as_deref()
        .filter(|s| !s.is_empty());
    if let Some(token) = q.continue_token.as_deref().filter(|s| !s.is_empty()) {
        if rv.is_some_and(|rv| rv != "0") || rv_match.is_some() {
            return Err(error(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
            ));
        }
        let token = ContinueToken::decode(token)
            .ok_or_else(|| error(400, "BadRequest", "continue key is not valid"))?;
        if !store.is_available(token.rv) {
            return Err(error(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue token \
                 in this response to retrieve the remainder of the results. Continuing with the \
                 provided token results in an inconsistent list - objects that were created, \
                 modified, or deleted between the time the first chunk was returned and now may \
                 show up in the list.",
            ));
        }
        return Ok((token.rv, Some(token.after)));
    }
    let exact = match (rv, rv_match) {
        (None, Some(_)) => {
            return Err(error(
                400,
                "BadRequest",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (_, Some(m)) if m != "Exact" && m != "NotOlderThan" => {
            return Err(error(
                400,
                "BadRequest",
                &format!("unsupported resourceVersionMatch {m:?}"),
            ));
        }
        (None, None) => return Ok((store.rv, None)),
        (Some("0"), Some("Exact")) => {
            return Err(error(
                400,
                "BadRequest",
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
        (Some("0"), _) => return Ok((store.rv, None)),
        // Legacy semantics: a non-zero resourceVersion with a limit is an exact read.
        (Some(_), m) => m == Some("Exact") || (m.is_none() && q.limit.is_some()),
    };
    let rv = parse_rv(rv.unwrap_or_default())?;
    if rv > store.rv {
        return Err(too_large(rv, store.rv));
    }
    if !exact {
        return Ok((store.rv, None));
    }
    if !store.is_available(rv) {
        return Err(error(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
        ));
    }
    Ok((rv, None))
}

pub(crate) fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| {
        error(
            400,
            "BadRequest",
            &format!("invalid resource version {rv:?}: must be an unsigned integer"),
        )
    })
}

fn too_large(rv: u64, current: u64) -> ApiError {
    error(
        504,
        "Timeout",
        &format!("Too large resource version: {rv}, current: {current}"),
    )
    .with_details(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    }))
}

// ---------------------------------------------------------------- GET and writes

fn get(inner: &Arc<Inner>, target: &Target, name: &str, view: View) -> Reply {
    let key = target.key(name);
    let store = inner.lock();
    let obj = store
        .get(target.resource, &key)
        .ok_or_else(|| target.not_found(name))?;
    Ok(object_response(200, obj, view))
}

/// Parse a request body as a JSON object of the target's kind, in the target's namespace.
fn body_object(target: &Target, req: &Req) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&req.body).map_err(|e| {
        error(
            400,
            "BadRequest",
            &format!("the body of the request was in an unknown format: {e}"),
        )
    })?;
    let def = target.def;
    let fields = obj.as_object_mut().ok_or_else(|| {
        error(
            400,
            "BadRequest",
            "the body of the request must be a JSON object",
        )
    })?;
    for (field, want) in [
        ("apiVersion", def.api_version()),
        ("kind", def.kind.to_string()),
    ] {
        match fields.get(field).and_then(Value::as_str) {
            None | Some("") => {
                fields.insert(field.into(), want.into());
            }
            Some(have) if have == want => {}
            Some(have) => {
                return Err(error(
                    400,
                    "BadRequest",
                    &format!("the {field} of the provided object ({have}) does not match {want}"),
                ));
            }
        }
    }
    let meta = fields
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| error(400, "BadRequest", "metadata must be an object"))?;
    if let Some(ns) = &target.namespace {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), ns.clone().into());
            }
            Some(have) if have == ns => {}
            Some(_) => {
                return Err(error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    Ok(obj)
}

fn create(inner: &Arc<Inner>, target: &Target, req: &Req) -> Reply {
    if target.def.namespaced && target.namespace.is_none() {
        return Err(method_not_allowed());
    }
    let mut obj = body_object(target, req)?;
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("checked by body_object");
    meta.remove("resourceVersion");
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        if generate.is_empty() {
            return Err(invalid(
                target.def,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        let generated = format!("{generate}{}", random_suffix());
        meta.insert("name".into(), generated.into());
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    let created = inner
        .write(|store| store.create(target.resource, obj))
        .map_err(|e| write_error(target, &name, e))?;
    Ok(object_response(201, &created, req.view()))
}

fn replace(inner: &Arc<Inner>, target: &Target, name: &str, req: &Req) -> Reply {
    let obj = body_object(target, req)?;
    match meta_str(&obj, "name") {
        Some(n) if n == name => {}
        other => {
            return Err(error(
                400,
                "BadRequest",
                &format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    other.unwrap_or_default()
                ),
            ));
        }
    }
    let updated = inner
        .write(|store| store.update(target.resource, obj))
        .map_err(|e| write_error(target, name, e))?;
    Ok(object_response(200, &updated, req.view()))
}

fn patch(inner: &Arc<Inner>, target: &Target, name: &str, req: &Req) -> Reply {
    let kind = patch::PatchKind::from_content_type(req.content_type).ok_or_else(|| {
        error(
            415,
            "UnsupportedMediaType",
            &format!(
                "the fake apiserver does not support patch type {:?} (no server-side apply)",
                req.content_type
            ),
        )
    })?;
    let doc: Value = serde_json::from_slice(&req.body)
        .map_err(|e| error(400, "BadRequest", &format!("invalid patch body: {e}")))?;
    let key = target.key(name);
    let patched = inner.write(|store| {
        let current = store
            .get(target.resource, &key)
            .ok_or(WriteError::NotFound)?;
        let patched = patch::apply(kind, current, &doc).map_err(WriteError::Invalid)?;
        if meta_str(&patched, "name") != Some(name)
            || (target.def.namespaced && meta_str(&patched, "namespace") != Some(key.0.as_str()))
        {
            return Err(WriteError::Invalid(
                "a patch cannot change the name or namespace".into(),
            ));
        }
        store.update(target.resource, patched)
    });
    let patched = patched.map_err(|e| write_error(target, name, e))?;
    Ok(object_response(200, &patched, req.view()))
}

fn delete(inner: &Arc<Inner>, target: &Target, name: &str, req: &Req) -> Reply {
    let options: Value = if req.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| error(400, "BadRequest", &format!("invalid DeleteOptions: {e}")))?
    };
    let precondition = |f: &str| {
        options
            .pointer(&format!("/preconditions/{f}"))
            .and_then(Value::as_str)
    };
    let key = target.key(name);
    let deleted = inner
        .write(|store| {
            store.delete_checked(
                target.resource,
                &key,
                precondition("resourceVersion"),
                precondition("uid"),
            )
        })
        .map_err(|e| write_error(target, name, e))?;
    Ok(object_response(200, &deleted, req.view()))
}

fn write_error(target: &Target, name: &str, e: WriteError) -> ApiError {
    let def = target.def;
    match e {
        WriteError::NotFound => target.not_found(name),
        WriteError::AlreadyExists => error(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", def.qualified_plural()),
        )
        .with_details(encode::details(def, name)),
        WriteError::Conflict(why) => error(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                def.qualified_plural()
            ),
        )
        .with_details(encode::details(def, name)),
        WriteError::Invalid(why) => invalid(def, name, &why),
    }
}

fn invalid(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    let kind = if def.group.is_empty() {
        def.kind.to_string()
    } else {
        format!("{}.{}", def.kind, def.group)
    };
    error(
        422,
        "Invalid",
        &format!("{kind} \"{name}\" is invalid: {why}"),
    )
    .with_details(encode::details(def, name))
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let mut n = h.finish();
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

// ---------------------------------------------------------------- discovery

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Installed resources, in table order.
fn installed(inner: &Inner) -> Vec<&'static ResourceDef> {
    let store = inner.lock();
    RESOURCES
        .iter()
        .enumerate()
        .filter(|(i, _)| store.installed[*i])
        .map(|(_, def)| def)
        .collect()
}

/// Installed `(group, version)` pairs, in table order, without duplicates.
fn group_versions(inner: &Inner) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for def in installed(inner) {
        if !out.contains(&(def.group, def.version)) {
            out.push((def.group, def.version));
        }
    }
    out
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions[0]),
    })
}

fn api_group_list(inner: &Inner) -> Value {
    let gvs = group_versions(inner);
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (group, version) in gvs.into_iter().filter(|(g, _)| !g.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => groups.push((group, vec![version])),
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>(),
    })
}

fn api_group(inner: &Inner, group: &str) -> Option<Value> {
    let versions: Vec<&str> = group_versions(inner)
        .into_iter()
        .filter(|(g, _)| *g == group && !group.is_empty())
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        return None;
    }
    let mut doc = group_doc(group, &versions);
    doc["kind"] = "APIGroup".into();
    doc["apiVersion"] = "v1".into();
    Some(doc)
}

fn api_resource_list(inner: &Inner, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = installed(inner)
        .into_iter()
        .filter(|d| d.group == group && d.version == version)
        .map(|d| {
            json!({
                "name": d.plural,
                "singularName": d.singular(),
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": VERBS,
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`) for `/api` (core) or `/apis`.
fn aggregated(inner: &Inner, core: bool) -> Response<Body> {
    let defs = installed(inner);
    let mut items: Vec<Value> = Vec::new();
    for (group, version) in group_versions(inner) {
        if group.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = defs
            .iter()
            .filter(|d| d.group == group && d.version == version)
            .map(|d| {
                json!({
                    "resource": d.plural,
                    "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
                    "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": d.singular(),
                    "verbs": VERBS,
                })
            })
            .collect();
        let version_doc =
            json!({"version": version, "resources": resources, "freshness": "Current"});
        match items.iter_mut().find(|i| i["metadata"]["name"] == group) {
            Some(item) => item["versions"]
                .as_array_mut()
                .expect("versions is an array")
                .push(version_doc),
            None => items.push(json!({"metadata": {"name": group}, "versions": [version_doc]})),
        }
    }
    let doc = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    let mut response = json_response(200, &doc);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        ),
    );
    response
}

// ---------------------------------------------------------------- query parameters

/// The query parameters the fake understands; others are ignored.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
    pub send_initial_events: Option<bool>,
}

impl Query {
    fn parse(raw: &str) -> Result<Query, String> {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            let flag = || match &*value {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                other => Err(format!("invalid boolean for {key}: {other:?}")),
            };
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("invalid number for {key}: {value:?}"))
            };
            match &*key {
                "watch" => q.watch = flag()?,
                "resourceVersion" => q.resource_version = Some(value.into_owned()),
                "resourceVersionMatch" => q.resource_version_match = Some(value.into_owned()),
                "labelSelector" => q.label_selector = Some(value.into_owned()),
                "fieldSelector" => q.field_selector = Some(value.into_owned()),
                "limit" => q.limit = Some(number()? as usize),
                "continue" => q.continue_token = Some(value.into_owned()),
                "timeoutSeconds" => q.timeout_seconds = Some(number()?),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = flag()?,
                "sendInitialEvents" => q.send_initial_events = Some(flag()?),
                _ => {}
            }
        }
        Ok(q)
    }
}

// ---------------------------------------------------------------- responses

pub(crate) fn bytes_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::from_u16(code).expect("valid status code");
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(value).expect("serialising JSON"))
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut response = bytes_response(code, text.as_bytes().to_vec());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn object_response(code: u16, obj: &Value, view: View) -> Response<Body> {
    bytes_response(
        code,
        serde_json::to_vec(&encode::Rendered(obj, view)).expect("serialising JSON"),
    )
}

/// A failure with this HTTP code, `Status` reason and message.
pub(crate) fn error(code: u16, reason: &'static str, message: &str) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.to_string(),
        details: None,
    }
}

fn not_found() -> ApiError {
    error(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn method_not_allowed() -> ApiError {
    error(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}
