//! The JSON API: admin tokens, the key lifecycle, JSON errors, and an OpenAPI document that
//! names every route the app serves.

use serde_json::json;

use crate::support::App;

#[tokio::test]
async fn admin_tokens_drive_the_api_and_stop_when_revoked() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    // Making one asks for the password.
    owner
        .post("/account/tokens", &[("name", "ci"), ("password", "wrong")])
        .await
        .expect(400, &["that is not your password"]);
    owner
        .post(
            "/account/tokens",
            &[
                ("name", "ci"),
                ("days", "never"),
                ("password", crate::support::PASSWORD),
            ],
        )
        .await
        .expect(400, &["an admin token needs an end"]);
    let page = owner
        .post(
            "/account/tokens",
            &[("name", "ci"), ("password", crate::support::PASSWORD)],
        )
        .await;
    page.expect(200, &["shown only once"]);
    let token = page.secret("new-token");
    assert!(token.starts_with("kca_"), "{token}");

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", app.base))
            .bearer_auth(&token)
    };
    // No cookie and no CSRF header: the token is enough.
    let invited = call(reqwest::Method::POST, "/api/members/invite")
        .json(&json!({"email": "bob@acme.test", "role": "user", "budget": "25"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invited.status().as_u16(), 201);
    let invited: serde_json::Value = invited.json().await.unwrap();
    assert!(invited["link"].as_str().unwrap().contains("/invite/"));
    assert_eq!(invited["budget_nanousd"], 25_000_000_000i64);

    let added = call(reqwest::Method::POST, "/api/master-keys")
        .json(&json!({"name": "main", "secret": app.master_secret()}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 201);
    let budget = call(reqwest::Method::POST, "/api/members/budget")
        .json(&json!({"email": "ann@acme.test", "budget_usd": "12.5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status().as_u16(), 200);
    // Bad fields come back per field, and nothing is made.
    let bad = call(reqwest::Method::POST, "/api/keys")
        .json(&json!({"name": "", "cap_usd": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let bad: serde_json::Value = bad.json().await.unwrap();
    assert!(bad["error"]["fields"]["name"].is_string(), "{bad}");
    assert!(bad["error"]["fields"]["cap"].is_string(), "{bad}");
    let not_json = call(reqwest::Method::POST, "/api/keys")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    let not_json: serde_json::Value = not_json.json().await.unwrap();
    assert!(
        not_json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be read")
    );

    let created = call(reqwest::Method::POST, "/api/keys")
        .json(&json!({"name": "ci-key", "cap_usd": "2.50", "expires": "7d", "model_scope": ["mock/cheap"], "rate_limit_rpm": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(created["cap_nanousd"], 2_500_000_000i64);
    assert_eq!(created["rate_limit_rpm"], 30);
    assert!(created["token"].as_str().unwrap().starts_with("kc_"));
    let id = created["id"].as_str().unwrap().to_string();
    let listed: serde_json::Value = call(reqwest::Method::GET, "/api/keys?all=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert!(
        listed["keys"][0].get("token").is_none(),
        "a listed key carries its token"
    );
    // ann's budget is $12.50: a raise to $10 carves $7.50 more, a cut to $4 gives $6 back, and
    // a raise past the budget is refused per field.
    let set_cap = async |cap: &str| {
        call(reqwest::Method::POST, &format!("/api/keys/{id}/cap"))
            .json(&json!({ "cap_usd": cap }))
            .send()
            .await
            .unwrap()
    };
    let raised = set_cap("10").await;
    assert_eq!(raised.status().as_u16(), 200);
    let raised: serde_json::Value = raised.json().await.unwrap();
    assert_eq!(raised["cap_nanousd"], 10_000_000_000i64);
    assert_eq!(raised["old_cap_nanousd"], 2_500_000_000i64);
    assert_eq!(raised["carved_nanousd"], 7_500_000_000i64);
    let too_much = set_cap("12.51").await;
    assert_eq!(too_much.status().as_u16(), 400);
    let too_much: serde_json::Value = too_much.json().await.unwrap();
    assert!(
        too_much["error"]["fields"]["cap"]
            .as_str()
            .unwrap()
            .contains("more than is left this month ($2.50)"),
        "{too_much}"
    );
    let cut: serde_json::Value = set_cap("4").await.json().await.unwrap();
    assert_eq!(cut["refund_nanousd"], 6_000_000_000i64);
    assert_eq!(cut["remaining_nanousd"], 4_000_000_000i64);

    let revoked: serde_json::Value = call(reqwest::Method::POST, &format!("/api/keys/{id}/revoke"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["refund_nanousd"], 4_000_000_000i64);
    // A closed key's cap is a conflict, said in JSON.
    let closed = set_cap("3").await;
    assert_eq!(closed.status().as_u16(), 409);
    let closed: serde_json::Value = closed.json().await.unwrap();
    assert!(
        closed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is revoked: its cap cannot change"),
        "{closed}"
    );
    let audit: serde_json::Value = call(reqwest::Method::GET, "/api/audit?kind=refund")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["chain"]["intact"], true);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2);

    // Revoked on /account: the token stops working at once.
    let tokens = owner.get("/account").await;
    let token_id = tokens
        .body
        .split("/account/tokens/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    owner
        .post(&format!("/account/tokens/{token_id}/revoke"), &[])
        .await
        .expect_redirect("/account?notice=token_revoked");
    let refused = call(reqwest::Method::GET, "/api/me").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let garbage = http
        .get(format!("{}/api/me", app.base))
        .bearer_auth("kca_garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 401);
}

#[tokio::test]
async fn the_openapi_document_names_every_api_route() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let master = owner.add_master_key("main", &app.master_secret()).await;
    let doc = owner.get("/api/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let routes = include_str!("../../src/app.rs");
    let served: Vec<&str> = routes
        // Every string literal of the route table that names an API path.
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|path| {
            path.starts_with("/api/") && *path != "/api/openapi.json" && !path.contains('*')
        })
        .collect();
    assert!(served.len() >= 14, "{served:?}");
    for path in &served {
        assert!(
            paths.contains_key(*path),
            "{path} is served but not documented"
        );
    }
    for (path, methods) in paths {
        assert!(
            served.contains(&path.as_str()),
            "{path} is documented but not served"
        );
        for method in methods.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", &master);
            let page = match method.as_str() {
                "get" => owner.get(&concrete).await,
                _ => owner.post_json(&concrete, json!({})).await,
            };
            // A 404 about the thing (no such key) is fine; the route itself must exist.
            assert!(
                !page.body.contains("no such API route"),
                "{method} {path}: {}",
                page.body
            );
            assert_ne!(page.status.as_u16(), 405, "{method} {path}");
        }
    }
}

/// An admin token works until the end chosen when it was made, and no longer once its owner
/// changes their password.
#[tokio::test]
async fn admin_tokens_expire_and_end_with_a_password_change() {
    let start = time::OffsetDateTime::now_utc();
    let app = App::start_at(start).await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let mint = |days: &'static str| {
        let owner = &owner;
        async move {
            let page = owner
                .post(
                    "/account/tokens",
                    &[
                        ("name", "ci"),
                        ("days", days),
                        ("password", crate::support::PASSWORD),
                    ],
                )
                .await;
            page.expect(200, &["shown only once"]);
            page.secret("new-token")
        }
    };
    let month = mint("30").await;
    assert_eq!(app.me_with_token(&month).await, 200);
    app.state.clock.set(start + time::Duration::days(31));
    assert_eq!(
        app.me_with_token(&month).await,
        401,
        "a 30-day token works no more after 31 days"
    );

    app.state.clock.set(start + time::Duration::hours(1));
    let quarter = mint("90").await;
    assert_eq!(app.me_with_token(&quarter).await, 200);
    owner
        .post(
            "/account/password",
            &[
                ("current", crate::support::PASSWORD),
                ("new_password", "a-brand-new-password"),
                ("confirm", "a-brand-new-password"),
            ],
        )
        .await
        .expect_redirect("/account?notice=password_changed");
    assert_eq!(
        app.me_with_token(&quarter).await,
        401,
        "a new password ends the tokens"
    );
    // The page shows each token's end, and that the second was revoked.
    let page = owner.get("/account").await;
    let month_end = (start + time::Duration::days(30)).date().to_string();
    page.expect(200, &[month_end.as_str(), "revoked"]);
}
