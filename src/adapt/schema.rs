//! Schema-driven field mapping: an OpenAPI v3 document's `components.schemas`, compiled at
//! config load into a table the data path walks ([`Schema`]).
//!
//! # What is read
//!
//! A schema names the fields of the **client's** contract. A property's backend name is its
//! `x-protocol-field` when it has one (e.g. `userName` with `x-protocol-field: user_name`),
//! else the property name spelled by the transform's naming strategy ([`Naming`]). Requests
//! are renamed client → backend and checked; responses (JSON bodies and the `data:` of SSE
//! events) are renamed backend → client and not checked.
//!
//! Keywords: `$ref` (local JSON pointers, `#/components/schemas/User`; a cycle is a config
//! problem), `type` (a name or, as in 3.1, a list; `nullable: true` adds `null`),
//! `properties`, `required`, `additionalProperties` (`false` refuses unknown fields; a schema
//! there is treated as `true`), `items`, `enum` (scalars), `allOf` (its object schemas merged).
//! `oneOf`/`anyOf` are opaque: their values pass unmapped and unchecked. Other keywords
//! (`format`, `minimum`, `pattern`, descriptions ...) are ignored.
//!
//! # Contract
//!
//! [`compile`] builds a [`Schema`] or says what is wrong (the caller names the config key and
//! file). The mapping itself is [`map`].

pub mod map;

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

/// Deepest schema nesting compiled (through `properties`, `items`, `allOf` and `$ref`).
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Most properties one object schema may have (the required-field check keeps a bitset).
pub const MAX_PROPERTIES: usize = 256;

/// How the backend spells a property that has no `x-protocol-field`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// As the schema names it.
    #[default]
    AsIs,
    /// `userName` → `user_name`.
    SnakeCase,
    /// `user_name` → `userName`.
    CamelCase,
}

impl Naming {
    /// The backend's name for the property `name`.
    pub fn apply(self, name: &str) -> String {
        match self {
            Naming::AsIs => name.to_string(),
            Naming::SnakeCase => to_snake(name),
            Naming::CamelCase => to_camel(name),
        }
    }
}

fn to_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let boundary = prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(|p| p.is_ascii_uppercase())
                    && next.is_some_and(|n| n.is_ascii_lowercase()));
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '-' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

fn to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if (c == '_' || c == '-') && out.chars().all(|o| o == '_') {
            // Leading underscores are part of the name (`_private`).
            out.push('_');
        } else if c == '_' || c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A node's allowed JSON types (a bitset; empty: any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Types(u8);

impl Types {
    pub const OBJECT: u8 = 1;
    pub const ARRAY: u8 = 2;
    pub const STRING: u8 = 4;
    pub const INTEGER: u8 = 8;
    pub const NUMBER: u8 = 16;
    pub const BOOLEAN: u8 = 32;
    pub const NULL: u8 = 64;

    pub fn any(self) -> bool {
        self.0 == 0
    }
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    fn of_name(name: &str) -> Option<u8> {
        Some(match name {
            "object" => Self::OBJECT,
            "array" => Self::ARRAY,
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "boolean" => Self::BOOLEAN,
            "null" => Self::NULL,
            _ => return None,
        })
    }
}

/// One `enum` value.
#[derive(Debug, Clone, PartialEq)]
pub enum EnumVal {
    Str(Box<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// Index of a node in its schema's table.
pub type NodeId = u32;

/// One compiled schema.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub types: Types,
    pub props: Box<[Prop]>,
    /// `additionalProperties` is not `false`.
    pub additional: bool,
    pub items: Option<NodeId>,
    pub enums: Box<[EnumVal]>,
    /// `oneOf`/`anyOf`: the value passes as it is.
    pub opaque: bool,
}

/// A property of an object schema.
#[derive(Debug, Clone)]
pub struct Prop {
    /// The client's name.
    pub public: Box<str>,
    /// The backend's name.
    pub backend: Box<str>,
    pub node: NodeId,
    pub required: bool,
    /// `"public":` and `"backend":` as JSON, rendered once at compile time (written per
    /// member mapped).
    pub public_key: Box<[u8]>,
    pub backend_key: Box<[u8]>,
}

impl Prop {
    fn new(public: String, backend: String, node: NodeId, required: bool) -> Prop {
        let key = |name: &str| {
            let mut k = Vec::with_capacity(name.len() + 3);
            crate::adapt::json::write_str(&mut k, name);
            k.push(b':');
            k.into_boxed_slice()
        };
        Prop {
            public_key: key(&public),
            backend_key: key(&backend),
            public: public.into(),
            backend: backend.into(),
            node,
            required,
        }
    }
}

/// A compiled transform: one node table, the request and response roots.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    nodes: Box<[Node]>,
    pub request: Option<NodeId>,
    pub response: Option<NodeId>,
}

impl Schema {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

/// Compiles the schemas named `request` and `response` of `doc`'s `components.schemas`.
/// `Err`: what is wrong, for each of the two names, as `(which, message)` with `which` the
/// config key (`request_schema` or `response_schema`).
pub fn compile(
    doc: &Value,
    request: Option<&str>,
    response: Option<&str>,
    naming: Naming,
) -> Result<Schema, Vec<(&'static str, String)>> {
    let mut c = Compiler {
        doc,
        naming,
        nodes: Vec::new(),
        done: HashMap::new(),
        active: Vec::new(),
    };
    let mut problems = Vec::new();
    let mut root = |which: &'static str, name: Option<&str>, c: &mut Compiler<'_>| {
        let name = name?;
        if doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .is_none()
        {
            problems.push((
                which,
                "the document has no `components.schemas`".to_string(),
            ));
            return None;
        }
        let pointer = format!(
            "#/components/schemas/{}",
            name.replace('~', "~0").replace('/', "~1")
        );
        if doc.pointer(&pointer[1..]).is_none() {
            problems.push((
                which,
                format!("`components.schemas` has no schema `{name}`"),
            ));
            return None;
        }
        c.active.clear();
        c.reference(&pointer, "(config)", 0)
            .map_err(|e| problems.push((which, e)))
            .ok()
    };
    let request = root("request_schema", request, &mut c);
    let response = root("response_schema", response, &mut c);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Schema {
        nodes: c.nodes.into(),
        request,
        response,
    })
}

struct Compiler<'d> {
    doc: &'d Value,
    naming: Naming,
    nodes: Vec<Node>,
    /// Compiled `$ref` targets, by pointer.
    done: HashMap<String, NodeId>,
    /// The `$ref` chain being compiled (a pointer met again is a cycle).
    active: Vec<String>,
}

impl Compiler<'_> {
    fn reference(&mut self, pointer: &str, at: &str, depth: usize) -> Result<NodeId, String> {
        if let Some(&id) = self.done.get(pointer) {
            return Ok(id);
        }
        if let Some(i) = self.active.iter().position(|p| p == pointer) {
            let mut chain: Vec<&str> = self.active[i..].iter().map(String::as_str).collect();
            chain.push(pointer);
            return Err(format!("`$ref` cycle: {}", chain.join(" → ")));
        }
        let Some(target) = pointer.strip_prefix('#').and_then(|p| self.doc.pointer(p)) else {
            return Err(format!(
                "`$ref` `{pointer}` at `{at}` points to nothing in the document"
            ));
        };
        self.active.push(pointer.to_string());
        let id = self.schema(target, pointer, depth + 1)?;
        self.active.pop();
        self.done.insert(pointer.to_string(), id);
        Ok(id)
    }

    fn schema(&mut self, s: &Value, at: &str, depth: usize) -> Result<NodeId, String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!(
                "schema nesting deeper than {MAX_SCHEMA_DEPTH} at `{at}`"
            ));
        }
        let Some(obj) = s.as_object() else {
            return match s.as_bool() {
                // JSON Schema's `true`: anything.
                Some(true) => Ok(self.push(Node {
                    additional: true,
                    ..Node::default()
                })),
                _ => Err(format!("`{at}` is not a schema object")),
            };
        };
        if let Some(r) = obj.get("$ref") {
            let Some(r) = r.as_str().filter(|r| r.starts_with("#/")) else {
                return Err(format!(
                    "`$ref` at `{at}` is not a local reference (`#/components/schemas/...`)"
                ));
            };
            return self.reference(r, at, depth);
        }
        let mut node = Node {
            additional: true,
            ..Node::default()
        };
        if obj.contains_key("oneOf") || obj.contains_key("anyOf") {
            node.opaque = true;
            return Ok(self.push(node));
        }
        node.types = types(obj, at)?;
        let mut props: Vec<Prop> = Vec::new();
        let mut required: Vec<String> = Vec::new();
        if let Some(all) = obj.get("allOf") {
            let Some(all) = all.as_array() else {
                return Err(format!("`allOf` at `{at}` is not a list"));
            };
            for (i, sub) in all.iter().enumerate() {
                let id = self.schema(sub, &format!("{at}/allOf/{i}"), depth + 1)?;
                let sub = self.nodes[id as usize].clone();
                for p in sub.props.iter() {
                    if p.required {
                        required.push(p.public.to_string());
                    }
                    match props.iter_mut().find(|q| q.public == p.public) {
                        Some(q) => *q = p.clone(),
                        None => props.push(p.clone()),
                    }
                }
                node.additional &= sub.additional;
                if node.types.any() {
                    node.types = sub.types;
                }
                node.items = node.items.or(sub.items);
            }
        }
        if let Some(p) = obj.get("properties") {
            let Some(p) = p.as_object() else {
                return Err(format!("`properties` at `{at}` is not an object"));
            };
            for (name, sub) in p {
                let sub_at = format!("{at}/properties/{name}");
                let backend = match sub.get("x-protocol-field") {
                    None => self.naming.apply(name),
                    Some(Value::String(f)) if !f.is_empty() => f.clone(),
                    Some(_) => {
                        return Err(format!(
                            "`x-protocol-field` at `{sub_at}` must be a non-empty string"
                        ))
                    }
                };
                let id = self.schema(sub, &sub_at, depth + 1)?;
                let prop = Prop::new(name.to_string(), backend, id, false);
                match props.iter_mut().find(|q| q.public == prop.public) {
                    Some(q) => *q = prop,
                    None => props.push(prop),
                }
            }
        }
        if let Some(r) = obj.get("required") {
            let names = r.as_array().filter(|r| r.iter().all(Value::is_string));
            let Some(names) = names else {
                return Err(format!("`required` at `{at}` is not a list of names"));
            };
            required.extend(names.iter().filter_map(Value::as_str).map(str::to_string));
        }
        for name in required {
            match props.iter_mut().find(|p| *p.public == *name) {
                Some(p) => p.required = true,
                None => {
                    // Required but not described: its name is kept, its value unchecked.
                    let any = self.push(Node {
                        additional: true,
                        ..Node::default()
                    });
                    let backend = self.naming.apply(&name);
                    props.push(Prop::new(name.to_string(), backend, any, true));
                }
            }
        }
        if props.len() > MAX_PROPERTIES {
            return Err(format!("`{at}` has more than {MAX_PROPERTIES} properties"));
        }
        for (i, p) in props.iter().enumerate() {
            if let Some(q) = props[..i].iter().find(|q| q.backend == p.backend) {
                return Err(format!(
                    "properties `{}` and `{}` of `{at}` both map to the backend field `{}`",
                    q.public, p.public, p.backend
                ));
            }
        }
        node.props = props.into();
        match obj.get("additionalProperties") {
            None | Some(Value::Object(_)) => {}
            Some(Value::Bool(b)) => node.additional &= *b,
            Some(_) => {
                return Err(format!(
                    "`additionalProperties` at `{at}` is neither a boolean nor a schema"
                ))
            }
        }
        if let Some(items) = obj.get("items") {
            node.items = Some(self.schema(items, &format!("{at}/items"), depth + 1)?);
        }
        if let Some(e) = obj.get("enum") {
            let Some(e) = e.as_array() else {
                return Err(format!("`enum` at `{at}` is not a list"));
            };
            node.enums = e
                .iter()
                .map(|v| enum_val(v).ok_or_else(|| format!("`enum` at `{at}` has a value that is not a string, number, boolean or null")))
                .collect::<Result<_, _>>()?;
        }
        Ok(self.push(node))
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }
}

fn types(obj: &serde_json::Map<String, Value>, at: &str) -> Result<Types, String> {
    let mut bits = 0;
    let bad = || {
        format!("`type` at `{at}` is not one of object, array, string, integer, number, boolean, null (or a list of them)")
    };
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) => bits = Types::of_name(t).ok_or_else(bad)?,
        Some(Value::Array(list)) => {
            for t in list {
                bits |= t.as_str().and_then(Types::of_name).ok_or_else(bad)?;
            }
        }
        Some(_) => return Err(bad()),
    }
    if bits != 0 && obj.get("nullable").and_then(Value::as_bool) == Some(true) {
        bits |= Types::NULL;
    }
    Ok(Types(bits))
}

fn enum_val(v: &Value) -> Option<EnumVal> {
    Some(match v {
        Value::String(s) => EnumVal::Str(s.as_str().into()),
        Value::Bool(b) => EnumVal::Bool(*b),
        Value::Null => EnumVal::Null,
        Value::Number(n) => match n.as_i64() {
            Some(i) => EnumVal::Int(i),
            None => EnumVal::Float(n.as_f64()?),
        },
        _ => return None,
    })
}

/// Parses an OpenAPI document: JSON when it starts with `{`, else YAML. `Err`: why not,
/// with the line and column where the parser gave up.
pub fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"));
    }
    let v: Value = serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    if !v.is_object() {
        return Err("is not an OpenAPI document (a mapping at the top)".into());
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests;
