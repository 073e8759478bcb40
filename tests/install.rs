//! The install kit, checked as far as a machine without a cluster or Docker allows.
//!
//! - Every kustomization under `deploy/overlays/` (and `deploy/base`, and every component of
//!   `deploy/components/` added to an overlay) renders with `kubectl kustomize`, and every
//!   object deserializes into its k8s-openapi type with nothing left over: the object is
//!   serialized back and compared with what kustomize printed, so a misspelt or misplaced
//!   field (which serde would silently ignore) fails. The two CRDs (PodMonitor, PodMonitoring)
//!   are checked against the fields we use.
//! - RBAC grants get/list/watch on exactly what the kube sources read, as README says; where
//!   the config publishes to Pub/Sub, a Role adds exactly what the publisher's Lease election
//!   needs (create leases, get/update that one Lease) in the Lease's namespace.
//! - The config in the ConfigMap passes the real `meshdns check`, and agrees with the pod: the
//!   ports, the `--config` path, the mounted kubeconfigs of remote clusters, the drain.
//! - The pods meet the restricted Pod Security Standard, and the DaemonSet and Deployment
//!   variants keep their promises (every node and local traffic; replicas, PDB, spread).
//! - The Dockerfile: its stages, user, binary path, ports, and a build context that holds a
//!   loadable workspace. (Docker itself is not run here.)
//! - `scripts/make-remote-kubeconfig`: its dry run, and its real path against a stand-in
//!   `kubectl`, produce objects and a kubeconfig that meshdns's own loader accepts.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodTemplateSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the kube sources read (README, "Kubernetes sources"): (API group, resource).
const READS: &[(&str, &str)] = &[
    ("", "services"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
    ("multicluster.x-k8s.io", "serviceexports"),
];
const READ_VERBS: &[&str] = &["get", "list", "watch"];

// ---------------------------------------------------------------------------------------------
// Rendering and strict typing

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).unwrap_or_else(|e| panic!("bad YAML: {e}\n{text}"))
}

/// `kubectl kustomize DIR`, split into objects.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    assert!(!docs.is_empty(), "{} renders nothing", dir.display());
    docs
}

/// Renders `overlay` with `components` added, through a kustomization in a temporary
/// directory (kustomize takes only relative paths).
fn kustomize_with(overlay: &Path, components: &[PathBuf]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rel = |p: &Path| relative(dir.path(), p).display().to_string();
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n",
        rel(overlay)
    );
    for c in components {
        text.push_str(&format!("  - {}\n", rel(c)));
    }
    std::fs::write(dir.path().join("kustomization.yaml"), text).expect("write kustomization");
    kustomize(dir.path())
}

/// The path from directory `from` to `to` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().expect("canonical");
    let to = to.canonicalize().expect("canonical");
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in to.components().skip(common) {
        rel.push(c);
    }
    rel
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    v.sort();
    v
}

/// Lists where `a` (what was written) and `b` (what the type kept) differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(format!("{p}: not a field of the type")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Deserializes `obj` into `T` and back: anything the type does not know (an unknown or
/// misplaced field) or reads differently is an error.
fn strict<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<T, String> {
    let typed: T =
        serde_json::from_value(obj.clone()).map_err(|e| format!("does not deserialize: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialize: {e}"))?;
    let mut diffs = Vec::new();
    diff("", &strip_nulls(obj), &strip_nulls(&back), &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(diffs.join("; "))
    }
}

fn api_kind(obj: &Value) -> (&str, &str) {
    (
        obj["apiVersion"].as_str().unwrap_or(""),
        obj["kind"].as_str().unwrap_or(""),
    )
}

fn name_of(obj: &Value) -> String {
    let (_, kind) = api_kind(obj);
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    format!("{kind} {ns}/{name}")
}

/// Only these keys (recursively: a map of allowed keys per field, `None` = anything below).
fn only_keys(path: &str, v: &Value, allowed: &[(&str, Option<&[&str]>)]) -> Result<(), String> {
    let Some(m) = v.as_object() else {
        return Err(format!("{path} is not a map"));
    };
    for (k, _) in m {
        if !allowed.iter().any(|(a, _)| a == k) {
            return Err(format!("{path}.{k}: not a field we know"));
        }
    }
    for (k, sub) in allowed {
        if let (Some(sub), Some(child)) = (sub, m.get(*k)) {
            let items: Vec<&Value> = match child {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let keys: Vec<(&str, Option<&[&str]>)> = sub.iter().map(|s| (*s, None)).collect();
                only_keys(&format!("{path}.{k}"), item, &keys)?;
            }
        }
    }
    Ok(())
}

/// PodMonitor (Prometheus Operator) and PodMonitoring (Google Managed Prometheus) have no
/// k8s-openapi type: the fields we use, and nothing else.
fn check_monitor(obj: &Value) -> Result<(), String> {
    let (api, kind) = api_kind(obj);
    only_keys(
        "",
        obj,
        &[
            ("apiVersion", None),
            ("kind", None),
            ("metadata", None),
            ("spec", None),
        ],
    )?;
    strict::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&obj["metadata"])
        .map_err(|e| format!("metadata: {e}"))?;
    let endpoints = match (api, kind) {
        ("monitoring.coreos.com/v1", "PodMonitor") => {
            only_keys(
                ".spec",
                &obj["spec"],
                &[
                    ("selector", Some(&["matchLabels"][..])),
                    ("namespaceSelector", Some(&["matchNames", "any"][..])),
                    (
                        "podMetricsEndpoints",
                        Some(&["port", "path", "interval", "scrapeTimeout", "scheme"][..]),
                    ),
                    ("jobLabel", None),
                    ("podTargetLabels", None),
                ],
            )?;
            &obj["spec"]["podMetricsEndpoints"]
        }
        ("monitoring.googleapis.com/v1", "PodMonitoring") => {
            only_keys(
                ".spec",
                &obj["spec"],
                &[
                    ("selector", Some(&["matchLabels"][..])),
                    (
                        "endpoints",
                        Some(&["port", "path", "interval", "timeout", "scheme"][..]),
                    ),
                    ("targetLabels", None),
                ],
            )?;
            &obj["spec"]["endpoints"]
        }
        _ => return Err(format!("no known type for {api} {kind}")),
    };
    let eps = endpoints.as_array().ok_or("no endpoints")?;
    if eps.is_empty() || eps.iter().any(|e| !e["port"].is_string()) {
        return Err("every endpoint needs a port name".into());
    }
    if !obj["spec"]["selector"]["matchLabels"].is_object() {
        return Err("no selector.matchLabels".into());
    }
    Ok(())
}

/// Checks that `obj` is a well-formed object of a known type.
fn check_typed(obj: &Value) -> Result<(), String> {
    match api_kind(obj) {
        ("v1", "Namespace") => strict::<Namespace>(obj).map(drop),
        ("v1", "ServiceAccount") => strict::<ServiceAccount>(obj).map(drop),
        ("v1", "ConfigMap") => strict::<ConfigMap>(obj).map(drop),
        ("v1", "Secret") => strict::<Secret>(obj).map(drop),
        ("v1", "Service") => strict::<Service>(obj).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<ClusterRole>(obj).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict::<ClusterRoleBinding>(obj).map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<Role>(obj).map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<RoleBinding>(obj).map(drop),
        ("apps/v1", "DaemonSet") => strict::<DaemonSet>(obj).map(drop),
        ("apps/v1", "Deployment") => strict::<Deployment>(obj).map(drop),
        ("policy/v1", "PodDisruptionBudget") => strict::<PodDisruptionBudget>(obj).map(drop),
        ("scheduling.k8s.io/v1", "PriorityClass") => strict::<PriorityClass>(obj).map(drop),
        ("monitoring.coreos.com/v1", _) | ("monitoring.googleapis.com/v1", _) => check_monitor(obj),
        (api, kind) => Err(format!("no known type for {api} {kind}")),
    }
}

/// A rendered install: its objects, all strictly typed.
struct Rendered {
    what: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn new(what: impl Into<String>, objects: Vec<Value>) -> Rendered {
        let what = what.into();
        let errors: Vec<String> = objects
            .iter()
            .filter_map(|o| check_typed(o).err().map(|e| format!("{}: {e}", name_of(o))))
            .collect();
        assert!(errors.is_empty(), "{what}:\n  {}", errors.join("\n  "));
        Rendered { what, objects }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn all<T: DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.of_kind(kind)
            .into_iter()
            .map(|o| serde_json::from_value(o.clone()).expect("typed already"))
            .collect()
    }

    fn one<T: DeserializeOwned>(&self, kind: &str) -> T {
        let mut v = self.all::<T>(kind);
        assert_eq!(
            v.len(),
            1,
            "{}: expected one {kind}, found {}",
            self.what,
            v.len()
        );
        v.remove(0)
    }

    fn named<T: DeserializeOwned>(&self, kind: &str, name: &str) -> Option<T> {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .map(|o| serde_json::from_value(o.clone()).expect("typed already"))
    }
}

#[test]
fn the_strict_check_rejects_unknown_and_misplaced_fields() {
    let good = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    });
    assert!(check_typed(&good).is_ok(), "{:?}", check_typed(&good));
    let mut typo = good.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    let e = check_typed(&typo).unwrap_err();
    assert!(e.contains("containers[0].imagePullPolicyy"), "{e}");
    let mut misplaced = good.clone();
    misplaced["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
    assert!(
        check_typed(&misplaced)
            .unwrap_err()
            .contains(".spec.tolerations")
    );
    let mut wrong_type = good.clone();
    wrong_type["spec"]["minReadySeconds"] = json!("5");
    assert!(check_typed(&wrong_type).is_err());
    let unknown_kind = json!({"apiVersion": "v1", "kind": "Pud", "metadata": {"name": "x"}});
    assert!(check_typed(&unknown_kind).is_err());
    let monitor = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "podMetricsEndpoints": [{"port": "metrics", "pth": "/metrics"}]}});
    assert!(check_typed(&monitor).unwrap_err().contains("pth"));
}

// ---------------------------------------------------------------------------------------------
// What every install must satisfy

fn check_rules(what: &str, rules: &[PolicyRule]) {
    let mut granted = BTreeSet::new();
    for r in rules {
        let mut verbs = r.verbs.clone();
        verbs.sort();
        assert_eq!(
            verbs, READ_VERBS,
            "{what}: verbs beyond get/list/watch in {r:?}"
        );
        assert!(
            r.non_resource_urls.is_none() && r.resource_names.is_none(),
            "{what}: {r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                assert!(
                    !g.contains('*') && !res.contains('*'),
                    "{what}: wildcard in {r:?}"
                );
                granted.insert((g.clone(), res.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = READS
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, expected, "{what}: the rules grant other resources");
}

/// Reading Istio remote secrets: one Role in `ns` granting get/list/watch on Secrets and
/// nothing else, bound to the pods' service account alone.
fn check_remote_secrets_rbac(r: &Rendered, ns: &str, sa: &str, sa_ns: &str) {
    let what = &r.what;
    let role = role_for(r, ns, "secrets");
    let rules = role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{what}: {rules:?}");
    let rule = &rules[0];
    let mut verbs = rule.verbs.clone();
    verbs.sort();
    assert_eq!(verbs, READ_VERBS, "{what}: {rule:?}");
    assert_eq!(
        rule.api_groups,
        Some(vec![String::new()]),
        "{what}: {rule:?}"
    );
    assert_eq!(
        rule.resources,
        Some(vec!["secrets".to_string()]),
        "{what}: {rule:?}"
    );
    assert!(rule.non_resource_urls.is_none(), "{what}: {rule:?}");
    check_role_binding(r, &role, sa, sa_ns);
}

/// The one Role in `ns` whose rules name `resource`.
fn role_for(r: &Rendered, ns: &str, resource: &str) -> Role {
    let what = &r.what;
    let mut roles: Vec<Role> = r
        .all::<Role>("Role")
        .into_iter()
        .filter(|role| {
            role.rules
                .iter()
                .flatten()
                .any(|rule| rule.resources.iter().flatten().any(|res| res == resource))
        })
        .collect();
    assert_eq!(roles.len(), 1, "{what}: one Role on {resource}");
    let role = roles.remove(0);
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(ns),
        "{what}: the Role on {resource} is in namespace {ns}"
    );
    role
}

/// `role` is bound, by one RoleBinding in its namespace, to the pods' service account alone.
fn check_role_binding(r: &Rendered, role: &Role, sa: &str, sa_ns: &str) {
    let what = &r.what;
    let mut bindings: Vec<RoleBinding> = r
        .all::<RoleBinding>("RoleBinding")
        .into_iter()
        .filter(|b| Some(&b.role_ref.name) == role.metadata.name.as_ref())
        .collect();
    assert_eq!(
        bindings.len(),
        1,
        "{what}: one binding of {:?}",
        role.metadata.name
    );
    let binding = bindings.remove(0);
    assert_eq!(
        binding.metadata.namespace, role.metadata.namespace,
        "{what}: the binding is in the Role's namespace"
    );
    assert_eq!(binding.role_ref.kind, "Role", "{what}");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{what}: one subject");
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", sa, Some(sa_ns)),
        "{what}: the Role is bound to the pods' service account"
    );
}

/// Electing the Pub/Sub publisher (src/fanout/lease.rs): get, create and update of one Lease.
/// Exactly these rules: `create` on leases (it cannot be limited by name), `get` and `update`
/// on the Lease `name` only; no list, watch, patch or delete, nothing else.
fn check_lease_rules(what: &str, rules: &[PolicyRule], name: &str) {
    let mut granted = BTreeSet::new();
    for r in rules {
        assert!(r.non_resource_urls.is_none(), "{what}: {r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for verb in &r.verbs {
                    match &r.resource_names {
                        None => granted.insert((g.clone(), res.clone(), verb.clone(), None)),
                        Some(names) => {
                            assert!(!names.is_empty(), "{what}: empty resourceNames in {r:?}");
                            for n in names {
                                granted.insert((
                                    g.clone(),
                                    res.clone(),
                                    verb.clone(),
                                    Some(n.clone()),
                                ));
                            }
                            true
                        }
                    };
                }
            }
        }
    }
    let lease = |verb: &str, name: Option<&str>| {
        (
            "coordination.k8s.io".to_string(),
            "leases".to_string(),
            verb.to_string(),
            name.map(String::from),
        )
    };
    let expected = BTreeSet::from([
        lease("create", None),
        lease("get", Some(name)),
        lease("update", Some(name)),
    ]);
    assert_eq!(
        granted, expected,
        "{what}: the Lease Role grants other than create, and get/update of {name}"
    );
}

fn check_lease_rbac(r: &Rendered, ns: &str, name: &str, sa: &str, sa_ns: &str) {
    let role = role_for(r, ns, "leases");
    check_lease_rules(&r.what, role.rules.as_deref().unwrap_or_default(), name);
    check_role_binding(r, &role, sa, sa_ns);
}

/// A DaemonSet or a Deployment: what the checks need of either.
struct Workload {
    kind: String,
    namespace: String,
    selector: BTreeMap<String, String>,
    template: PodTemplateSpec,
}

fn workload(r: &Rendered) -> Workload {
    let ds = r.all::<DaemonSet>("DaemonSet");
    let dep = r.all::<Deployment>("Deployment");
    assert_eq!(
        ds.len() + dep.len(),
        1,
        "{}: one DaemonSet or one Deployment",
        r.what
    );
    if let Some(d) = ds.into_iter().next() {
        let spec = d.spec.expect("spec");
        Workload {
            kind: "DaemonSet".into(),
            namespace: d.metadata.namespace.expect("namespace"),
            selector: spec.selector.match_labels.unwrap_or_default(),
            template: spec.template,
        }
    } else {
        let d = dep.into_iter().next().expect("one");
        let spec = d.spec.expect("spec");
        Workload {
            kind: "Deployment".into(),
            namespace: d.metadata.namespace.expect("namespace"),
            selector: spec.selector.match_labels.unwrap_or_default(),
            template: spec.template,
        }
    }
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// What the config in the ConfigMap says, as far as the manifests depend on it.
struct ConfigFacts {
    zone: String,
    dns_port: u16,
    ops_port: u16,
    drain: Duration,
    /// Where Istio remote secrets are read (`discover.istio_remote_secrets`), if they are.
    remote_secrets_namespace: Option<String>,
    /// The publisher's Lease (namespace, name), where the config has `publish`.
    lease: Option<(String, String)>,
    /// Whether the config talks to Pub/Sub (`publish`, or a `pubsub` source).
    pubsub: bool,
}

/// The downward-API field an env var of the container comes from.
fn env_field<'a>(c: &'a Container, var: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == var)
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
}

fn container(w: &Workload) -> &Container {
    let spec = w.template.spec.as_ref().expect("pod spec");
    assert_eq!(spec.containers.len(), 1, "one container");
    &spec.containers[0]
}

fn port_named(c: &Container, name: &str) -> (i32, String) {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| (p.container_port, p.protocol.clone().unwrap_or("TCP".into())))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The ConfigMap the pod mounts, passed through the real `meshdns check`, and compared with
/// the pod that runs it.
fn check_config(r: &Rendered, w: &Workload) -> ConfigFacts {
    let what = &r.what;
    let c = container(w);
    let spec = w.template.spec.as_ref().expect("pod spec");
    let args = c.args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    assert_eq!(args[0], "serve", "{what}: the pod runs `meshdns serve`");
    let config_path = Path::new(&args[at + 1]);
    let (dir, file) = (
        config_path.parent().expect("dir"),
        config_path.file_name().expect("file"),
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == dir)
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {}", dir.display()));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let cm_name = &volume.config_map.as_ref().expect("a ConfigMap volume").name;
    let cm: ConfigMap = r
        .named("ConfigMap", cm_name)
        .unwrap_or_else(|| panic!("{what}: the pod mounts ConfigMap {cm_name}, not rendered"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some(w.namespace.as_str()));
    let data = cm.data.expect("data");
    let text = data
        .get(file.to_str().expect("utf-8"))
        .unwrap_or_else(|| panic!("{what}: ConfigMap {cm_name} has no {file:?}"));

    // The real binary validates it, with every file of the ConfigMap beside it.
    let tmp = tempfile::tempdir().expect("tempdir");
    for (k, v) in &data {
        std::fs::write(tmp.path().join(k), v).expect("write");
    }
    let out = run(Command::new(support::bin())
        .args(["check", "--config"])
        .arg(tmp.path().join(file)));
    assert!(
        out.status.success(),
        "{what}: meshdns check rejects the ConfigMap's config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let cfg: Value = serde_saphyr::from_str(text).expect("config YAML");
    let addr = |key: &str, default: u16| -> u16 {
        cfg["listen"][key]
            .as_str()
            .map(|a| a.parse::<std::net::SocketAddr>().expect("addr").port())
            .unwrap_or(default)
    };
    let facts = ConfigFacts {
        zone: cfg["zone"]
            .as_str()
            .unwrap_or("clusterset.local.")
            .trim_end_matches('.')
            .to_string(),
        dns_port: addr("dns", 53),
        ops_port: addr("ops", 9153),
        drain: cfg["drain"]
            .as_str()
            .map(|d| humantime::parse_duration(d).expect("drain"))
            .unwrap_or(Duration::from_secs(5)),
        remote_secrets_namespace: cfg["discover"]
            .as_object()
            .filter(|d| d.contains_key("istio_remote_secrets"))
            .map(|d| {
                d["istio_remote_secrets"]["namespace"]
                    .as_str()
                    .unwrap_or("istio-system")
                    .to_string()
            }),
        lease: cfg["publish"].as_object().map(|p| {
            let ns = match p.get("lease_namespace").and_then(Value::as_str) {
                Some(ns) => ns.to_string(),
                // meshdns's default is $POD_NAMESPACE (else "meshdns"): the pod must set it
                // from the downward API, or the Lease lands in a namespace nobody granted.
                None => {
                    assert_eq!(
                        env_field(c, "POD_NAMESPACE"),
                        Some("metadata.namespace"),
                        "{what}: publish without lease_namespace needs env POD_NAMESPACE"
                    );
                    w.namespace.clone()
                }
            };
            let name = p
                .get("lease_name")
                .and_then(Value::as_str)
                .unwrap_or("meshdns-publisher")
                .to_string();
            (ns, name)
        }),
        pubsub: cfg["publish"].is_object()
            || cfg["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["source"]["pubsub"].is_object()),
    };

    // Ports: the pod declares what meshdns binds, and the probes use the ops port.
    assert_eq!(
        port_named(c, "dns"),
        (facts.dns_port.into(), "UDP".into()),
        "{what}"
    );
    assert_eq!(
        port_named(c, "dns-tcp"),
        (facts.dns_port.into(), "TCP".into()),
        "{what}"
    );
    assert_eq!(
        port_named(c, "metrics").0,
        i32::from(facts.ops_port),
        "{what}"
    );
    // Without capabilities a non-root process cannot bind below 1024.
    assert!(
        facts.dns_port >= 1024,
        "{what}: DNS port {} needs NET_BIND_SERVICE",
        facts.dns_port
    );

    // The local cluster is read in-cluster, through the pod's service account.
    let clusters = cfg["clusters"].as_array().expect("clusters");
    let local = cfg["local_cluster"].as_str().expect("local_cluster set");
    let local = clusters
        .iter()
        .find(|c| c["name"] == local)
        .expect("local cluster listed");
    assert_eq!(
        local["source"],
        json!({"kube": {}}),
        "{what}: local cluster in-cluster"
    );
    assert_ne!(spec.automount_service_account_token, Some(false), "{what}");

    // Every remote kubeconfig the config names is a file the pod mounts.
    let mut provided = BTreeSet::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("volume");
        let mut secrets = Vec::new();
        if let Some(s) = &v.secret {
            secrets.push((s.secret_name.clone().unwrap_or_default(), s.items.clone()));
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    secrets.push((s.name.clone(), s.items.clone()));
                }
            }
        }
        for (secret, items) in secrets {
            for item in items.iter().flatten() {
                provided.insert((
                    format!("{}/{}", m.mount_path, item.path),
                    secret.clone(),
                    item.key.clone(),
                ));
            }
        }
    }
    for cl in clusters {
        if let Some(path) = cl["source"]["kube"]["kubeconfig"].as_str() {
            let name = cl["name"].as_str().expect("name");
            let hit = provided
                .iter()
                .find(|(p, _, _)| p == path)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: cluster {name}'s kubeconfig {path} is not mounted ({provided:?})"
                    )
                });
            // The Secret scripts/make-remote-kubeconfig makes for that cluster.
            assert_eq!(
                (hit.1.as_str(), hit.2.as_str()),
                (format!("meshdns-remote-{name}").as_str(), "kubeconfig"),
                "{what}"
            );
        }
    }
    facts
}

/// Everything an install must be, whatever the overlay.
fn check_install(r: &Rendered) -> (Workload, ConfigFacts) {
    let what = &r.what;
    let w = workload(r);
    let facts = check_config(r, &w);
    let spec = w.template.spec.as_ref().expect("pod spec");
    let c = container(&w);
    let labels = w
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        is_subset(&w.selector, &labels),
        "{what}: selector does not select the pods"
    );

    // Image: the crate's version.
    assert_eq!(
        c.image.as_deref(),
        Some(format!("meshdns:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "{what}: image tag"
    );

    // Restricted Pod Security Standard, and the image's user.
    let psc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    assert_eq!(
        psc.run_as_non_root.or(sc.run_as_non_root),
        Some(true),
        "{what}: runAsNonRoot"
    );
    let uid = sc.run_as_user.or(psc.run_as_user).expect("runAsUser");
    assert_eq!(
        uid,
        dockerfile_user().0,
        "{what}: runAsUser is the image's USER"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_ne!(sc.privileged, Some(true), "{what}");
    let caps = sc.capabilities.clone().expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{what}: drop ALL");
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "{what}: no capability added"
    );
    let seccomp = sc
        .seccomp_profile
        .or(psc.seccomp_profile)
        .expect("seccompProfile");
    assert_eq!(seccomp.type_, "RuntimeDefault", "{what}");
    assert_ne!(spec.host_network, Some(true), "{what}");
    assert!(
        c.ports.iter().flatten().all(|p| p.host_port.is_none()),
        "{what}: hostPort"
    );
    let ns: Namespace = r
        .named("Namespace", &w.namespace)
        .unwrap_or_else(|| panic!("{what}: Namespace {} not rendered", w.namespace));
    let ns_labels = ns.metadata.labels.unwrap_or_default();
    assert_eq!(
        ns_labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "{what}"
    );

    // Requests and limits for CPU and memory.
    let res = c.resources.clone().expect("resources");
    for (which, m) in [("requests", &res.requests), ("limits", &res.limits)] {
        let m = m.clone().unwrap_or_default();
        assert!(
            m.contains_key("cpu") && m.contains_key("memory"),
            "{what}: {which} {m:?}"
        );
    }

    // Probes on the ops port; a grace period longer than the drain.
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        let port = match get.port {
            IntOrString::Int(p) => p,
            IntOrString::String(name) => port_named(c, &name).0,
        };
        assert_eq!(port, i32::from(facts.ops_port), "{what}: {path} probe port");
    }
    let grace = spec
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace as u64) >= facts.drain + Duration::from_secs(5),
        "{what}: grace {grace}s not comfortably above the drain {:?}",
        facts.drain
    );

    // identity: auto reads <pod>@<node> from the downward API.
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(env_field(c, var), Some(field), "{what}: env {var}");
    }

    // Scrape annotations name the ops port.
    let ann = w
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true"),
        "{what}"
    );
    assert_eq!(
        ann.get("prometheus.io/port"),
        Some(&facts.ops_port.to_string()),
        "{what}"
    );

    // Priority class and service account exist.
    let pc = spec.priority_class_name.clone().expect("priorityClassName");
    let pc: PriorityClass = r
        .named("PriorityClass", &pc)
        .expect("PriorityClass rendered");
    assert!(
        pc.value > 0 && pc.value <= 1_000_000_000,
        "{what}: user classes stop at 1e9"
    );
    let sa_name = spec
        .service_account_name
        .clone()
        .expect("serviceAccountName");
    let sa: ServiceAccount = r.named("ServiceAccount", &sa_name).expect("ServiceAccount");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(w.namespace.as_str()));

    // Pub/Sub through Application Default Credentials: on GKE, Workload Identity (the service
    // account names its Google service account); elsewhere a key file, or the emulator.
    if facts.pubsub {
        let gsa = sa
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("iam.gke.io/gcp-service-account")
            .cloned();
        let env = |var: &str| c.env.iter().flatten().any(|e| e.name == var);
        match gsa {
            Some(gsa) => assert!(
                gsa.ends_with(".iam.gserviceaccount.com") && gsa.contains('@'),
                "{what}: {gsa:?} is not a Google service account"
            ),
            None => assert!(
                env("GOOGLE_APPLICATION_CREDENTIALS") || env("PUBSUB_EMULATOR_HOST"),
                "{what}: Pub/Sub without credentials (Workload Identity annotation, a key file)"
            ),
        }
    }

    // RBAC: one read-only ClusterRole bound to exactly that service account; only where the
    // config reads Istio remote secrets, get/list/watch on Secrets of that one namespace; only
    // where it publishes, the Lease election in the Lease's namespace. No other Role.
    let roles =
        usize::from(facts.remote_secrets_namespace.is_some()) + usize::from(facts.lease.is_some());
    assert_eq!(r.of_kind("Role").len(), roles, "{what}: Roles");
    assert_eq!(
        r.of_kind("RoleBinding").len(),
        roles,
        "{what}: RoleBindings"
    );
    if let Some(ns) = &facts.remote_secrets_namespace {
        check_remote_secrets_rbac(r, ns, &sa_name, &w.namespace);
    }
    if let Some((ns, name)) = &facts.lease {
        check_lease_rbac(r, ns, name, &sa_name, &w.namespace);
    }
    let role: ClusterRole = r.one("ClusterRole");
    assert!(role.aggregation_rule.is_none(), "{what}");
    check_rules(what, role.rules.as_deref().unwrap_or_default());
    let binding: ClusterRoleBinding = r.one("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.clone()), role.metadata.name);
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{what}: one subject");
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        (
            "ServiceAccount",
            sa_name.as_str(),
            Some(w.namespace.as_str())
        ),
        "{what}: the binding's subject is the pods' service account"
    );

    // The Service: a fixed ClusterIP, 53/UDP and 53/TCP to the pods' DNS ports.
    let svc: Service = r.named("Service", "meshdns").expect("Service meshdns");
    let ss = svc.spec.expect("spec");
    let ip: std::net::IpAddr = ss
        .cluster_ip
        .as_deref()
        .expect("a fixed clusterIP")
        .parse()
        .expect("clusterIP is an address");
    assert!(!ip.is_unspecified(), "{what}");
    assert!(
        is_subset(&ss.selector.clone().unwrap_or_default(), &labels),
        "{what}: Service selector"
    );
    let mut ports: Vec<(i32, String, i32)> = ss
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match p.target_port.clone().expect("targetPort") {
                IntOrString::Int(t) => t,
                IntOrString::String(name) => {
                    let (port, proto) = port_named(c, &name);
                    assert_eq!(
                        Some(&proto),
                        p.protocol.as_ref(),
                        "{what}: {name}'s protocol"
                    );
                    port
                }
            };
            (p.port, p.protocol.clone().unwrap_or("TCP".into()), target)
        })
        .collect();
    ports.sort();
    let dns = i32::from(facts.dns_port);
    assert_eq!(
        ports,
        vec![(53, "TCP".into(), dns), (53, "UDP".into(), dns)],
        "{what}"
    );

    match w.kind.as_str() {
        "DaemonSet" => {
            let ds: DaemonSet = r.one("DaemonSet");
            let strategy = ds
                .spec
                .and_then(|s| s.update_strategy)
                .expect("updateStrategy");
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{what}");
            let ru = strategy.rolling_update.expect("rollingUpdate");
            assert_eq!(
                ru.max_unavailable,
                Some(IntOrString::Int(0)),
                "{what}: surge, not gaps"
            );
            assert!(ru.max_surge.is_some(), "{what}");
            // Every node, whatever its taints.
            assert!(
                spec.tolerations
                    .iter()
                    .flatten()
                    .any(|t| t.operator.as_deref() == Some("Exists")
                        && t.key.is_none()
                        && t.effect.is_none()),
                "{what}: tolerate every taint"
            );
            assert_eq!(
                ss.internal_traffic_policy.as_deref(),
                Some("Local"),
                "{what}"
            );
        }
        _ => {
            let dep: Deployment = r.one("Deployment");
            let replicas = dep.spec.and_then(|s| s.replicas).unwrap_or(1);
            assert!(replicas >= 2, "{what}: a few replicas");
            assert_ne!(
                ss.internal_traffic_policy.as_deref(),
                Some("Local"),
                "{what}"
            );
            let anti = spec
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.clone())
                .expect("podAntiAffinity");
            let terms = anti
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default();
            assert!(
                terms
                    .iter()
                    .any(|t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname"),
                "{what}: spread over nodes"
            );
            assert!(
                !spec
                    .tolerations
                    .iter()
                    .flatten()
                    .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
                "{what}: a Deployment must not stay on dead nodes"
            );
            let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget");
            let sel = pdb
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.match_labels);
            assert!(
                is_subset(&sel.unwrap_or_default(), &labels),
                "{what}: PDB selector"
            );
        }
    }

    // Monitors select the pods and scrape a port they have.
    for m in r
        .of_kind("PodMonitor")
        .into_iter()
        .chain(r.of_kind("PodMonitoring"))
    {
        let sel: BTreeMap<String, String> =
            serde_json::from_value(m["spec"]["selector"]["matchLabels"].clone()).expect("labels");
        assert!(is_subset(&sel, &labels), "{what}: {} selector", name_of(m));
        assert_eq!(m["metadata"]["namespace"], w.namespace.as_str(), "{what}");
        let eps = m["spec"]["podMetricsEndpoints"]
            .as_array()
            .or(m["spec"]["endpoints"].as_array());
        for ep in eps.expect("endpoints") {
            let port = ep["port"].as_str().expect("port name");
            assert_eq!(port_named(c, port).0, i32::from(facts.ops_port), "{what}");
        }
    }

    // kube-dns's stub domain names our zone and our Service.
    for cm in r.all::<ConfigMap>("ConfigMap") {
        if cm.metadata.name.as_deref() != Some("kube-dns") {
            continue;
        }
        assert_eq!(
            cm.metadata.namespace.as_deref(),
            Some("kube-system"),
            "{what}"
        );
        let stub = cm
            .data
            .unwrap_or_default()
            .get("stubDomains")
            .cloned()
            .expect("stubDomains");
        let stub: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&stub).unwrap_or_else(|e| panic!("{what}: stubDomains: {e}"));
        assert_eq!(
            stub.get(&facts.zone),
            Some(&vec![ip.to_string()]),
            "{what}: {stub:?}"
        );
    }
    (w, facts)
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn base_and_every_overlay_render_into_a_valid_install() {
    let base = Rendered::new("deploy/base", kustomize(&repo().join("deploy/base")));
    check_install(&base);
    let overlays = subdirs(&repo().join("deploy/overlays"));
    let names: Vec<_> = overlays
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    for expected in [
        "single-cluster",
        "fleet-member",
        "deployment",
        "istio-fleet",
        "pubsub-fleet",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "overlay {expected} missing: {names:?}"
        );
    }
    for dir in &overlays {
        let what = format!(
            "deploy/overlays/{}",
            dir.file_name().unwrap().to_string_lossy()
        );
        let r = Rendered::new(what, kustomize(dir));
        check_install(&r);
    }
}

#[test]
fn the_fleet_member_mounts_its_peers_and_the_deployment_keeps_its_pods() {
    let fleet = Rendered::new(
        "fleet-member",
        kustomize(&repo().join("deploy/overlays/fleet-member")),
    );
    let (ds, _) = check_install(&fleet);
    assert_eq!(ds.kind, "DaemonSet");
    let dep = Rendered::new(
        "deployment",
        kustomize(&repo().join("deploy/overlays/deployment")),
    );
    let (d, _) = check_install(&dep);
    assert_eq!(d.kind, "Deployment");
    // The Deployment runs the fleet member's pods: only placement and CPU differ.
    let strip = |t: &PodTemplateSpec| {
        let mut v = serde_json::to_value(t).expect("json");
        let spec = v["spec"].as_object_mut().expect("spec");
        for k in ["affinity", "topologySpreadConstraints", "tolerations"] {
            spec.remove(k);
        }
        v["spec"]["containers"][0]["resources"]["requests"]
            .as_object_mut()
            .expect("requests")
            .remove("cpu");
        v
    };
    assert_eq!(strip(&ds.template), strip(&d.template));
    let fleet_cfg: Vec<ConfigMap> = fleet.all("ConfigMap");
    let dep_cfg: Vec<ConfigMap> = dep.all("ConfigMap");
    assert_eq!(fleet_cfg, dep_cfg, "same config");
    // More than one cluster, the remote ones from mounted Secrets.
    let cfg = fleet_cfg[0]
        .data
        .as_ref()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert!(
        cfg.contains("kubeconfig: /etc/meshdns/clusters/beta"),
        "{cfg}"
    );
}

#[test]
fn every_component_composes_with_the_overlays() {
    let components = subdirs(&repo().join("deploy/components"));
    assert!(components.len() >= 4, "{components:?}");
    for overlay in ["single-cluster", "fleet-member", "pubsub-fleet"] {
        let overlay_dir = repo().join("deploy/overlays").join(overlay);
        for c in &components {
            let name = c.file_name().unwrap().to_string_lossy().into_owned();
            let r = Rendered::new(
                format!("{overlay} + components/{name}"),
                kustomize_with(&overlay_dir, std::slice::from_ref(c)),
            );
            check_install(&r);
            let has = |kind: &str| !r.of_kind(kind).is_empty();
            match name.as_str() {
                "deployment" => assert!(has("Deployment") && has("PodDisruptionBudget")),
                "prometheus-operator" => assert!(has("PodMonitor")),
                "gke-managed-prometheus" => assert!(has("PodMonitoring")),
                "kube-dns-stub-domain" => {
                    let cm: ConfigMap = r.named("ConfigMap", "kube-dns").expect("kube-dns");
                    assert!(cm.data.unwrap()["stubDomains"].contains("clusterset.local"));
                }
                other => panic!("component {other} has no check here: add one"),
            }
        }
    }
    // All at once, too.
    let r = Rendered::new(
        "fleet-member + every component",
        kustomize_with(&repo().join("deploy/overlays/fleet-member"), &components),
    );
    check_install(&r);
}

/// README's RBAC block is what the manifests and the remote script grant.
#[test]
fn rbac_matches_the_readme() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let from = readme
        .find("**RBAC**")
        .expect("README has an RBAC paragraph");
    let block = &readme[from..];
    let start = block.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + block[start..].find("```").expect("block end");
    let v: Value = serde_saphyr::from_str(&block[start..end]).expect("README RBAC YAML");
    let rules: Vec<PolicyRule> = serde_json::from_value(v["rules"].clone()).expect("rules");
    check_rules("README", &rules);
    let base = Rendered::new("deploy/base", kustomize(&repo().join("deploy/base")));
    let role: ClusterRole = base.one("ClusterRole");
    assert_eq!(
        role.rules.unwrap(),
        rules,
        "deploy/base/rbac.yaml and README differ"
    );
}

/// The forwarding recipes forward our zone to the base Service's address.
#[test]
fn forwarding_recipes_point_at_the_service() {
    let base = Rendered::new("deploy/base", kustomize(&repo().join("deploy/base")));
    let svc: Service = base.named("Service", "meshdns").unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    for file in ["coredns.Corefile", "nodelocaldns.Corefile"] {
        let text = std::fs::read_to_string(repo().join("deploy/forwarding").join(file)).unwrap();
        let blocks = corefile_blocks(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (_, body) = blocks
            .iter()
            .find(|(zones, _)| zones == &["clusterset.local:53"])
            .unwrap_or_else(|| panic!("{file}: no clusterset.local:53 block in {blocks:?}"));
        assert!(
            body.iter().any(|l| l == &format!("forward . {ip}")),
            "{file}: does not forward to {ip}: {body:?}"
        );
        for (zones, body) in &blocks {
            for z in zones {
                assert!(
                    z.ends_with(":53")
                        && (z.starts_with("clusterset.local") || z.ends_with(".in-addr.arpa:53")),
                    "{file}: unexpected zone {z}"
                );
            }
            assert!(
                body.iter().any(|l| l.starts_with("forward . ")),
                "{file}: {zones:?}"
            );
        }
    }
}

/// Corefile server blocks: (zones, directive lines), nested blocks flattened; comments dropped.
/// A Corefile server block: its zones and its directive lines.
type ServerBlock = (Vec<String>, Vec<String>);

fn corefile_blocks(text: &str) -> Result<Vec<ServerBlock>, String> {
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<ServerBlock> = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if depth == 0 {
            let head = line
                .strip_suffix('{')
                .ok_or(format!("expected a server block: {line}"))?;
            current = Some((
                head.split_whitespace().map(String::from).collect(),
                Vec::new(),
            ));
            depth = 1;
            continue;
        }
        if line == "}" {
            depth -= 1;
            if depth == 0 {
                blocks.push(current.take().expect("open block"));
            }
            continue;
        }
        if line.ends_with('{') {
            depth += 1;
        }
        current
            .as_mut()
            .expect("open block")
            .1
            .push(line.to_string());
    }
    if depth != 0 {
        return Err("unbalanced braces".into());
    }
    Ok(blocks)
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

struct Dockerfile {
    /// (uid, gid) of the final stage.
    user: (i64, i64),
}

/// Instructions of the Dockerfile, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(rest) = t.strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let (op, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_string()));
        pending.clear();
    }
    out
}

/// The final stage's USER, uid:gid.
fn dockerfile_user() -> (i64, i64) {
    let ins = dockerfile_instructions();
    let user = &ins.iter().rfind(|(op, _)| op == "USER").expect("USER").1;
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    (
        uid.parse().expect("numeric uid"),
        gid.parse().expect("numeric gid"),
    )
}

fn dockerfile() -> Dockerfile {
    let ins = dockerfile_instructions();
    // Stages: the builder, then the runtime.
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    let (builder_image, alias) = froms[0].split_once(" AS ").expect("FROM … AS builder");
    assert_eq!(alias.trim(), "builder");
    assert!(
        builder_image.contains("rust:") && builder_image.contains("bookworm"),
        "{builder_image}"
    );
    assert!(
        froms[1].starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "runtime: distroless, same Debian as the builder (glibc): {}",
        froms[1]
    );
    let second = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let (build, runtime) = ins.split_at(second);

    // The toolchain is at least the crate's rust-version.
    let arg = ins
        .iter()
        .find_map(|(op, a)| {
            (op == "ARG")
                .then(|| a.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("ARG RUST_VERSION=");
    let version =
        |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().expect("number")).collect() };
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    assert!(
        version(arg) >= version(msrv),
        "RUST_VERSION {arg} < rust-version {msrv}"
    );

    // The build, and where its binary lands.
    let runs: Vec<&String> = build
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a)
        .collect();
    let cargo = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build");
    assert!(cargo.contains("cargo build --release --locked"), "{cargo}");
    let installed = cargo
        .split("&&")
        .find_map(|c| c.trim().strip_prefix("install "))
        .expect("install of the binary")
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(installed[installed.len() - 2], "target/release/meshdns");
    let built = installed[installed.len() - 1];

    // The runtime stage: no shell (no RUN), the builder's binary, a numeric non-root user.
    assert!(
        runtime.iter().all(|(op, _)| op != "RUN"),
        "no RUN in a shell-less image"
    );
    let copy = runtime
        .iter()
        .find_map(|(op, a)| {
            (op == "COPY")
                .then(|| a.strip_prefix("--from=builder "))
                .flatten()
        })
        .expect("COPY --from=builder");
    let (src, dst) = copy.split_once(' ').expect("src dst");
    assert_eq!(src, built, "the runtime copies what the builder installed");
    assert!(
        runtime.iter().any(|(op, _)| op == "USER"),
        "USER in the runtime stage"
    );
    let user = dockerfile_user();
    assert!(user.0 != 0 && user.1 != 0, "non-root");
    let exec = |op: &str| -> Vec<String> {
        let a = &runtime
            .iter()
            .find(|(o, _)| o == op)
            .unwrap_or_else(|| panic!("{op}"))
            .1;
        serde_json::from_str(a).unwrap_or_else(|_| panic!("{op} in exec (JSON) form: {a}"))
    };
    assert_eq!(
        exec("ENTRYPOINT"),
        vec![dst.to_string()],
        "ENTRYPOINT runs the binary"
    );

    // CMD and EXPOSE agree with the DaemonSet and its config.
    let base = Rendered::new("deploy/base", kustomize(&repo().join("deploy/base")));
    let w = workload(&base);
    let facts = check_config(&base, &w);
    assert_eq!(
        Some(exec("CMD")),
        container(&w).args,
        "CMD = the pod's args"
    );
    let exposed: BTreeSet<String> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(String::from))
        .collect();
    let want: BTreeSet<String> = [
        format!("{}/udp", facts.dns_port),
        format!("{}/tcp", facts.dns_port),
        format!("{}/tcp", facts.ops_port),
    ]
    .into();
    assert_eq!(exposed, want);
    Dockerfile { user }
}

#[test]
fn the_dockerfile_builds_the_binary_the_manifests_run() {
    let d = dockerfile();
    assert_eq!(d.user, (65532, 65532));
}

/// The build context (the Dockerfile's COPY sources, less .dockerignore) holds a workspace
/// cargo can load with the lock file as it is.
#[test]
fn the_docker_build_context_holds_a_loadable_workspace() {
    let ins = dockerfile_instructions();
    let second = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ignored = |path: &str| {
        patterns.iter().any(|p| {
            assert!(
                !p.starts_with('!'),
                "exceptions in .dockerignore: teach this test"
            );
            if let Some(name) = p.strip_prefix("**/") {
                path.split('/').any(|c| c == name || wildcard(name, c))
            } else {
                let first = path.split('/').next().unwrap_or("");
                first == *p || wildcard(p, first)
            }
        })
    };
    let ctx = tempfile::tempdir().expect("tempdir");
    let mut copied = 0;
    for (op, args) in &ins[..second] {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                !ignored(src),
                ".dockerignore excludes {src}, which the build copies"
            );
            let from = repo().join(src);
            assert!(from.exists(), "COPY {src}: no such path");
            copy_tree(&from, &ctx.path().join(src));
            copied += 1;
        }
    }
    assert!(copied >= 4, "{copied} COPY sources");
    for never in ["target", ".git"] {
        assert!(
            ignored(never),
            ".dockerignore lets {never} into the context"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo)
        .current_dir(ctx.path())
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", "x86_64-unknown-linux-gnu"]));
    assert!(
        out.status.success(),
        "the build context does not load as a workspace:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let members: Vec<&Value> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let mut bin = false;
    for p in meta["packages"].as_array().unwrap() {
        if !members.contains(&&p["id"]) {
            continue;
        }
        // cargo metadata leaves out a declared target whose file is missing; cargo build
        // fails on it (a [[bench]] whose file was not copied).
        let targets = p["targets"].as_array().unwrap();
        let manifest = std::fs::read_to_string(p["manifest_path"].as_str().unwrap()).unwrap();
        for (kind, name) in declared_targets(&manifest) {
            assert!(
                targets
                    .iter()
                    .any(|t| t["name"] == name.as_str() && t["kind"] == json!([kind])),
                "{} declares {kind} {name}, whose file is not in the build context",
                p["name"]
            );
        }
        bin |= p["name"] == "meshdns"
            && targets
                .iter()
                .any(|t| t["name"] == "meshdns" && t["kind"] == json!(["bin"]));
    }
    assert!(bin, "no meshdns binary target in the context");
}

/// The targets a Cargo.toml declares by name: `[[bin]]`, `[[test]]`, `[[bench]]`,
/// `[[example]]` sections and their `name = "…"`.
fn declared_targets(manifest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut kind: Option<String> = None;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            kind = line
                .strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .filter(|k| ["bin", "test", "bench", "example"].contains(k))
                .map(String::from);
        } else if let (Some(k), Some(v)) = (&kind, line.strip_prefix("name"))
            && let Some(v) = v.trim_start().strip_prefix('=')
        {
            out.push((k.clone(), v.trim().trim_matches('"').to_string()));
        }
    }
    out
}

/// `*` in a single path component (what .dockerignore patterns here use).
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_name() == "target" {
                continue;
            }
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::copy(from, to).expect("copy");
    }
}

// ---------------------------------------------------------------------------------------------
// scripts/make-remote-kubeconfig

fn script() -> PathBuf {
    repo().join("scripts/make-remote-kubeconfig")
}

#[test]
fn the_remote_kubeconfig_script_is_sound_shell() {
    let out = run(Command::new("bash").arg("-n").arg(script()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // shellcheck when installed (apt-get install shellcheck).
    if let Ok(out) = Command::new("shellcheck").arg(script()).output() {
        assert!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for bad in [
        &["--name", "beta", "--server", "https://x", "--dry-run"][..],
        &[
            "--context",
            "b",
            "--name",
            "Beta",
            "--server",
            "https://x",
            "--dry-run",
        ],
        &[
            "--context",
            "b",
            "--name",
            "beta",
            "--server",
            "http://x",
            "--dry-run",
        ],
        &["--context", "b", "--name", "beta", "--bogus"],
    ] {
        let out = run(Command::new(script()).args(bad));
        assert_eq!(out.status.code(), Some(2), "{bad:?} accepted");
        assert!(out.stdout.is_empty(), "{bad:?} printed to stdout");
    }
}

/// The objects for the remote cluster: a read-only service account with a token.
fn check_remote_objects(what: &str, objs: &[Value]) {
    let r = Rendered::new(what, objs.to_vec());
    let role: ClusterRole = r.one("ClusterRole");
    check_rules(what, role.rules.as_deref().unwrap_or_default());
    let base = Rendered::new("deploy/base", kustomize(&repo().join("deploy/base")));
    let base_role: ClusterRole = base.one("ClusterRole");
    assert_eq!(
        role.rules, base_role.rules,
        "{what}: same rules as deploy/base/rbac.yaml"
    );
    let sa: ServiceAccount = r.one("ServiceAccount");
    let binding: ClusterRoleBinding = r.one("ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let s = &binding.subjects.unwrap()[0];
    assert_eq!(
        (Some(s.name.clone()), s.namespace.clone()),
        (sa.metadata.name.clone(), sa.metadata.namespace.clone())
    );
    let token = r
        .all::<Secret>("Secret")
        .into_iter()
        .find(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .expect("a token Secret");
    assert_eq!(
        token
            .metadata
            .annotations
            .unwrap()
            .get("kubernetes.io/service-account.name"),
        sa.metadata.name.as_ref()
    );
    assert_eq!(token.metadata.namespace, sa.metadata.namespace);
}

/// The Secret for the other clusters, and the kubeconfig inside it.
fn kubeconfig_of(secret: &Secret, cluster: &str) -> String {
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(format!("meshdns-remote-{cluster}").as_str())
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("meshdns"));
    let data = secret.data.as_ref().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["kubeconfig"]);
    String::from_utf8(data["kubeconfig"].0.clone()).expect("utf-8")
}

#[test]
fn the_remote_kubeconfig_script_dry_run_prints_valid_objects() {
    let out = run(Command::new(script()).args([
        "--context",
        "gke_proj-b_us-central1_beta",
        "--name",
        "beta",
        "--server",
        "https://10.0.16.2",
        "--dry-run",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    let kinds: Vec<&str> = objs.iter().map(|o| api_kind(o).1).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Secret",
            "Secret"
        ]
    );
    check_remote_objects("dry run", &objs);
    let secret: Secret = strict(&objs[5]).unwrap();
    let kc =
        kube::config::Kubeconfig::from_yaml(&kubeconfig_of(&secret, "beta")).expect("kubeconfig");
    assert_eq!(kc.current_context.as_deref(), Some("beta"));
    let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
    assert_eq!(cluster.server.as_deref(), Some("https://10.0.16.2"));
}

/// A self-signed CA certificate (no key anywhere): what the stand-in kubectl hands out as the
/// remote cluster's CA.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUezNZcnOgZpfUYszU1rIar/PpUXAwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPbWVzaGRucy10ZXN0LWNhMCAXDTI2MTEyNTA5MDg0NFoYDzIx
MjYxMTAxMDkwODQ0WjAaMRgwFgYDVQQDDA9tZXNoZG5zLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAS0Apwv0SRsrXwCzRhzBNLkRzRBTtrGRBmCm8rb
UC4Tc29LPIvdgtuMmReZ+CLDEfeaiD3v98o7bJ37QOgNTm7fo1MwUTAdBgNVHQ4E
FgQUAV2zOj4qenuQhgL4ydbyNY41prwwHwYDVR0jBBgwFoAUAV2zOj4qenuQhgL4
ydbyNY41prwwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAvWBBB
8SsWHp6Dmj62+hHsSsan4FQsmEboax/DShu6jQIhANsktB/bzZtlTt/s6krBRTc6
3ikxPTPR45LXfg/DWRyD
-----END CERTIFICATE-----
";

/// A stand-in `kubectl`: records what it is asked to apply, answers the token on the second
/// ask (so the script has to wait), and knows nothing else.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
set -eu
dir="$FAKE_KUBECTL_DIR"
ctx=none
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} == --context ]]; then ctx=${args[i+1]}; fi
done
echo "$ctx $*" >> "$dir/calls"
case " $* " in
*" get namespace "*) exit 1 ;;
*" create namespace "*) echo "namespace/${args[-1]} created"; exit 0 ;;
*" apply -f - "*) n=$(ls "$dir" | grep -c '^apply-' || true); cat > "$dir/apply-$n-$ctx.yaml"; echo applied; exit 0 ;;
*"jsonpath={.data.token}"*)
    echo x >> "$dir/token-asks"
    if (( $(wc -l < "$dir/token-asks") >= 2 )); then printf '%s' "$FAKE_TOKEN_B64"; fi
    exit 0 ;;
*'jsonpath={.data.ca\.crt}'*) printf '%s' "$FAKE_CA_B64"; exit 0 ;;
esac
echo "fake kubectl: unexpected: $*" >&2
exit 3
"#;

fn b64(s: &str) -> String {
    let b = k8s_openapi::ByteString(s.as_bytes().to_vec());
    serde_json::to_value(&b)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_remote_kubeconfig_script_makes_a_kubeconfig_meshdns_loads() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let token = "eyJhbGciOiJSUzI1NiJ9.fake-token-for-beta.sig";
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script_run = |extra: &[&str]| {
        let _ = std::fs::remove_file(state.join("token-asks"));
        run(Command::new(script())
            .args([
                "--context",
                "beta-ctx",
                "--name",
                "beta",
                "--server",
                "https://10.0.16.2",
            ])
            .args(["--timeout", "10"])
            .args(extra)
            .env("PATH", &path)
            .env("FAKE_KUBECTL_DIR", &state)
            .env("FAKE_TOKEN_B64", b64(token))
            .env("FAKE_CA_B64", b64(TEST_CA)))
    };

    // Printing the kubeconfig.
    let out = script_run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    assert!(
        calls.contains("beta-ctx create namespace meshdns"),
        "{calls}"
    );
    let applied =
        std::fs::read_to_string(state.join("apply-0-beta-ctx.yaml")).expect("remote apply");
    check_remote_objects("applied to the remote cluster", &yaml_docs(&applied));
    assert_eq!(
        std::fs::read_to_string(state.join("token-asks"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // meshdns's own loader takes it: Kubeconfig::read_from → Config → Client.
    let file = dir.path().join("beta");
    std::fs::write(&file, &out.stdout).unwrap();
    let raw: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(raw["users"][0]["user"]["token"], token);
    let kc = kube::config::Kubeconfig::read_from(&file).expect("kubeconfig");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("a usable kubeconfig");
        assert_eq!(cfg.cluster_url.to_string(), "https://10.0.16.2/");
        assert!(
            cfg.root_cert.as_ref().is_some_and(|c| c.len() == 1),
            "the CA is read"
        );
        kube::Client::try_from(cfg).expect("a client");
    });

    // Applying the Secret to two other clusters.
    let out = script_run(&["--apply-to", "alpha-ctx", "--apply-to", "gamma-ctx"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing printed when applying");
    for (n, ctx) in [(2, "alpha-ctx"), (3, "gamma-ctx")] {
        let text = std::fs::read_to_string(state.join(format!("apply-{n}-{ctx}.yaml")))
            .unwrap_or_else(|e| panic!("no Secret applied to {ctx}: {e}"));
        let docs = yaml_docs(&text);
        assert_eq!(docs.len(), 1);
        let secret: Secret = strict(&docs[0]).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let kc = kubeconfig_of(&secret, "beta");
        assert_eq!(
            kc.as_bytes(),
            &std::fs::read(&file).unwrap()[..],
            "{ctx}: same kubeconfig"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Docs

/// Repository paths a text mentions (`deploy/…`, `scripts/…`, `docs/…`, and `components/…` /
/// `overlays/…` / `forwarding/…` meaning `deploy/…`); placeholders like `<cluster>` skipped.
fn mentioned_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "._/-<>".contains(c);
    let words = text.split(|c: char| !is_path_char(c));
    for w in words {
        let w = w.trim_end_matches(['.', '/']);
        if w.contains('<') || w.contains('>') {
            continue;
        }
        for (prefix, root) in [
            ("deploy/", ""),
            ("scripts/", ""),
            ("docs/", ""),
            ("components/", "deploy/"),
            ("overlays/", "deploy/"),
            ("forwarding/", "deploy/"),
        ] {
            if w.starts_with(prefix) && w.len() > prefix.len() {
                out.insert(format!("{root}{w}"));
                break;
            }
        }
    }
    out
}

#[test]
fn the_install_docs_name_paths_that_exist() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let at = readme
        .find("\n## Install in a fleet\n")
        .expect("README section Install in a fleet");
    let section = &readme[at..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    assert!(
        section.contains("(docs/install.md)"),
        "the section links docs/install.md"
    );
    let guide = std::fs::read_to_string(repo().join("docs/install.md")).expect("docs/install.md");
    let mut missing = Vec::new();
    for (doc, text) in [("README", section), ("docs/install.md", guide.as_str())] {
        let paths = mentioned_paths(text);
        assert!(paths.len() >= 5, "{doc}: {paths:?}");
        for p in paths {
            if !repo().join(&p).exists() {
                missing.push(format!("{doc}: {p}"));
            }
        }
    }
    assert!(missing.is_empty(), "paths that do not exist: {missing:?}");
}
