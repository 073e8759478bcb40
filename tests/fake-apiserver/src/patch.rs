//! PATCH documents: JSON merge patch (RFC 7386; strategic merge patch is
//! treated the same, which is exact for objects without merge-keyed lists such
//! as Leases) and JSON patch (RFC 6902).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Some(PatchKind::Merge)
            }
            "application/json-patch+json" => Some(PatchKind::Json),
            _ => None,
        }
    }
}

pub(crate) fn apply(kind: PatchKind, current: &Value, patch: &Value) -> Result<Value, String> {
    let mut doc = current.clone();
    match kind {
        PatchKind::Merge => merge(&mut doc, patch),
        PatchKind::Json => json_patch(&mut doc, patch)?,
    }
    Ok(doc)
}

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let field = |f: &str| {
            op.get(f)
                .and_then(Value::as_str)
                .ok_or(format!("missing {f:?} in {op}"))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("missing \"value\" in {op}"))
        };
        match field("op")? {
            "add" => add(doc, path, value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, value()?)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path}"));
                }
            }
            "move" => {
                let moved = remove(doc, field("from")?)?;
                add(doc, path, moved)?;
            }
            "copy" => {
                let copied = doc
                    .pointer(field("from")?)
                    .cloned()
                    .ok_or("copy: no such path")?;
                add(doc, path, copied)?;
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(())
}

/// Split a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let idx = path
        .rfind('/')
        .ok_or(format!("invalid JSON pointer {path:?}"))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..idx], last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse()
                    .map_err(|_| format!("bad array index {last:?}"))?
            };
            if index > items.len() {
                return Err(format!("array index {index} out of range"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("add: no parent for {path:?}")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let removed = match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last),
        Some(Value::Array(items)) => last
            .parse::<usize>()
            .ok()
            .filter(|&i| i < items.len())
            .map(|i| items.remove(i)),
        _ => None,
    };
    removed.ok_or(format!("remove: no value at {path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let cur = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        let out = apply(
            PatchKind::Merge,
            &cur,
            &json!({"a": {"b": null, "e": 3}, "d": [3]}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let cur = json!({"spec": {"holderIdentity": "a", "list": [1]}});
        let patch = json!([
            {"op": "test", "path": "/spec/holderIdentity", "value": "a"},
            {"op": "replace", "path": "/spec/holderIdentity", "value": "b"},
            {"op": "add", "path": "/spec/list/-", "value": 2},
            {"op": "copy", "from": "/spec/holderIdentity", "path": "/spec/x~1y"},
            {"op": "remove", "path": "/spec/list/0"},
        ]);
        let out = apply(PatchKind::Json, &cur, &patch).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"holderIdentity": "b", "list": [2], "x/y": "b"}})
        );
        let failing = json!([{"op": "test", "path": "/spec/holderIdentity", "value": "z"}]);
        assert!(apply(PatchKind::Json, &cur, &failing).is_err());
    }
}
