//! Every form's bad input: the form comes back with the message next to the field and what
//! was typed, the status is 400, and nothing was written.

use crate::support::App;

/// Form fields to send, and texts the refused page must contain.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[tokio::test]
async fn the_store_refuses_bad_keys_and_keeps_what_was_typed() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let member = app.member(&owner, "bob@acme.test", "user", "10").await;
    // No master key yet: a clear message for the whole form.
    member
        .post(
            "/store",
            &[
                ("service", "openrouter"),
                ("name", "laptop"),
                ("cap", "1"),
                ("expires", ""),
                ("models", ""),
            ],
        )
        .await
        .expect(
            400,
            &["has no active openrouter master key", "value=\"laptop\""],
        );
    owner.add_master_key("main", &app.master_secret()).await;
    let rows = app.ledger_rows().await;
    let cases: &[Case] = &[
        (&[("name", ""), ("cap", "1")], &["enter a name"]),
        (&[("name", "x"), ("cap", "abc")], &["abc", "value=\"abc\""]),
        (
            &[("name", "x"), ("cap", "0")],
            &["a key needs a cap above $0"],
        ),
        (&[("name", "x"), ("cap", "-3")], &["value=\"-3\""]),
        (
            &[("name", "big"), ("cap", "10.01")],
            &["value=\"big\"", "value=\"10.01\""],
        ),
        (
            &[("name", "x"), ("cap", "1"), ("expires", "someday")],
            &["is not understood", "value=\"someday\""],
        ),
        (
            &[("name", "x"), ("cap", "1"), ("expires", "2001-01-01")],
            &["not in the future"],
        ),
        (
            &[("name", "x"), ("cap", "1"), ("rpm", "0")],
            &["requests per minute", "value=\"0\""],
        ),
        (
            &[("name", "x"), ("cap", "1"), ("rpm", "lots")],
            &["requests per minute", "value=\"lots\""],
        ),
        (
            &[("name", "x"), ("cap", "1"), ("service", "aws")],
            &["aws", "is unknown"],
        ),
        (
            &[("name", &"n".repeat(201)), ("cap", "1")],
            &["at most 200 characters"],
        ),
    ];
    for (fields, texts) in cases {
        let mut all: Vec<(&str, &str)> =
            vec![("service", "openrouter"), ("expires", ""), ("models", "")];
        for (key, value) in fields.iter() {
            all.retain(|(k, _)| k != key);
            all.push((key, value));
        }
        let page = member.post("/store", &all).await;
        page.expect(400, texts);
        assert!(
            page.body.contains("field-error"),
            "{fields:?}: {}",
            page.body
        );
    }
    assert_eq!(
        app.ledger_rows().await,
        rows,
        "a refused key wrote to the ledger"
    );
    // Over the budget: the cap's message says what is left.
    member
        .post(
            "/store",
            &[
                ("service", "openrouter"),
                ("name", "big"),
                ("cap", "10.01"),
                ("expires", ""),
                ("models", ""),
            ],
        )
        .await
        .expect(400, &["$10.00"]);
    // The good one works, and the budget shown drops.
    let (id, token) = member.provision("laptop", "4").await;
    assert!(token.starts_with("kc_"), "{token}");
    member.get("/store").await.expect(200, &["$6.00"]);

    // Its cap, changed on /my-keys: bad amounts and a raise past the budget are refused with
    // the reason and change nothing; a raise within it is carved.
    let cap_form = format!("/my-keys/{id}/cap");
    member
        .get("/my-keys")
        .await
        .expect(200, &[&format!("action=\"{cap_form}\""), "value=\"4.00\""]);
    let rows = app.ledger_rows().await;
    for (cap, texts) in [
        // The message names the key, and its form keeps what was typed.
        (
            "abc",
            &["The cap of laptop (kc_", "was not changed", "value=\"abc\""][..],
        ),
        ("", &["enter an amount in USD"][..]),
        ("0", &["a cap must be more than $0.00"][..]),
        (
            "10.01",
            &["raising the cap takes $6.01 from the budget, more than is left this month ($6.00)"]
                [..],
        ),
    ] {
        member
            .post(&cap_form, &[("cap", cap)])
            .await
            .expect(400, texts);
    }
    assert_eq!(
        app.ledger_rows().await,
        rows,
        "a refused cap wrote to the ledger"
    );
    member
        .post(&cap_form, &[("cap", "7")])
        .await
        .expect_redirect("/my-keys?notice=key_cap_set");
    member.get("/store").await.expect(200, &["$3.00"]);
    // Sent again as the form shows it: the cap is unchanged, and the page says so.
    member
        .post(&cap_form, &[("cap", "7.00")])
        .await
        .expect(409, &["The cap of laptop (kc_", "cap is $7.00 already"]);
    member
        .get("/my-keys?notice=key_cap_set")
        .await
        .expect(200, &["value=\"7.00\"", "Cap changed"]);
    // A key the upstream billed past its cap (a pricing bug, which the gateway logs and
    // counts) says so, and by how much.
    app.sql(&format!(
        "UPDATE key_spends SET spent_nanousd = 7000001234 WHERE api_key_id = '{id}'"
    ))
    .await;
    member
        .get("/my-keys")
        .await
        .expect(200, &["over-cap", "over its cap by $0.000001234"]);
}

#[tokio::test]
async fn the_vault_and_members_forms_refuse_bad_input() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let rows = app.ledger_rows().await;
    for (fields, texts) in [
        (
            vec![("service", "openrouter"), ("name", ""), ("secret", "sk-1")],
            vec!["enter a name"],
        ),
        (
            vec![("service", "openrouter"), ("name", "main"), ("secret", "")],
            vec!["paste the master key", "value=\"main\""],
        ),
        (
            vec![
                ("service", "openrouter"),
                ("name", "main"),
                ("secret", "sk or v1"),
            ],
            vec!["spaces or control characters"],
        ),
        (
            vec![("service", "nope"), ("name", "main"), ("secret", "sk-1")],
            vec!["is unknown"],
        ),
    ] {
        let page = owner.post("/vault", &fields).await;
        page.expect(400, &texts);
        // The secret is never sent back to the page.
        assert!(!page.body.contains("sk or v1"), "{}", page.body);
    }
    for (fields, texts) in [
        (
            vec![("email", "bob"), ("role", "user"), ("budget", "10")],
            vec!["is not an email address", "value=\"bob\""],
        ),
        (
            vec![
                ("email", "bob@acme.test"),
                ("role", "king"),
                ("budget", "10"),
            ],
            vec!["king", "is unknown"],
        ),
        (
            vec![
                ("email", "bob@acme.test"),
                ("role", "user"),
                ("budget", "ten"),
            ],
            vec!["ten", "value=\"ten\""],
        ),
        (
            vec![("email", "bob@acme.test"), ("role", "user"), ("budget", "")],
            vec!["enter an amount"],
        ),
        (
            vec![
                ("email", "ann@acme.test"),
                ("role", "user"),
                ("budget", "10"),
            ],
            vec!["already a member"],
        ),
    ] {
        owner
            .post("/members/invite", &fields)
            .await
            .expect(400, &texts);
    }
    owner
        .post(
            "/members/budget",
            &[("email", "ann@acme.test"), ("budget", "lots")],
        )
        .await
        .expect(400, &["lots"]);
    owner
        .post(
            "/members/role",
            &[("email", "ann@acme.test"), ("role", "user")],
        )
        .await
        .expect(409, &["last owner"]);
    owner
        .post("/members/remove", &[("email", "ann@acme.test")])
        .await
        .expect(409, &["last owner"]);
    owner
        .post(
            "/members/budget",
            &[("email", "ghost@acme.test"), ("budget", "1")],
        )
        .await
        .expect(404, &["ghost@acme.test"]);
    owner
        .post(
            "/account/tokens",
            &[("name", ""), ("password", crate::support::PASSWORD)],
        )
        .await
        .expect(400, &["token name must be 1 to 200 characters"]);
    owner
        .get("/audit?from=yesterday&kind=nonsense")
        .await
        .expect(
            400,
            &[
                "is not a date",
                "is not a kind of ledger entry",
                "value=\"yesterday\"",
            ],
        );
    owner
        .get("/audit?before=abc")
        .await
        .expect(400, &["bad query parameter"]);
    assert_eq!(
        app.ledger_rows().await,
        rows,
        "a refused form wrote to the ledger"
    );
}

#[tokio::test]
async fn csrf_and_cross_site_requests_are_refused() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let rows = app.ledger_rows().await;
    let posts: &[(&str, &[(&str, &str)])] = &[
        (
            "/members/invite",
            &[("email", "x@acme.test"), ("role", "user"), ("budget", "1")],
        ),
        (
            "/members/budget",
            &[("email", "ann@acme.test"), ("budget", "1")],
        ),
        (
            "/vault",
            &[("service", "openrouter"), ("name", "m"), ("secret", "sk-1")],
        ),
        ("/store", &[("name", "k"), ("cap", "1")]),
        ("/account/tokens", &[("name", "t")]),
        (
            "/account/password",
            &[
                ("current", "x"),
                ("new_password", "yyyyyyyyyyyy"),
                ("confirm", "yyyyyyyyyyyy"),
            ],
        ),
        ("/logout", &[]),
    ];
    for (path, fields) in posts {
        owner
            .post_anonymous(path, fields)
            .await
            .expect(403, &["security token is missing"]);
        let mut wrong: Vec<(&str, &str)> = fields.to_vec();
        wrong.push(("csrf", "not-the-token"));
        owner.post_anonymous(path, &wrong).await.expect(403, &[]);
    }
    // JSON with a session needs the header.
    let api = owner
        .http
        .post(format!("{}/api/members/invite", app.base))
        .json(&serde_json::json!({"email": "x@acme.test", "budget": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 403);
    // A form posted from another site is refused even with the right token.
    let csrf = owner.csrf().await;
    let cross = owner
        .http
        .post(format!("{}/members/budget", app.base))
        .header("origin", "http://evil.test")
        .form(&[("email", "ann@acme.test"), ("budget", "1"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    assert!(cross.text().await.unwrap().contains("another site"));
    assert_eq!(app.ledger_rows().await, rows);
    // The session still works: none of that signed out.
    owner.get("/dashboard").await.expect(200, &[]);
}
