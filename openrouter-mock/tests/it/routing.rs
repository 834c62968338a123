//! Provider routing within `provider.max_price`, routing suffixes, and what web search, files
//! and the bill-most mode cost.

use serde_json::{Value, json};

use crate::{Mock, chat_body};

/// The provider and the cost (nano-dollars) of one chat request.
async fn served(mock: &Mock, body: &Value, headers: &[(&str, &str)]) -> (u16, String, u64) {
    let mut request = mock.chat(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("mock answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("mock answers");
    if status != 200 {
        return (status, text, 0);
    }
    let answer: Value = serde_json::from_str(&text).expect("mock answers");
    let id = answer["id"].as_str().expect("mock answers").to_string();
    let generation: Value = mock
        .get(&format!("/generation?id={id}"), &mock.master_key())
        .send()
        .await
        .expect("mock answers")
        .json()
        .await
        .expect("mock answers");
    let cost = crate::exact_nanos(&crate::raw_number(&text, "cost"));
    (
        status,
        generation["data"]["provider_name"]
            .as_str()
            .expect("mock answers")
            .to_string(),
        cost,
    )
}

#[tokio::test]
async fn requests_route_to_providers_at_their_own_prices() {
    let mock = Mock::start().await;
    // 40 bytes of text: 10 prompt tokens; 5 completion tokens. mock/cheap lists $1/M prompt
    // and $2/M completion: 10 x 1000 + 5 x 2000 = 20,000 nanos at the cheapest provider.
    let text = "0123456789012345678901234567890123456789";
    let body = |model: &str| chat_body(model, text, Some(5));
    let at = |mut body: Value, provider: Value| {
        body["provider"] = provider;
        body
    };
    assert_eq!(
        served(&mock, &body("mock/cheap"), &[]).await,
        (200, "Cheap".into(), 20_000)
    );
    assert_eq!(
        served(&mock, &body("mock/cheap:floor"), &[]).await,
        (200, "Cheap".into(), 20_000)
    );
    assert_eq!(
        served(&mock, &body("mock/cheap:exacto"), &[]).await,
        (200, "Steady".into(), 40_000)
    );
    assert_eq!(
        served(&mock, &body("mock/cheap:nitro"), &[]).await,
        (200, "Fast".into(), 60_000)
    );
    assert_eq!(
        served(
            &mock,
            &at(body("mock/cheap"), json!({"order":["Fast"]})),
            &[]
        )
        .await,
        (200, "Fast".into(), 60_000)
    );
    assert_eq!(
        served(
            &mock,
            &at(body("mock/cheap"), json!({"sort":"throughput"})),
            &[]
        )
        .await,
        (200, "Fast".into(), 60_000)
    );
    // The cheapest provider down: the request falls back to a dearer one.
    assert_eq!(
        served(
            &mock,
            &body("mock/cheap"),
            &[("x-mock-provider-down", "Cheap")]
        )
        .await,
        (200, "Steady".into(), 40_000)
    );
    // max_price (USD per million tokens) keeps dearer providers out, in every way of asking.
    let listed = json!({"max_price":{"prompt":1,"completion":2}});
    for asked in [
        body("mock/cheap:nitro"),
        at(
            body("mock/cheap"),
            json!({"order":["Fast"],"max_price":{"prompt":1,"completion":2}}),
        ),
    ] {
        let mut asked = asked;
        if asked.get("provider").is_none() {
            asked["provider"] = listed.clone();
        }
        assert_eq!(
            served(&mock, &asked, &[]).await,
            (200, "Cheap".into(), 20_000)
        );
    }
    let (status, text, _) = served(
        &mock,
        &at(body("mock/cheap"), json!({"max_price":{"prompt":"0.5"}})),
        &[],
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("max_price"), "{text}");
    let (status, _, _) = served(
        &mock,
        &at(body("mock/cheap"), listed.clone()),
        &[("x-mock-provider-down", "Cheap")],
    )
    .await;
    assert_eq!(status, 404, "no fallback past max_price");
    // Each provider is listed with its prices.
    let endpoints: Value = mock
        .get("/models/mock/cheap/endpoints", &mock.master_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompts: Vec<&str> = endpoints["data"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["pricing"]["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, ["0.000001", "0.000002", "0.000003"]);
}

#[tokio::test]
async fn searches_files_and_the_bill_most_mode_cost_what_openrouter_bills() {
    let mock = Mock::start().await;
    let text = "0123456789012345678901234567890123456789";
    let mut web = chat_body("mock/cheap", text, Some(5));
    web["plugins"] = json!([{"id":"web","max_results":5,"max_uses":2}]);
    // One search ($0.007), five results of 300 tokens each added to the prompt.
    let (_, _, cost) = served(&mock, &web, &[]).await;
    assert_eq!(cost, 7_000_000 + (10 + 1_500) * 1_000 + 5 * 2_000);
    // Billing the most: both searches, each looping back into the model, results of 2,000
    // tokens, the dearest provider (3x), and a prompt of one token per byte of messages.
    let (_, provider, most) = served(&mock, &web, &[("x-mock-bill", "most")]).await;
    assert_eq!(provider, "Fast");
    let messages = web["messages"].to_string().len() as u64;
    let per_call = messages + 2 * 5 * 2_000;
    assert_eq!(most, 2 * 7_000_000 + 3 * (per_call * 3_000 + 5 * 6_000));
    // A PDF with no engine named goes to OCR: three pages at $0.002; a free engine costs
    // only the text it adds.
    let mut pdf = chat_body("mock/cheap", text, Some(5));
    pdf["messages"][0]["content"] = json!([
        {"type":"text","text":text},
        {"type":"file","file":{"filename":"a.pdf","file_data":"https://example.com/a.pdf"}}
    ]);
    let (_, _, cost) = served(&mock, &pdf, &[]).await;
    assert_eq!(cost, 3 * 2_000_000 + (10 + 500) * 1_000 + 5 * 2_000);
    pdf["plugins"] = json!([{"id":"file-parser","pdf":{"engine":"cloudflare-ai"}}]);
    let (_, _, cost) = served(&mock, &pdf, &[]).await;
    assert_eq!(cost, (10 + 500) * 1_000 + 5 * 2_000);
}
