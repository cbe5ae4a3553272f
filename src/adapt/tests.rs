use serde_json::Value;

use super::*;

fn users() -> Schema {
    let doc = schema::parse_document(schema::tests::USERS).unwrap();
    schema::compile(
        &doc,
        Some("CreateUser"),
        Some("User"),
        schema::Naming::SnakeCase,
    )
    .unwrap()
}

/// Feeds `parts`, returning what went out after each and at the end.
fn run(t: &mut Translator<'_>, parts: &[&[u8]]) -> (Vec<Vec<u8>>, Result<Vec<u8>, Malformed>) {
    let each = parts.iter().map(|p| t.feed(p).to_vec()).collect();
    (each, t.finish().map(<[u8]>::to_vec))
}

#[test]
fn client_status_says_what_is_rewritten() {
    let s = users();
    let schema = Response::Schema {
        schema: &s,
        root: s.response.unwrap(),
    };
    for (status, anthropic, transformed) in [
        (200, Some(200), Some(200)),
        (201, Some(201), Some(201)),
        (400, Some(400), None),
        (429, Some(429), None),
        (500, Some(500), None),
        (529, Some(503), None),
    ] {
        assert_eq!(
            Response::Anthropic.client_status(status),
            anthropic,
            "{status}"
        );
        assert_eq!(schema.client_status(status), transformed, "{status}");
    }
}

#[test]
fn a_json_body_is_held_then_translated_whole() {
    let body = br#"{"id":"m1","model":"c","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":2,"output_tokens":3}}"#;
    let mut bufs = Bufs::default();
    let mut t = Translator::new(Response::Anthropic, 200, false, &mut bufs);
    assert!(t.holds());
    let (each, end) = run(&mut t, &[&body[..10], &body[10..]]);
    assert!(
        each.iter().all(Vec::is_empty),
        "nothing goes out before the end"
    );
    let v: Value = serde_json::from_slice(&end.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert_eq!(v["usage"]["total_tokens"], 5);
    // Malformed provider JSON: nothing was sent, the caller answers 502.
    let mut t = Translator::new(Response::Anthropic, 200, false, &mut bufs);
    assert_eq!(run(&mut t, &[b"{\"id\":"]).1, Err(Malformed));
    // Too large to hold.
    let mut t = Translator::new(Response::Anthropic, 200, false, &mut bufs);
    let big = vec![b' '; MAX_HELD_BODY / 2 + 1];
    assert_eq!(run(&mut t, &[&big, &big, body]).1, Err(Malformed));
}

#[test]
fn an_error_body_takes_the_openai_shape() {
    let mut bufs = Bufs::default();
    let mut t = Translator::new(Response::Anthropic, 529, true, &mut bufs);
    assert!(t.holds());
    let (_, end) = run(
        &mut t,
        &[br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#],
    );
    let v: Value = serde_json::from_slice(&end.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(v["error"]["message"], "Overloaded");
}

#[test]
fn a_stream_goes_out_event_by_event() {
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n";
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n";
    let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let mut bufs = Bufs::default();
    let mut t = Translator::new(Response::Anthropic, 200, true, &mut bufs);
    assert!(!t.holds());
    // The first event goes out with the read that completes it, not at the end.
    let cut = start.len() + 20;
    let all = format!("{start}{delta}{stop}");
    let (each, end) = run(&mut t, &[&all.as_bytes()[..cut], &all.as_bytes()[cut..]]);
    let first = String::from_utf8(each[0].clone()).unwrap();
    assert!(
        first.contains("\"role\":\"assistant\"") && !first.contains("\"x\""),
        "{first}"
    );
    let second = String::from_utf8(each[1].clone()).unwrap();
    assert!(second.contains("\"content\":\"x\"") && second.ends_with("data: [DONE]\n\n"));
    assert!(end.unwrap().is_empty());
}

#[test]
fn a_transformed_stream_maps_each_data_payload() {
    let s = users();
    let resp = Response::Schema {
        schema: &s,
        root: s.response.unwrap(),
    };
    let stream = "id: 1\nevent: user\ndata: {\"user_id\":1,\"login\":\"a\"}\n\n: keep-alive\n\ndata: {\"user_id\":\ndata: 2}\r\n\r\ndata: not json\n\ndata: {broken\n\ndata: [DONE]\n\n";
    let want = "id: 1\nevent: user\ndata: {\"userId\":1,\"userName\":\"a\"}\n\n: keep-alive\n\ndata: {\"userId\":2}\n\ndata: not json\n\ndata: {broken\n\ndata: [DONE]\n\n";
    let b = stream.as_bytes();
    for cut in 0..=b.len() {
        let mut bufs = Bufs::default();
        let mut t = Translator::new(resp, 200, true, &mut bufs);
        let (each, end) = run(&mut t, &[&b[..cut], &b[cut..]]);
        let got: Vec<u8> = each.concat().into_iter().chain(end.unwrap()).collect();
        assert_eq!(String::from_utf8(got).unwrap(), want, "cut at {cut}");
    }
    // JSON bodies are mapped whole, and malformed ones refused.
    let mut bufs = Bufs::default();
    let mut t = Translator::new(resp, 200, false, &mut bufs);
    let (_, end) = run(&mut t, &[br#"{"login":"x"}"#]);
    assert_eq!(end.unwrap(), br#"{"userName":"x"}"#);
    let mut t = Translator::new(resp, 200, false, &mut bufs);
    assert_eq!(run(&mut t, &[b"{\"login\""]).1, Err(Malformed));
}

#[test]
fn large_buffers_are_freed_on_reset() {
    let mut bufs = Bufs::default();
    let mut t = Translator::new(Response::Anthropic, 200, false, &mut bufs);
    t.feed(&vec![b' '; KEEP_CAPACITY * 2]);
    bufs.reset();
    assert_eq!(bufs.held.capacity(), 0);
    let mut t = Translator::new(Response::Anthropic, 200, false, &mut bufs);
    t.feed(b"{}");
    bufs.reset();
    assert!(bufs.held.capacity() > 0 && bufs.held.is_empty());
}
