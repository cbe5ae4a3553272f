//! Applying a compiled [`Schema`]: requests client → backend (renamed and checked), responses
//! backend → client (renamed only).
//!
//! # Contract
//!
//! [`request`] writes the parsed request body, its properties renamed, into `out`; it refuses
//! (with the path of the field) a value whose JSON type the schema does not allow, a value not
//! in its `enum`, a missing `required` property, and an unknown property where
//! `additionalProperties` is `false`. Properties the schema does not describe pass as they
//! are. [`response`] renames a raw JSON body and refuses only bytes that are not JSON.
//!
//! # Performance
//!
//! A property is found by trying the one after the last found (bodies usually follow the
//! schema's order), else by a scan over its object's properties (short lists); the required
//! check is a bitset on the stack. Requests are read from the worker's scratch tape (no tree).
//! Nothing is allocated: output goes to the caller's reused buffer, values the schema does
//! not describe are copied whole.

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedValue, ValueAsScalar, ValueType, Writable};
use simd_json::tape::{Object, Value};

use super::{EnumVal, Node, NodeId, Prop, Schema, Types, MAX_PROPERTIES};
use crate::adapt::json::{self, Malformed};
use crate::adapt::path::{invalid, At, Invalid};

/// Writes the request body `v` mapped through the schema's request root into `out`.
pub fn request(
    s: &Schema,
    root: NodeId,
    v: Value<'_, '_>,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    value(s, root, v, out, path)
}

fn value(
    s: &Schema,
    id: NodeId,
    v: Value<'_, '_>,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    let node = s.node(id);
    if node.opaque {
        let _ = v.write(out);
        return Ok(());
    }
    if !node.types.any() && !type_ok(node.types, v) {
        return invalid("does not have the type the schema requires");
    }
    if !node.enums.is_empty() && !node.enums.iter().any(|e| enum_eq(e, v)) {
        return invalid("is not one of the values the schema's `enum` allows");
    }
    if let Some(obj) = v.as_object() {
        return object(s, node, &obj, out, path);
    }
    if let (Some(items), Some(list)) = (node.items, v.as_array()) {
        out.push(b'[');
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            value(s, items, item, out, path).index(i, path)?;
        }
        out.push(b']');
        return Ok(());
    }
    let _ = v.write(out);
    Ok(())
}

fn object(
    s: &Schema,
    node: &Node,
    obj: &Object<'_, '_>,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    let mut seen = [0u64; MAX_PROPERTIES / 64];
    let mut hint = 0;
    out.push(b'{');
    for (n, (k, val)) in obj.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        match find(&node.props, |p| &p.public, k.as_bytes(), hint) {
            Some((i, p)) => {
                hint = i + 1;
                seen[i / 64] |= 1 << (i % 64);
                out.extend_from_slice(&p.backend_key);
                value(s, p.node, val, out, path).key(k, path)?;
            }
            None if !node.additional => {
                return invalid("is not a property the schema allows").key(k, path);
            }
            None => {
                json::write_str(out, k);
                out.push(b':');
                let _ = val.write(out);
            }
        }
    }
    out.push(b'}');
    for (i, p) in node.props.iter().enumerate() {
        if p.required && seen[i / 64] & (1 << (i % 64)) == 0 {
            return invalid("is required by the schema").key(&p.public, path);
        }
    }
    Ok(())
}

/// The property whose name (by `name`) is `key`. Bodies usually list properties in the
/// schema's order, so the one after the last found (`hint`) is tried first.
#[inline]
fn find<'p>(
    props: &'p [Prop],
    name: impl Fn(&Prop) -> &str,
    key: &[u8],
    hint: usize,
) -> Option<(usize, &'p Prop)> {
    let is = |p: &Prop| name(p).as_bytes() == key;
    if let Some(p) = props.get(hint).filter(|p| is(p)) {
        return Some((hint, p));
    }
    props.iter().enumerate().find(|(_, p)| is(p))
}

fn type_ok(t: Types, v: Value<'_, '_>) -> bool {
    match v.value_type() {
        ValueType::Null => t.has(Types::NULL),
        ValueType::Bool => t.has(Types::BOOLEAN),
        ValueType::I64 | ValueType::U64 => t.has(Types::INTEGER) || t.has(Types::NUMBER),
        ValueType::F64 => {
            t.has(Types::NUMBER)
                || (t.has(Types::INTEGER) && v.as_f64().is_some_and(|f| f.fract() == 0.0))
        }
        ValueType::String => t.has(Types::STRING),
        ValueType::Array => t.has(Types::ARRAY),
        ValueType::Object => t.has(Types::OBJECT),
        // simd-json's tape holds no other kinds (128-bit numbers are not enabled).
        _ => false,
    }
}

fn enum_eq(e: &EnumVal, v: Value<'_, '_>) -> bool {
    match e {
        EnumVal::Str(a) => v.as_str() == Some(&**a),
        EnumVal::Bool(a) => v.as_bool() == Some(*a),
        EnumVal::Null => v.value_type() == ValueType::Null,
        EnumVal::Int(a) => v.as_i64() == Some(*a) || v.as_f64() == Some(*a as f64),
        EnumVal::Float(a) => v.as_f64() == Some(*a),
    }
}

/// Writes the raw JSON response body `raw` mapped through the schema's response root.
pub fn response(s: &Schema, root: NodeId, raw: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    std::str::from_utf8(raw).map_err(|_| Malformed)?;
    let raw = json::trim(raw);
    match json::kind(raw) {
        json::Kind::Object | json::Kind::Array => raw_value(s, root, raw, out),
        _ => {
            out.extend_from_slice(json::check(raw)?);
            Ok(())
        }
    }
}

fn raw_value(s: &Schema, id: NodeId, raw: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let node = s.node(id);
    match json::kind(raw) {
        json::Kind::Object if !node.opaque && !node.props.is_empty() => {
            let mut hint = 0;
            out.push(b'{');
            for (n, m) in json::members(raw)?.enumerate() {
                let (k, v) = m?;
                if n > 0 {
                    out.push(b',');
                }
                match find(&node.props, |p| &p.backend, k, hint) {
                    Some((i, p)) => {
                        hint = i + 1;
                        out.extend_from_slice(&p.public_key);
                        raw_value(s, p.node, v, out)?;
                    }
                    None => {
                        out.push(b'"');
                        out.extend_from_slice(k);
                        out.extend_from_slice(b"\":");
                        out.extend_from_slice(v);
                    }
                }
            }
            out.push(b'}');
            Ok(())
        }
        json::Kind::Array if !node.opaque && node.items.is_some() => {
            let items = node.items.expect("checked");
            out.push(b'[');
            for (n, item) in json::items(raw)?.enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                raw_value(s, items, item?, out)?;
            }
            out.push(b']');
            Ok(())
        }
        // Nothing to rename inside: copied whole (validated by the reader that found it).
        json::Kind::Object | json::Kind::Array => {
            out.extend_from_slice(json::check(raw)?);
            Ok(())
        }
        _ => {
            out.extend_from_slice(raw);
            Ok(())
        }
    }
}
