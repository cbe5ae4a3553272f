//! Weight updates for the admin API, applied to the config file's text so that an operator's
//! comments and formatting survive. The engine writes the result atomically and reloads; the
//! reload validates it like any other config.

use semver::VersionReq;
use toml_edit::{DocumentMut, Item, TableLike, Value};

/// Sets new weights on one route's `targets` in the config text `doc_text`.
///
/// The route is the `[[routes]]` entry whose `path` is `route_path` and whose `models` set
/// equals `route_models` (empty: the path's default route, which has no `models`). Each
/// `(model, version_req, weight)` names one entry of its `targets` by `model` and by
/// `version` (compared as semver requirements, so `>=1, <2` equals `>=1,<2`; a missing
/// `version` is `*`). Targets not named keep their weight.
///
/// `Ok`: the new text, identical to `doc_text` except for the weight values. `Err`: why
/// nothing was changed (unparsable text, no or several such routes, an entry naming no
/// target, or all weights zero afterwards).
pub fn set_weights_in_toml(
    doc_text: &str,
    route_path: &str,
    route_models: &[&str],
    weights: &[(&str, &str, u32)],
) -> Result<String, String> {
    let mut doc: DocumentMut = doc_text
        .parse()
        .map_err(|e| format!("config is not valid TOML: {e}"))?;
    let routes = doc.get_mut("routes").ok_or("config has no `routes`")?;
    let mut matching: Vec<&mut dyn TableLike> = tables_mut(routes)
        .into_iter()
        .filter(|t| is_route(&**t, route_path, route_models))
        .collect();
    let route = match matching.len() {
        1 => matching.pop().ok_or("unreachable")?,
        0 => {
            return Err(format!(
                "no route with path `{route_path}` and models {route_models:?}"
            ))
        }
        n => {
            return Err(format!(
                "{n} routes with path `{route_path}` and models {route_models:?}"
            ))
        }
    };
    let targets = route
        .get_mut("targets")
        .ok_or_else(|| format!("route `{route_path}` has no `targets`"))?;
    let mut entries = tables_mut(targets);
    for &(model, version, weight) in weights {
        let found: Vec<usize> = (0..entries.len())
            .filter(|&i| is_target(&*entries[i], model, version))
            .collect();
        let [i] = found[..] else {
            return Err(format!(
                "{} targets of `{route_path}` are `{model}` `{version}`",
                found.len()
            ));
        };
        set_weight(&mut *entries[i], weight)?;
    }
    let total: i64 = entries
        .iter()
        .map(|t| t.get("weight").and_then(Item::as_integer).unwrap_or(0))
        .sum();
    if total <= 0 {
        return Err(format!("total weight of `{route_path}` would be zero"));
    }
    Ok(doc.to_string())
}

/// The tables of an array of tables or of an array of inline tables.
fn tables_mut(item: &mut Item) -> Vec<&mut dyn TableLike> {
    match item {
        Item::ArrayOfTables(a) => a.iter_mut().map(|t| t as &mut dyn TableLike).collect(),
        Item::Value(Value::Array(a)) => a
            .iter_mut()
            .filter_map(|v| v.as_inline_table_mut().map(|t| t as &mut dyn TableLike))
            .collect(),
        _ => Vec::new(),
    }
}

fn is_route(t: &dyn TableLike, path: &str, models: &[&str]) -> bool {
    if t.get("path").and_then(Item::as_str) != Some(path) {
        return false;
    }
    let have: Vec<&str> = t
        .get("models")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    have.len() == models.len() && have.iter().all(|m| models.contains(m))
}

fn is_target(t: &dyn TableLike, model: &str, version: &str) -> bool {
    let have = t.get("version").and_then(Item::as_str).unwrap_or("*");
    t.get("model").and_then(Item::as_str) == Some(model)
        && match (
            VersionReq::parse(have.trim()),
            VersionReq::parse(version.trim()),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => have.trim() == version.trim(),
        }
}

/// Replaces the weight's value, keeping the whitespace and comments around it.
fn set_weight(t: &mut dyn TableLike, weight: u32) -> Result<(), String> {
    match t.get_mut("weight") {
        Some(Item::Value(v)) => {
            let decor = v.decor().clone();
            *v = Value::from(i64::from(weight));
            *v.decor_mut() = decor;
            Ok(())
        }
        Some(_) => Err("`weight` is not a value".to_owned()),
        None => Err("target has no `weight`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# gateway config
[[routes]]
path = "/v1/chat/completions"   # the main route
targets = [
  { model = "llama3-70b", version = ">=3.2.0, <3.3.0", weight = 80 }, # stable
  { model = "qwen2-72b",  version = "^2.0.0",          weight = 20 },
]

[[routes]]
path = "/v1/chat/completions"
models = ["cheap"]

# array-of-tables targets
[[routes.targets]]
model = "llama3-8b"
weight = 5 # keep small
"#;

    #[test]
    fn updates_weights_and_keeps_comments_and_layout() {
        let out = set_weights_in_toml(
            DOC,
            "/v1/chat/completions",
            &[],
            &[
                ("llama3-70b", ">=3.2.0,<3.3.0", 60),
                ("qwen2-72b", "^2.0.0", 40),
            ],
        )
        .unwrap();
        let want = DOC
            .replace("weight = 80 }, # stable", "weight = 60 }, # stable")
            .replace("weight = 20 }", "weight = 40 }");
        assert_eq!(out, want);

        let out = set_weights_in_toml(
            DOC,
            "/v1/chat/completions",
            &["cheap"],
            &[("llama3-8b", "*", 9)],
        )
        .unwrap();
        assert_eq!(
            out,
            DOC.replace("weight = 5 # keep small", "weight = 9 # keep small")
        );
    }

    #[test]
    fn refuses_what_it_cannot_apply() {
        /// (path, models, weights, expected error fragment).
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [(&'a str, &'a str, u32)],
            &'a str,
        );
        let cases: [Case<'_>; 5] = [
            ("/nope", &[], &[("llama3-70b", "*", 1)], "no route"),
            (
                "/v1/chat/completions",
                &[],
                &[("llama3-70b", "^9", 1)],
                "0 targets",
            ),
            (
                "/v1/chat/completions",
                &[],
                &[("mistral", "*", 1)],
                "0 targets",
            ),
            (
                "/v1/chat/completions",
                &[],
                &[
                    ("llama3-70b", ">=3.2.0, <3.3.0", 0),
                    ("qwen2-72b", "^2.0.0", 0),
                ],
                "zero",
            ),
            (
                "/v1/chat/completions",
                &["other"],
                &[("llama3-8b", "*", 1)],
                "no route",
            ),
        ];
        for (path, models, weights, want) in cases {
            let err = set_weights_in_toml(DOC, path, models, weights).unwrap_err();
            assert!(err.contains(want), "{path} {weights:?}: {err}");
        }
        assert!(set_weights_in_toml("not = [toml", "/", &[], &[]).is_err());
    }
}
