//! `[[transforms]]`: the config of schema transforms, compiled at load into the table every
//! worker's snapshot carries ([`Transforms`]).
//!
//! ```toml
//! [[transforms]]
//! name = "users"
//! openapi = "openapi/users.yaml"     # YAML or JSON, relative to the config file
//! request_schema = "CreateUser"      # components.schemas names; at least one of the two
//! response_schema = "User"
//! naming = "snake_case"              # backend spelling without x-protocol-field:
//!                                    # "as_is" (default), "snake_case", "camel_case"
//!
//! [[routes]]
//! path = "/internal/users"
//! upstream = "users-svc"
//! transform = "users"
//! ```
//!
//! Every problem — a file that cannot be read or does not parse, a schema that does not exist,
//! a `$ref` cycle or dangling `$ref`, an unknown transform on a route — is a config problem
//! naming the key path (and the document's file), so a reload that has one changes nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::schema::{self, Naming, Schema};
use crate::config_types::ConfigProblem;

/// One `[[transforms]]` entry as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTransform {
    pub name: String,
    /// The OpenAPI v3 document (YAML or JSON), relative to the config file.
    pub openapi: PathBuf,
    /// `components.schemas` name of the request body (client's contract).
    #[serde(default)]
    pub request_schema: Option<String>,
    /// `components.schemas` name of the response body (and of each SSE event's data).
    #[serde(default)]
    pub response_schema: Option<String>,
    #[serde(default)]
    pub naming: Naming,
}

/// A compiled transform.
#[derive(Debug, Clone)]
pub struct Transform {
    pub name: String,
    /// The document it was compiled from (resolved path).
    pub file: PathBuf,
    pub request_schema: Option<String>,
    pub response_schema: Option<String>,
    pub naming: Naming,
    pub schema: Schema,
}

/// Every transform, and which one each route uses.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    list: Vec<Transform>,
    /// By route id.
    by_route: Vec<Option<u16>>,
}

impl Transforms {
    /// Compiles `raw`; `routes` gives each route's `transform` name, by route id. Problems are
    /// added to `problems`.
    pub fn build<'r>(
        raw: &[RawTransform],
        routes: impl Iterator<Item = Option<&'r str>>,
        base_dir: &Path,
        problems: &mut Vec<ConfigProblem>,
    ) -> Transforms {
        let mut list = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = format!("transforms[{i}]");
            if raw[..i].iter().any(|o| o.name == t.name) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!("duplicate transform name `{}`", t.name),
                ));
            }
            if let Some(built) = build_one(t, &key, base_dir, problems) {
                list.push(built);
            }
        }
        let by_route = routes
            .enumerate()
            .map(|(i, name)| {
                let name = name?;
                let found = list.iter().position(|t| t.name == name);
                if found.is_none() && raw.iter().all(|t| t.name != name) {
                    problems.push(ConfigProblem::new(
                        format!("routes[{i}].transform"),
                        format!("no [[transforms]] entry is named `{name}`"),
                    ));
                }
                found.map(|f| f as u16)
            })
            .collect();
        Transforms { list, by_route }
    }

    /// The transform of the route with id `route`, if it has one.
    #[inline]
    pub fn for_route(&self, route: usize) -> Option<&Transform> {
        let i = (*self.by_route.get(route)?)?;
        self.list.get(usize::from(i))
    }

    pub fn list(&self) -> &[Transform] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn build_one(
    t: &RawTransform,
    key: &str,
    base_dir: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Transform> {
    if t.request_schema.is_none() && t.response_schema.is_none() {
        problems.push(ConfigProblem::new(
            key.to_string(),
            "names neither `request_schema` nor `response_schema`",
        ));
        return None;
    }
    let file = base_dir.join(&t.openapi);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(ConfigProblem::new(
                format!("{key}.openapi"),
                format!("cannot read `{}`: {e}", file.display()),
            ));
            return None;
        }
    };
    let doc = match schema::parse_document(&text) {
        Ok(d) => d,
        Err(e) => {
            problems.push(ConfigProblem::new(
                format!("{key}.openapi"),
                format!("`{}` {e}", file.display()),
            ));
            return None;
        }
    };
    let compiled = schema::compile(
        &doc,
        t.request_schema.as_deref(),
        t.response_schema.as_deref(),
        t.naming,
    );
    match compiled {
        Ok(schema) => Some(Transform {
            name: t.name.clone(),
            file,
            request_schema: t.request_schema.clone(),
            response_schema: t.response_schema.clone(),
            naming: t.naming,
            schema,
        }),
        Err(list) => {
            for (which, message) in list {
                problems.push(ConfigProblem::new(
                    format!("{key}.{which}"),
                    format!("in `{}`: {message}", file.display()),
                ));
            }
            None
        }
    }
}
