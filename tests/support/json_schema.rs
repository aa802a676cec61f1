//! A small JSON Schema validator for the documents in `docs/` (the subset
//! they use): `$ref` to a JSON pointer in the same document, `type` (one or a
//! list), `const`, `enum`, `required`, `properties`, `additionalProperties`
//! (`false` or a schema), `items`, `minItems`/`maxItems`, `minimum`/`maximum`,
//! `oneOf` (exactly one of the schemas holds).
//! Annotations (`description`, `examples`, `title`) and `x-` extensions are
//! ignored; any other keyword is an error, so a document that starts using one
//! fails loudly instead of validating less than it says. It never fetches
//! anything. Include it with `#[path = "support/json_schema.rs"] mod json_schema;`.
#![allow(dead_code)]

use serde_json::Value;

/// Validates `value` against `schema`, resolving `$ref`s in `root`. The error
/// names the path of the first mismatch.
pub fn validate(root: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    check(root, schema, value, "$", 0)
}

/// The value at a `#/a/b` reference in `root`.
pub fn resolve<'a>(root: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let pointer = reference.strip_prefix('#').ok_or_else(|| format!("only local $refs are supported: {reference}"))?;
    root.pointer(pointer).ok_or_else(|| format!("unresolved $ref {reference}"))
}

const MAX_DEPTH: usize = 64;
const ANNOTATIONS: &[&str] = &["description", "examples", "title", "$comment", "format"];

fn check(root: &Value, schema: &Value, value: &Value, path: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: schema nesting deeper than {MAX_DEPTH} ($ref cycle?)"));
    }
    let Some(obj) = schema.as_object() else {
        return match schema {
            Value::Bool(true) => Ok(()),
            Value::Bool(false) => Err(format!("{path}: no value is allowed here")),
            other => Err(format!("{path}: a schema must be an object or a boolean, not {other}")),
        };
    };
    for (key, rule) in obj {
        match key.as_str() {
            "$ref" => {
                let target = resolve(root, rule.as_str().unwrap_or_default())?;
                check(root, target, value, path, depth + 1)?;
            }
            "type" => {
                let names: Vec<&str> = match rule {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{path}: bad type keyword {rule}")),
                };
                if !names.iter().any(|t| has_type(value, t)) {
                    return Err(format!("{path}: {value} is not of type {names:?}"));
                }
            }
            "const" if value != rule => return Err(format!("{path}: {value} is not {rule}")),
            "enum" if !rule.as_array().is_some_and(|a| a.contains(value)) => {
                return Err(format!("{path}: {value} is not one of {rule}"));
            }
            "required" => {
                for name in rule.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if value.is_object() && value.get(name).is_none() {
                        return Err(format!("{path}: required property {name:?} is missing in {value}"));
                    }
                }
            }
            "properties" => {
                let (Some(props), Some(fields)) = (rule.as_object(), value.as_object()) else { continue };
                for (name, sub) in props {
                    if let Some(v) = fields.get(name) {
                        check(root, sub, v, &format!("{path}.{name}"), depth + 1)?;
                    }
                }
            }
            "additionalProperties" => {
                let Some(fields) = value.as_object() else { continue };
                let declared = obj.get("properties").and_then(Value::as_object);
                for (name, v) in fields {
                    if declared.is_some_and(|d| d.contains_key(name)) {
                        continue;
                    }
                    check(root, rule, v, &format!("{path}.{name}"), depth + 1)
                        .map_err(|e| format!("{e} (property {name:?} is not declared)"))?;
                }
            }
            "items" => {
                for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                    check(root, rule, v, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
            "minItems" | "maxItems" => {
                let (Some(items), Some(bound)) = (value.as_array(), rule.as_u64()) else { continue };
                let len = items.len() as u64;
                if (key == "minItems" && len < bound) || (key == "maxItems" && len > bound) {
                    return Err(format!("{path}: {len} items breaks {key} {bound}"));
                }
            }
            "minimum" | "maximum" => {
                let (Some(v), Some(bound)) = (value.as_f64(), rule.as_f64()) else { continue };
                if (key == "minimum" && v < bound) || (key == "maximum" && v > bound) {
                    return Err(format!("{path}: {v} breaks {key} {bound}"));
                }
            }
            "oneOf" => {
                let schemas = rule.as_array().ok_or_else(|| format!("{path}: oneOf must be an array"))?;
                let mut errors = Vec::new();
                for sub in schemas {
                    if let Err(e) = check(root, sub, value, path, depth + 1) {
                        errors.push(e);
                    }
                }
                let holds = schemas.len() - errors.len();
                if holds != 1 {
                    return Err(format!("{path}: {holds} of the oneOf schemas hold for {value}, not one: {errors:?}"));
                }
            }
            "const" | "enum" => {}
            k if ANNOTATIONS.contains(&k) || k.starts_with("x-") => {}
            k => return Err(format!("{path}: schema keyword {k:?} is not supported by tests/support/json_schema.rs")),
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_accepts_and_refuses_what_it_says() {
        let root = json!({"defs": {"C": {"type": "object", "required": ["t"], "additionalProperties": false,
            "properties": {"t": {"type": "integer", "minimum": 0}, "k": {"enum": ["a", "b"]}}}}});
        let one = json!({"oneOf": [{"type": "integer"}, {"type": "string"}]});
        assert!(validate(&root, &one, &json!(1)).is_ok());
        assert!(validate(&root, &one, &json!(true)).is_err());
        let both = json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
        assert!(validate(&root, &both, &json!(1)).is_err(), "two hold");
        let s = json!({"type": "array", "items": {"$ref": "#/defs/C"}, "maxItems": 2});
        assert!(validate(&root, &s, &json!([{"t": 1}, {"t": 0, "k": "a"}])).is_ok());
        for bad in [json!([{"t": -1}]), json!([{"k": "a"}]), json!([{"t": 1, "x": 0}]), json!([{"t": 1.5}]), json!([{"t": 1, "k": "c"}]), json!([{"t": 1}, {"t": 1}, {"t": 1}])] {
            assert!(validate(&root, &s, &bad).is_err(), "{bad}");
        }
        assert!(validate(&root, &json!({"pattern": "x"}), &json!("x")).is_err(), "unknown keywords are refused");
    }
}
