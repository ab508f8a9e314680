//! Canonical JSON: the exact bytes a report signature covers.
//!
//! Object keys sorted by their UTF-8 bytes, no whitespace, strings escaped as
//! `serde_json` escapes them, numbers as `serde_json` prints them (integers as
//! digits, floats in the shortest form that reads back to the same value). The
//! same value always gives the same bytes, whatever the key order of the file it
//! was read from or how it was pretty-printed, so a report can be reformatted
//! without breaking its signature but not changed.
//!
//! This is close to RFC 8785 (JCS) but not identical: JCS sorts keys by UTF-16
//! code units and formats numbers as ECMAScript does. `docs/compliance.md` states
//! the rules above for anyone re-implementing the check.
use serde::Serialize;
use serde_json::Value;

/// Canonical bytes of any serializable value.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(4096);
    write(&value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, 2.5, "x"], "a": {"d": null, "c": true}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}"#).unwrap();
        assert_eq!(to_bytes(&a).unwrap(), to_bytes(&b).unwrap());
        assert_eq!(
            String::from_utf8(to_bytes(&a).unwrap()).unwrap(),
            r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}"#
        );
    }

    #[test]
    fn a_changed_value_changes_the_bytes() {
        assert_ne!(
            to_bytes(&json!({"value": 0.05})).unwrap(),
            to_bytes(&json!({"value": 0.050001})).unwrap()
        );
        assert_ne!(
            to_bytes(&json!({"s": "a\u{2028}"})).unwrap(),
            to_bytes(&json!({"s": "a"})).unwrap()
        );
    }
}
