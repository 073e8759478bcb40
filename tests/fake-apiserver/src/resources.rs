//! The table of resources the fake serves. Adding a resource is one line in [`RESOURCES`].

/// One API resource: where it lives, what it is called, and how it is scoped.
#[derive(Debug)]
pub(crate) struct ResourceDef {
    /// API group; empty for the core group (served under `/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural used in URLs (`services`, `endpointslices`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// A custom resource (CRD): list items keep their `apiVersion`/`kind`, as
    /// the real apiserver does for unstructured objects.
    pub custom: bool,
    /// Whether the resource is in discovery and served when the server starts.
    pub installed_by_default: bool,
    /// Field-selector keys supported on top of `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
}

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        kind,
        plural,
        namespaced,
        custom: false,
        installed_by_default: true,
        fields: &[],
    }
}

impl ResourceDef {
    const fn fields(mut self, fields: &'static [&'static str]) -> Self {
        self.fields = fields;
        self
    }

    /// A CRD that is not installed until `set_resource_installed(.., true)`.
    const fn crd_not_installed(mut self) -> Self {
        self.custom = true;
        self.installed_by_default = false;
        self
    }

    /// `v1` or `group/version`: the object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `leases.coordination.k8s.io`, as used in error messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    pub fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.fields.contains(&field)
    }
}

/// Every resource the fake knows about.
pub(crate) const RESOURCES: &[ResourceDef] = &[
    res("", "v1", "Namespace", "namespaces", false).fields(&["status.phase"]),
    res("", "v1", "Service", "services", true).fields(&["spec.clusterIP", "spec.type"]),
    res("", "v1", "Secret", "secrets", true).fields(&["type"]),
    res("", "v1", "Pod", "pods", true).fields(&["spec.nodeName", "status.phase", "status.podIP"]),
    res(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    res("coordination.k8s.io", "v1", "Lease", "leases", true),
    res(
        "multicluster.x-k8s.io",
        "v1alpha1",
        "ServiceExport",
        "serviceexports",
        true,
    )
    .crd_not_installed(),
];

/// Verbs advertised in discovery for every resource.
pub(crate) const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// Index of the resource with this `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// Index of the resource with this group, version and plural.
pub(crate) fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Split `group/version` (or `v1`) into `(group, version)`.
pub(crate) fn split_group_version(gv: &str) -> (&str, &str) {
    match gv.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", gv),
    }
}
