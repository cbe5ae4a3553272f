use serde_json::{json, Value};

use super::*;
use crate::adapt::path;
use crate::model::both_ways;

/// The document of the round-trip tests: `$ref`s, `allOf`, `x-protocol-field`, arrays of
/// objects, enums, nullable and required fields.
pub const USERS: &str = r##"
openapi: 3.0.3
info: { title: users, version: "1" }
paths: {}
components:
  schemas:
    CreateUser:
      type: object
      required: [userName, emailAddress]
      additionalProperties: false
      properties:
        userName: { type: string, x-protocol-field: login }
        emailAddress: { type: string }
        homeAddress: { $ref: "#/components/schemas/Address" }
        accountType: { type: string, enum: [free, pro] }
        loginCount: { type: integer }
        nickName: { type: string, nullable: true }
        previousAddresses:
          type: array
          items: { $ref: "#/components/schemas/Address" }
        extraInfo: { type: object }
    Address:
      allOf:
        - $ref: "#/components/schemas/Place"
        - type: object
          required: [streetName]
          properties:
            streetName: { type: string }
            postCode: { type: string, x-protocol-field: zip }
    Place:
      type: object
      properties:
        cityName: { type: string }
    User:
      type: object
      properties:
        userId: { type: integer }
        userName: { type: string, x-protocol-field: login }
        homeAddress: { $ref: "#/components/schemas/Address" }
"##;

fn doc(text: &str) -> Value {
    parse_document(text).unwrap()
}

fn users() -> Schema {
    compile(
        &doc(USERS),
        Some("CreateUser"),
        Some("User"),
        Naming::SnakeCase,
    )
    .unwrap()
}

fn map_request(s: &Schema, body: &str) -> Result<Value, (String, &'static str)> {
    map_request_edited(s, body, None, false)
}

/// [`map_request`] with the gateway's edits (a split's served name, `include_usage` forced),
/// from the kept tape and checked against the re-read body (see `model::both_ways`).
fn map_request_edited(
    s: &Schema,
    body: &str,
    served: Option<&str>,
    usage: bool,
) -> Result<Value, (String, &'static str)> {
    let (out, mut p, verdict) = both_ways(body.as_bytes(), served, usage, |v, out, p| {
        map::request(s, s.request.unwrap(), v, out, p)
    })
    .unwrap();
    match verdict {
        Ok(()) => Ok(serde_json::from_slice(&out).unwrap()),
        Err(e) => {
            path::root(&mut p);
            Err((p, e.message))
        }
    }
}

fn map_response(
    s: &Schema,
    root: NodeId,
    body: &str,
) -> Result<Value, crate::adapt::json::Malformed> {
    let mut out = Vec::new();
    map::response(s, root, body.as_bytes(), &mut out)?;
    Ok(serde_json::from_slice(&out).unwrap())
}

#[test]
fn naming_strategies() {
    for (name, snake, camel) in [
        ("userName", "user_name", "userName"),
        ("user_name", "user_name", "userName"),
        ("HTTPCode", "http_code", "HTTPCode"),
        ("userID", "user_id", "userID"),
        ("a1B2", "a1_b2", "a1B2"),
        (
            "already_snake_case",
            "already_snake_case",
            "alreadySnakeCase",
        ),
        ("kebab-name", "kebab_name", "kebabName"),
        ("_private", "_private", "_private"),
        ("x", "x", "x"),
    ] {
        assert_eq!(Naming::SnakeCase.apply(name), snake, "{name}");
        assert_eq!(Naming::CamelCase.apply(name), camel, "{name}");
        assert_eq!(Naming::AsIs.apply(name), name);
    }
}

#[test]
fn request_mapping_renames_and_round_trips() {
    let s = users();
    let client = json!({
        "userName": "ada",
        "emailAddress": "ada@example.com",
        "homeAddress": {"cityName": "London", "streetName": "St James's Sq", "postCode": "SW1"},
        "accountType": "pro",
        "loginCount": 3,
        "nickName": null,
        "previousAddresses": [{"streetName": "A", "postCode": "1"}, {"streetName": "B"}],
        "extraInfo": {"keptAsIs": {"innerName": 1}}
    });
    let backend = map_request(&s, &client.to_string()).unwrap();
    assert_eq!(
        backend,
        json!({
            "login": "ada",
            "email_address": "ada@example.com",
            "home_address": {"city_name": "London", "street_name": "St James's Sq", "zip": "SW1"},
            "account_type": "pro",
            "login_count": 3,
            "nick_name": null,
            "previous_addresses": [{"street_name": "A", "zip": "1"}, {"street_name": "B"}],
            "extra_info": {"keptAsIs": {"innerName": 1}}
        })
    );
    // The backend's shape maps back to the client's through the same table.
    let root = s.request.unwrap();
    assert_eq!(
        map_response(&s, root, &backend.to_string()).unwrap(),
        client
    );
    // The response schema: backend → client, unknown fields kept.
    let resp = r#"{"user_id":7,"login":"ada","home_address":{"zip":"X","street_name":"S"},"unknown_field":[1,{"a":2}]}"#;
    assert_eq!(
        map_response(&s, s.response.unwrap(), resp).unwrap(),
        json!({"userId": 7, "userName": "ada", "homeAddress": {"postCode": "X", "streetName": "S"}, "unknown_field": [1, {"a": 2}]})
    );
}

#[test]
fn failed_checks_name_the_field() {
    let s = users();
    let ok = json!({"userName": "a", "emailAddress": "e", "homeAddress": {"streetName": "s"}});
    let with = |patch: Value| {
        let mut v = ok.clone();
        for (k, x) in patch.as_object().unwrap() {
            if x == "<absent>" {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v.to_string()
    };
    assert!(map_request(&s, &ok.to_string()).is_ok());
    let cases = [
        (json!({"userName": 5}), "$.userName", "type"),
        (json!({"loginCount": 1.5}), "$.loginCount", "type"),
        (json!({"loginCount": "3"}), "$.loginCount", "type"),
        (json!({"accountType": "gold"}), "$.accountType", "enum"),
        (json!({"accountType": null}), "$.accountType", "type"),
        (
            json!({"emailAddress": "<absent>"}),
            "$.emailAddress",
            "required",
        ),
        (json!({"surprise": 1}), "$.surprise", "not a property"),
        (
            json!({"homeAddress": {"cityName": "x"}}),
            "$.homeAddress.streetName",
            "required",
        ),
        (
            json!({"homeAddress": {"streetName": 1}}),
            "$.homeAddress.streetName",
            "type",
        ),
        (json!({"homeAddress": []}), "$.homeAddress", "type"),
        (
            json!({"previousAddresses": [{"streetName": "a"}, {"postCode": "b"}]}),
            "$.previousAddresses[1].streetName",
            "required",
        ),
        (
            json!({"previousAddresses": [{"streetName": "a", "postCode": 9}]}),
            "$.previousAddresses[0].postCode",
            "type",
        ),
        (
            json!({"previousAddresses": {}}),
            "$.previousAddresses",
            "type",
        ),
        (json!({"extraInfo": "x"}), "$.extraInfo", "type"),
    ];
    for (patch, want_path, why) in cases {
        let (p, message) = map_request(&s, &with(patch.clone())).expect_err(&patch.to_string());
        assert_eq!(p, want_path, "{patch}");
        assert!(message.contains(why), "{patch}: {message}");
    }
    // Integral floats are integers; nullable takes null.
    assert!(map_request(&s, &with(json!({"loginCount": 2.0, "nickName": null}))).is_ok());
    // A key that needs quoting in a path.
    let (p, _) = map_request(&s, &with(json!({"odd key": 1}))).unwrap_err();
    assert_eq!(p, "$['odd key']");
}

#[test]
fn config_problems() {
    let cyc = r##"{"components":{"schemas":{
        "A":{"type":"object","properties":{"b":{"$ref":"#/components/schemas/B"}}},
        "B":{"type":"array","items":{"$ref":"#/components/schemas/A"}},
        "Self":{"allOf":[{"$ref":"#/components/schemas/Self"}]},
        "Dangling":{"properties":{"x":{"$ref":"#/components/schemas/Nope"}}},
        "Remote":{"properties":{"x":{"$ref":"other.yaml#/X"}}},
        "BadType":{"type":"text"},
        "Clash":{"properties":{"aB":{"type":"string"},"a_b":{"type":"string"}}},
        "BadField":{"properties":{"a":{"x-protocol-field":3}}},
        "BadEnum":{"enum":[{"a":1}]},
        "Fine":{"type":"object"}
    }}}"##;
    let d = doc(cyc);
    let problem = |req: &str| {
        let e = compile(&d, Some(req), None, Naming::SnakeCase).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "request_schema");
        e[0].1.clone()
    };
    let m = problem("A");
    assert!(m.contains("`$ref` cycle"), "{m}");
    assert!(
        m.contains("#/components/schemas/A → #/components/schemas/B → #/components/schemas/A"),
        "{m}"
    );
    assert!(problem("B").contains("cycle"));
    assert!(problem("Self").contains("cycle"));
    assert!(problem("Dangling").contains("points to nothing"));
    assert!(problem("Remote").contains("not a local reference"));
    assert!(problem("BadType").contains("`type`"));
    assert!(problem("Clash").contains("both map to the backend field `a_b`"));
    assert!(problem("BadField").contains("x-protocol-field"));
    assert!(problem("BadEnum").contains("enum"));
    assert!(problem("Missing").contains("no schema `Missing`"));
    // Both names are checked, each reported under its own key.
    let e = compile(&d, Some("Missing"), Some("A"), Naming::AsIs).unwrap_err();
    let keys: Vec<&str> = e.iter().map(|p| p.0).collect();
    assert_eq!(keys, ["request_schema", "response_schema"]);
    assert!(compile(&d, Some("Fine"), None, Naming::AsIs).is_ok());
    let e = compile(&doc("openapi: 3.0.0\n"), Some("X"), None, Naming::AsIs).unwrap_err();
    assert!(e[0].1.contains("components.schemas"), "{e:?}");
    for bad in ["{\"a\":", "a: [\n", "- 1\n- 2\n", "just text"] {
        assert!(parse_document(bad).is_err(), "{bad}");
    }
}

#[test]
fn deep_schemas_are_refused() {
    let mut s = String::from("{\"type\":\"string\"}");
    for _ in 0..(MAX_SCHEMA_DEPTH + 2) {
        s = format!("{{\"type\":\"array\",\"items\":{s}}}");
    }
    let d = doc(&format!(
        "{{\"components\":{{\"schemas\":{{\"Deep\":{s}}}}}}}"
    ));
    let e = compile(&d, Some("Deep"), None, Naming::AsIs).unwrap_err();
    assert!(e[0].1.contains("deeper"), "{e:?}");
}

#[test]
fn opaque_and_open_schemas_pass_values_through() {
    let d = doc(
        r##"{"components":{"schemas":{"R":{"type":"object","properties":{
            "choice":{"oneOf":[{"type":"string"},{"type":"integer"}]},
            "anyThing":true,
            "tags":{"type":"array","items":{"type":"string"}}}}}}}"##,
    );
    let s = compile(&d, Some("R"), Some("R"), Naming::SnakeCase).unwrap();
    let got = map_request(
        &s,
        r#"{"choice":{"deep":{"camelCase":1}},"anyThing":[1],"tags":["a"]}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        json!({"choice": {"deep": {"camelCase": 1}}, "any_thing": [1], "tags": ["a"]})
    );
    for bad in ["{", r#"{"tags":[1,]}"#, r#"{"a":1} x"#, "", "nul"] {
        assert!(map_response(&s, s.response.unwrap(), bad).is_err(), "{bad}");
    }
    assert_eq!(
        map_response(&s, s.response.unwrap(), " 5 ").unwrap(),
        json!(5)
    );
}

/// A schema that describes the members the gateway edits: the edits are mapped like any
/// other value (renamed, type-checked, nested), from the kept tape exactly as from the
/// re-read body (`map_request_edited` compares the two byte for byte).
const EDITED: &str = r##"
components:
  schemas:
    Chat:
      type: object
      required: [model]
      properties:
        model: { type: string, x-protocol-field: modelName }
        stream: { type: boolean }
        stream_options:
          type: object
          x-protocol-field: streamOpts
          additionalProperties: false
          properties:
            include_usage: { type: boolean, x-protocol-field: withUsage }
            extraThing: { type: object, properties: { deepValue: { type: string } } }
        nestedInfo:
          type: object
          properties:
            innerList: { type: array, items: { type: object, properties: { someKey: { type: string } } } }
"##;

#[test]
fn edits_are_mapped_as_from_the_reread_body() {
    let s = compile(&doc(EDITED), Some("Chat"), None, Naming::SnakeCase).unwrap();
    let nested =
        r#""nestedInfo":{"innerList":[{"someKey":"v\"1"},{"someKey":"\u00e9","o":{"p":[{}]}}]}"#;
    for (options, client_usage) in [
        ("", None),
        (r#","stream_options":{"include_usage":false}"#, Some(false)),
        (
            r#","stream_options":{"extraThing":{"deep_value":"x"}}"#,
            None,
        ),
        (
            r#","stream\u005foptions":{"include\u005fusage":true}"#,
            Some(true),
        ),
    ] {
        for model in ["", r#""model":"m\\1","#, r#""mod\u0065l":"m2","#] {
            let body = format!(r#"{{{model}{nested},"stream":true{options}}}"#);
            for served in [None, Some("served-m"), Some("q\"uote\\✓")] {
                for usage in [false, true] {
                    let got = map_request_edited(&s, &body, served, usage);
                    let Some(want_model) = served.or(match model {
                        "" => None,
                        m if m.contains("m2") => Some("m2"),
                        _ => Some("m\\1"),
                    }) else {
                        // No model and none served: the schema requires one.
                        assert_eq!(got.unwrap_err().0, "$.model", "{body}");
                        continue;
                    };
                    let got = got.unwrap_or_else(|e| panic!("{body} {served:?}: {e:?}"));
                    assert_eq!(got["modelName"], want_model, "{body}");
                    assert_eq!(got["nested_info"]["inner_list"][0]["some_key"], "v\"1");
                    assert_eq!(got["nested_info"]["inner_list"][1]["some_key"], "é");
                    assert_eq!(got["stream"], true);
                    let with_usage = &got["streamOpts"]["withUsage"];
                    match (usage, client_usage) {
                        (true, _) => assert_eq!(with_usage, true, "{got}"),
                        (false, Some(u)) => assert_eq!(with_usage, u, "{got}"),
                        (false, None) => assert!(with_usage.is_null(), "{got}"),
                    }
                    assert!(got.get("stream_options").is_none(), "{got}");
                }
            }
        }
    }
    // The gateway's `stream_options` where the schema forbids unknown members: refused at
    // its path, both ways.
    let strict = r##"
components:
  schemas:
    Strict:
      type: object
      additionalProperties: false
      properties:
        model: { type: string }
        stream: { type: boolean }
"##;
    let s = compile(&doc(strict), Some("Strict"), None, Naming::AsIs).unwrap();
    let got = map_request_edited(&s, r#"{"model":"a","stream":true}"#, Some("b"), true);
    assert_eq!(got.unwrap_err().0, "$.stream_options");
    let got = map_request_edited(&s, r#"{"model":"a","stream":true}"#, Some("b"), false);
    assert_eq!(got.unwrap()["model"], "b");
}

/// Bodies the body stage refuses never reach the mapping: repeated keys (escaped too), a
/// `model` that is not a string.
#[test]
fn refused_bodies_are_refused_before_the_mapping() {
    use crate::model::BodyError;
    let s = users();
    for (body, want) in [
        (
            r#"{"userName":"a","userName":"b"}"#,
            BodyError::DuplicateKey,
        ),
        (
            r#"{"userName":"a","user\u004eame":"b"}"#,
            BodyError::DuplicateKey,
        ),
        (r#"{"model":1,"userName":"a"}"#, BodyError::ModelNotString),
        (
            r#"{"model":{"a":"b"},"userName":"a"}"#,
            BodyError::ModelNotString,
        ),
    ] {
        for served in [None, Some("m")] {
            let got = both_ways(body.as_bytes(), served, true, |v, out, p| {
                map::request(&s, s.request.unwrap(), v, out, p)
            });
            assert_eq!(got.unwrap_err(), want, "{body}");
        }
    }
}
