//! The Responses, Messages and Embeddings APIs, and what apps ask about their key (`/models`,
//! `/credits`, `/generation`), through the real binary, Postgres and the mock: each priced and
//! reserved before the upstream call, charged exactly what the upstream billed, and refused as
//! chat is (unknown key, scope, budget, bad body), on `/messages` in Anthropic's error shape.

use domain::Money;
use serde_json::json;

use crate::gateway_support::{Gateway, expect_error, start, usd};

/// `POST path` with `body`, the key sent by `auth` (`bearer` or `x-api-key`).
async fn post(
    gw: &Gateway,
    path: &str,
    auth: (&str, &str),
    body: &serde_json::Value,
) -> reqwest::Response {
    let request = gw
        .http
        .post(format!("{}{path}", gw.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    let request = match auth {
        ("bearer", token) => request.bearer_auth(token),
        (header, token) => request.header(header, token),
    };
    request.send().await.unwrap()
}

/// The events of a stream as `(event name, data)`, its `data` lines parsed.
async fn events(response: reqwest::Response) -> Vec<(String, serde_json::Value)> {
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = line.strip_prefix("data: ")
            && data != "[DONE]"
        {
            out.push((name.clone(), serde_json::from_str(data).unwrap()));
        }
    }
    out
}

/// What the mock has billed the master account so far.
fn billed(gw: &Gateway) -> Money {
    Money::from_nanos(gw.mock.state().total_usage_nanousd() as i64)
}

/// Checks an Anthropic-shaped error: the status, `error.type` and a message saying `says`.
async fn expect_anthropic_error(response: reqwest::Response, status: u16, kind: &str, says: &str) {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_charged_exactly_what_the_upstream_billed() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = json!({
        "model": "mock/cheap",
        "instructions": "Answer briefly.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is a budget?"}]}],
        "max_output_tokens": 12,
    });
    let response = post(&gw, "/api/v1/responses", ("bearer", &token), &body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["usage"]["output_tokens"], 12);
    let json_cost = usd(&answer["usage"]["cost"]).unwrap();

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = events(post(&gw, "/api/v1/responses", ("bearer", &token), &streamed).await).await;
    let (name, completed) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    let stream_cost = usd(&completed["response"]["usage"]["cost"]).unwrap();
    assert!(
        events
            .iter()
            .any(|(name, _)| name == "response.output_text.delta")
    );

    let total = json_cost.checked_add(stream_cost).unwrap();
    assert_eq!(total, billed(&gw));
    gw.wait_for_spent(&token, total).await;

    // With $0.0001 left, the limit is lowered (and written, as the request set none) to what
    // the key can pay for.
    let small = gw.key("0.0001", &[]);
    let ask = json!({"model": "mock/cheap", "input": "hi"});
    let response = post(&gw, "/api/v1/responses", ("bearer", &small), &ask).await;
    assert_eq!(response.status(), 200);
    let sent = gw.mock.state().last_request().unwrap().body;
    let limit = sent["max_output_tokens"].as_u64().unwrap();
    let reserved = Money::from_nanos(ask.to_string().len() as i64 * 1_000 + limit as i64 * 2_000);
    assert!(reserved <= Money::from_nanos(100_000), "{sent}");
    assert!(limit >= 16, "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_get_the_refusals_chat_gets() {
    let gw = start().await;
    let token = gw.key("1", &["--models", "mock/cheap"]);
    let path = "/api/v1/responses";
    let ask = |model: &str| json!({"model": model, "input": "hi", "max_output_tokens": 5});
    let unknown = format!("kc_{}", "0".repeat(48));
    expect_error(
        post(&gw, path, ("bearer", &unknown), &ask("mock/cheap")).await,
        401,
        "unknown API key",
    )
    .await;
    expect_error(
        post(&gw, path, ("bearer", &token), &ask("openai/gpt-4o-mini")).await,
        403,
        "not allowed for this key",
    )
    .await;
    expect_error(
        post(&gw, path, ("bearer", &token), &json!({"input": "hi"})).await,
        400,
        "no \"model\"",
    )
    .await;
    expect_error(
        post(
            &gw,
            path,
            ("bearer", &token),
            &json!({"model": "mock/cheap", "max_output_tokens": 0}),
        )
        .await,
        400,
        "\"max_output_tokens\" must be a whole number",
    )
    .await;
    let poor = gw.key("0.000001", &[]);
    expect_error(
        post(&gw, path, ("bearer", &poor), &ask("mock/cheap")).await,
        402,
        "key budget exhausted",
    )
    .await;
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_take_either_header_and_are_charged_exactly() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = json!({
        "model": "mock/cheap",
        "max_tokens": 9,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": "What is a budget?"}],
    });
    // `x-api-key`, as Anthropic's SDKs send it; JSON, whose usage carries the cost.
    let response = gw
        .http
        .post(format!("{}/api/v1/messages", gw.base))
        .header("x-api-key", &token)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "tools-2024-04-04")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let message: serde_json::Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    let json_cost = usd(&message["usage"]["cost"]).unwrap();
    let seen = gw.mock.state().last_request().unwrap();
    let master = &gw.mock.state().config().master_key;
    assert_eq!(seen.authorization, Some(format!("Bearer {master}")));
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the sub-key goes no further"
    );
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["anthropic-beta"], "tools-2024-04-04");

    // `Authorization: Bearer` (Claude Code's `ANTHROPIC_AUTH_TOKEN`), streamed: no cost in the
    // events, so the charge is computed from the tokens, and is what the mock billed.
    let before = billed(&gw);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = events(post(&gw, "/api/v1/messages", ("bearer", &token), &streamed).await).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let stream_cost = billed(&gw).checked_sub(before).unwrap();
    assert!(stream_cost > Money::ZERO);
    gw.wait_for_spent(&token, json_cost.checked_add(stream_cost).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_refused_in_anthropics_error_shape() {
    let gw = start().await;
    let token = gw.key("1", &["--models", "mock/cheap"]);
    let path = "/api/v1/messages";
    let ask = |model: &str| json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let unknown = format!("kc_{}", "0".repeat(48));
    expect_anthropic_error(
        post(&gw, path, ("x-api-key", &unknown), &ask("mock/cheap")).await,
        401,
        "authentication_error",
        "unknown API key",
    )
    .await;
    expect_anthropic_error(
        gw.http
            .post(format!("{}{path}", gw.base))
            .json(&ask("mock/cheap"))
            .send()
            .await
            .unwrap(),
        401,
        "authentication_error",
        "x-api-key",
    )
    .await;
    expect_anthropic_error(
        post(&gw, path, ("x-api-key", &token), &ask("openai/gpt-4o-mini")).await,
        403,
        "permission_error",
        "not allowed for this key",
    )
    .await;
    expect_anthropic_error(
        post(&gw, path, ("x-api-key", &token), &json!([1])).await,
        400,
        "invalid_request_error",
        "not an object",
    )
    .await;
    let poor = gw.key("0.000001", &[]);
    expect_anthropic_error(
        post(&gw, path, ("x-api-key", &poor), &ask("mock/cheap")).await,
        402,
        "billing_error",
        "key budget exhausted",
    )
    .await;
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
    // An upstream error comes back in the upstream's own (Anthropic) shape.
    let open = gw.key("1", &[]);
    let response = post(&gw, path, ("x-api-key", &open), &ask("mock/fault-429")).await;
    expect_anthropic_error(response, 429, "rate_limit_error", "Rate limit exceeded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_priced_from_their_input_and_charged_exactly() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = json!({
        "model": "openai/text-embedding-3-small",
        "input": ["a budget is a plan", "a cap is a limit"],
        "dimensions": 4,
    });
    let response = post(&gw, "/api/v1/embeddings", ("bearer", &token), &body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(answer["data"][1]["embedding"].as_array().unwrap().len(), 4);
    let cost = usd(&answer["usage"]["cost"]).unwrap();
    assert_eq!(cost, billed(&gw));
    gw.wait_for_spent(&token, cost).await;

    // The price comes from `/embeddings/models`: a request fee of $0.0001 does not fit in
    // $0.00005; a model in neither list is refused.
    let poor = gw.key("0.00005", &[]);
    let fee = json!({"model": "mock/embed-with-fee", "input": "x"});
    expect_error(
        post(&gw, "/api/v1/embeddings", ("bearer", &poor), &fee).await,
        402,
        "key budget exhausted",
    )
    .await;
    let unknown = json!({"model": "mock/no-such-embedder", "input": "x"});
    expect_error(
        post(&gw, "/api/v1/embeddings", ("bearer", &token), &unknown).await,
        400,
        "not in OpenRouter's model list",
    )
    .await;
    // The refusals chat gets: unknown key, scope, bad body.
    let ask = json!({"model": "openai/text-embedding-3-small", "input": "x"});
    let unknown_key = format!("kc_{}", "0".repeat(48));
    expect_error(
        post(&gw, "/api/v1/embeddings", ("bearer", &unknown_key), &ask).await,
        401,
        "unknown API key",
    )
    .await;
    let scoped = gw.key("1", &["--models", "mock/cheap"]);
    expect_error(
        post(&gw, "/api/v1/embeddings", ("bearer", &scoped), &ask).await,
        403,
        "not allowed for this key",
    )
    .await;
    expect_error(
        post(
            &gw,
            "/api/v1/embeddings",
            ("bearer", &token),
            &json!("text"),
        )
        .await,
        400,
        "not an object",
    )
    .await;
    assert_eq!(gw.mock.state().n_inference_requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_see_their_own_models_credits_and_generations() {
    let gw = start().await;
    let scoped = gw.key("2", &["--models", "mock/cheap,openai/gpt-4o-mini"]);
    let open = gw.key("1", &[]);

    let models = |token: &str, path: &str| {
        let request = gw.get(path, token);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let list: serde_json::Value = response.json().await.unwrap();
            let mut ids: Vec<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|model| model["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        models(&scoped, "/api/v1/models").await,
        ["mock/cheap", "openai/gpt-4o-mini"]
    );
    assert!(models(&open, "/api/v1/models").await.len() > 2);
    assert!(
        models(&scoped, "/api/v1/embeddings/models")
            .await
            .is_empty()
    );
    assert_eq!(models(&open, "/api/v1/embeddings/models").await.len(), 2);

    // A request by each key; the scoped key's credits are its cap and its spend.
    let ask = json!({"model": "mock/cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let mine = gw.chat(&scoped, &ask).send().await.unwrap();
    let my_generation = mine.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let cost = usd(&mine.json::<serde_json::Value>().await.unwrap()["usage"]["cost"]).unwrap();
    let theirs = gw.chat(&open, &ask).send().await.unwrap();
    let their_generation = theirs.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_string();
    gw.wait_for_spent(&scoped, cost).await;

    let credits: serde_json::Value = gw
        .get("/api/v1/credits", &scoped)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        usd(&credits["data"]["total_credits"]),
        Some(Money::from_nanos(2_000_000_000))
    );
    assert_eq!(usd(&credits["data"]["total_usage"]), Some(cost));

    let generation = |token: &str, id: &str| gw.get(&format!("/api/v1/generation?id={id}"), token);
    let response = generation(&scoped, &my_generation).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["data"]["id"], my_generation.as_str());
    expect_error(
        generation(&scoped, &their_generation).send().await.unwrap(),
        404,
        "no generation with this id was made with this key",
    )
    .await;
    // A second `id` goes no further than the gateway: only the one checked is asked for.
    let twice = format!("{my_generation}&id={their_generation}");
    let response = generation(&scoped, &twice).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["data"]["id"], my_generation.as_str());
    expect_error(
        gw.get("/api/v1/generation", &scoped).send().await.unwrap(),
        400,
        "name the generation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_part_reserves_the_models_context_window() {
    let gw = start().await;
    // `mock/cheap` has a 128,000-token window at $0.000001 a token: a request with a file part
    // (here by URL, its tokens nowhere in the body) needs $0.128 of prompt before any answer.
    let ask = json!({
        "model": "mock/cheap",
        "max_output_tokens": 16,
        "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Summarise this."},
            {"type": "input_file", "file_url": "https://example.com/report.pdf"},
        ]}],
    });
    let poor = gw.key("0.1", &[]);
    expect_error(
        post(&gw, "/api/v1/responses", ("bearer", &poor), &ask).await,
        402,
        "key budget exhausted",
    )
    .await;
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
    let enough = gw.key("0.2", &[]);
    let response = post(&gw, "/api/v1/responses", ("bearer", &enough), &ask).await;
    assert_eq!(response.status(), 200);
    let cost = usd(&response.json::<serde_json::Value>().await.unwrap()["usage"]["cost"]).unwrap();
    gw.wait_for_spent(&enough, cost).await;
}
