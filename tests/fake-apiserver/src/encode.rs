//! JSON shapes of responses: objects as the client asked for them, list bodies,
//! watch event lines and `Status` errors.

use crate::resources::ResourceDef;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};

/// How an object is rendered in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// The whole object with `apiVersion` and `kind`.
    Full,
    /// A list item of a built-in type: the real apiserver omits `apiVersion` and `kind`.
    ListItem,
    /// `Accept: ...;as=PartialObjectMetadata`: only the metadata.
    Metadata,
}

impl View {
    /// The rendering of list items for a resource, given the requested view.
    pub fn for_list_item(self, def: &ResourceDef) -> View {
        match self {
            View::Full if !def.custom => View::ListItem,
            other => other,
        }
    }
}

/// An object rendered through a [`View`] without copying it.
pub(crate) struct Rendered<'a>(pub &'a Value, pub View);

impl Serialize for Rendered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Rendered(obj, view) = *self;
        match view {
            View::Full => obj.serialize(s),
            View::ListItem => {
                let Some(fields) = obj.as_object() else {
                    return obj.serialize(s);
                };
                let mut map = s.serialize_map(None)?;
                for (k, v) in fields {
                    if k != "apiVersion" && k != "kind" {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
            View::Metadata => {
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("kind", "PartialObjectMetadata")?;
                map.serialize_entry("apiVersion", "meta.k8s.io/v1")?;
                map.serialize_entry("metadata", obj.get("metadata").unwrap_or(&Value::Null))?;
                map.end()
            }
        }
    }
}

/// `{"kind":"XList","apiVersion":..,"metadata":..,"items":[..]}`.
pub(crate) fn list_body<'a>(
    def: &ResourceDef,
    view: View,
    list_meta: Value,
    items: impl Iterator<Item = &'a Value>,
) -> Vec<u8> {
    let (kind, api_version) = match view {
        View::Metadata => (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        _ => (def.list_kind(), def.api_version()),
    };
    let item_view = view.for_list_item(def);
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"kind\":");
    write_json(&mut out, &kind);
    out.extend_from_slice(b",\"apiVersion\":");
    write_json(&mut out, &api_version);
    out.extend_from_slice(b",\"metadata\":");
    write_json(&mut out, &list_meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(&mut out, &Rendered(item, item_view));
    }
    out.extend_from_slice(b"]}");
    out
}

/// One watch line: `{"type":"ADDED","object":{..}}\n`.
pub(crate) fn event_line(out: &mut Vec<u8>, event_type: &str, object: &Value, view: View) {
    out.extend_from_slice(b"{\"type\":");
    write_json(out, event_type);
    out.extend_from_slice(b",\"object\":");
    write_json(out, &Rendered(object, view));
    out.extend_from_slice(b"}\n");
}

/// The object of a BOOKMARK event.
pub(crate) fn bookmark(def: &ResourceDef, view: View, rv: u64, initial_events_end: bool) -> Value {
    let (kind, api_version) = match view {
        View::Metadata => (
            "PartialObjectMetadata".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        _ => (def.kind.to_string(), def.api_version()),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
}

/// A `meta.k8s.io/v1` `Status` describing a failure.
pub(crate) fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// `details` naming one object of a resource, as in NotFound/Conflict errors.
pub(crate) fn details(def: &ResourceDef, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": def.plural});
    if !def.group.is_empty() {
        details["group"] = def.group.into();
    }
    details
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("serialising JSON into memory cannot fail");
}
