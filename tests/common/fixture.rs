//! The config snippets and credentials the integration tests share: each TOML shape is
//! written once here, and a test composes the ones it needs.

use std::net::SocketAddr;

/// The HS256 secret of the key `hs` in [`auth_hs256`].
pub const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// `[auth]` with `extra` keys (each line ending in a newline) and one HS256 key, kid `hs`,
/// secret [`HS_SECRET`].
pub fn auth_hs256(extra: &str) -> String {
    format!(
        "[auth]\n{extra}[[auth.keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = {{ value = \"{HS_SECRET}\" }}\n"
    )
}

/// A compact JWS of `header` and `claims` (both JSON text) signed with HS256 under `secret`.
pub fn sign_hs256(header: &str, claims: &str, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, msg.as_bytes());
    format!("{msg}.{}", B64.encode(sig.as_ref()))
}

/// A JWT with `claims` under [`HS_SECRET`] (kid `hs`).
pub fn hs256(claims: &str) -> String {
    sign_hs256(
        r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#,
        claims,
        HS_SECRET.as_bytes(),
    )
}

/// A JWT for subject `sub` under [`HS_SECRET`], valid for ten minutes.
pub fn token(sub: &str) -> String {
    hs256(&format!(r#"{{"sub":"{sub}","exp":{}}}"#, unix_now() + 600))
}

/// `(authorization, Bearer token)`, for a request's headers.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `"a", "b"`: addresses as the items of a TOML array.
fn endpoint_list(endpoints: &[SocketAddr]) -> String {
    let quoted: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    quoted.join(", ")
}

/// `[[upstreams]]` `name` on `endpoints`, with `extra` keys.
pub fn upstream(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n",
        endpoint_list(endpoints)
    )
}

/// `[[routes]]` from `path` to the upstream `upstream`, with `extra` keys.
pub fn route(path: &str, upstream: &str, extra: &str) -> String {
    format!("[[routes]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n{extra}\n")
}

/// Everything to one upstream `up` at `addr` (with `extra_upstream` keys).
pub fn route_all(addr: SocketAddr, extra_upstream: &str) -> String {
    upstream("up", &[addr], extra_upstream) + &route("/*rest", "up", "")
}

/// `[[deployments]]` of `model` `version` on `endpoints`, with `extra` keys.
pub fn deployment(model: &str, version: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    format!(
        "[[deployments]]\nmodel = \"{model}\"\nversion = \"{version}\"\nendpoints = [{}]\n{extra}\n",
        endpoint_list(endpoints)
    )
}

/// `[[routes]]` from `path` to a model split: `targets` are the array's items
/// (`{ model = "m", weight = 1 }, ...`), with `extra` keys.
pub fn model_route(path: &str, targets: &str, extra: &str) -> String {
    format!("[[routes]]\npath = \"{path}\"\ntargets = [{targets}]\n{extra}\n")
}

/// Model `m` 1.0.0 at `addr`, served on `POST /v1/chat/completions`.
pub fn chat_model(addr: SocketAddr) -> String {
    deployment("m", "1.0.0", &[addr], "")
        + &model_route("/v1/chat/completions", "{ model = \"m\", weight = 1 }", "")
}

/// `[[quota.rules]]` `name` keyed by `key` (`client_ip`, `subject`, ...), with `limits`
/// (`requests_per_minute = 60`, ...). The `[quota]` table itself, with any settings, is the
/// caller's.
pub fn quota_rule(name: &str, key: &str, limits: &str) -> String {
    format!("[[quota.rules]]\nname = \"{name}\"\nkey = \"{key}\"\n{limits}\n")
}

/// `[admin]` on `addr` with `token`.
pub fn admin_listen(addr: SocketAddr, token: &str) -> String {
    format!("[admin]\nlisten = \"{addr}\"\ntoken = {{ value = \"{token}\" }}\n")
}

/// A chat completion request body for model `model` saying "hi".
pub fn chat_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}
