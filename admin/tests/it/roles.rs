//! Every route's role check: anonymous visitors are sent to sign in (pages) or get 401 (API);
//! users get 403 on owner routes; owners get through.

use crate::support::{App, PASSWORD};

/// Owner-only pages and actions, as (method, path).
const OWNER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/vault"),
    ("POST", "/vault"),
    ("POST", "/vault/{master}/test"),
    ("POST", "/vault/{master}/rotate"),
    ("GET", "/vault/{master}/revoke"),
    ("POST", "/vault/{master}/revoke"),
    ("GET", "/members"),
    ("POST", "/members/invite"),
    ("POST", "/members/budget"),
    ("POST", "/members/role"),
    ("POST", "/members/remove"),
    ("GET", "/audit"),
    ("GET", "/audit.csv"),
    ("POST", "/account/tokens"),
    ("GET", "/api/members"),
    ("POST", "/api/members/invite"),
    ("POST", "/api/members/budget"),
    ("POST", "/api/members/role"),
    ("POST", "/api/members/remove"),
    ("GET", "/api/master-keys"),
    ("POST", "/api/master-keys"),
    ("POST", "/api/master-keys/{master}/rotate"),
    ("POST", "/api/master-keys/{master}/revoke"),
    ("POST", "/api/master-keys/{master}/test"),
    ("GET", "/api/audit"),
    ("GET", "/api/keys?all=true"),
];

/// Pages every member may open.
const MEMBER_PAGES: &[&str] = &[
    "/dashboard",
    "/my-keys",
    "/store",
    "/account",
    "/api/me",
    "/api/keys",
];

#[tokio::test]
async fn each_route_checks_the_role_on_the_server() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let master = owner.add_master_key("main", &app.master_secret()).await;
    let user = app.member(&owner, "bob@acme.test", "user", "50").await;
    let anonymous = app.person();
    let rows_before = app.ledger_rows().await;
    for (method, path) in OWNER_ROUTES {
        let path = path.replace("{master}", &master);
        let is_api = path.starts_with("/api/");
        let as_user = match *method {
            "GET" => user.get(&path).await,
            _ if is_api => {
                user.post_json(&path, serde_json::json!({"email": "ann@acme.test", "secret": "x", "name": "x", "budget": "1", "budget_usd": "1", "role": "user"}))
                    .await
            }
            _ => {
                user.post(&path, &[("email", "ann@acme.test"), ("budget", "1"), ("role", "user"), ("name", "x"), ("secret", "x")])
                    .await
            }
        };
        assert_eq!(
            as_user.status.as_u16(),
            403,
            "{method} {path} as a user: {}",
            as_user.body
        );
        if is_api {
            assert_eq!(as_user.json()["error"]["status"], 403, "{path}");
        } else {
            assert!(
                as_user.body.contains("only an owner"),
                "{path}: {}",
                as_user.body
            );
        }
        let as_anonymous = match *method {
            "GET" => anonymous.get(&path).await,
            _ => anonymous.post_anonymous(&path, &[]).await,
        };
        if is_api {
            assert_eq!(
                as_anonymous.status.as_u16(),
                401,
                "{method} {path} anonymous"
            );
        } else {
            as_anonymous.expect_redirect("/login");
        }
    }
    assert_eq!(
        app.ledger_rows().await,
        rows_before,
        "a refused request wrote to the ledger"
    );
    for path in MEMBER_PAGES {
        user.get(path).await.expect(200, &[]);
        owner.get(path).await.expect(200, &[]);
        let as_anonymous = anonymous.get(path).await;
        if path.starts_with("/api/") {
            assert_eq!(as_anonymous.status.as_u16(), 401, "{path}");
        } else {
            as_anonymous.expect_redirect("/login");
        }
    }
    for (method, path) in OWNER_ROUTES.iter().filter(|(m, _)| *m == "GET") {
        let path = path.replace("{master}", &master);
        owner.get(&path).await.expect(200, &[]);
        let _ = method;
    }
    // The navigation shows owner pages to owners only.
    let user_nav = user.get("/dashboard").await;
    assert!(
        !user_nav.body.contains("href=\"/vault\""),
        "{}",
        user_nav.body
    );
    owner
        .get("/dashboard")
        .await
        .expect(200, &["href=\"/vault\"", "href=\"/audit\""]);
    // A member may revoke their own key, but not someone else's.
    let (owner_key, _) = owner.provision_after_budget(&app, "owner-key").await;
    user.post(&format!("/my-keys/{owner_key}/revoke"), &[])
        .await
        .expect(403, &["belongs to another member"]);
    user.post(&format!("/my-keys/{owner_key}/cap"), &[("cap", "1")])
        .await
        .expect(403, &["only they or an owner can change its cap"]);
    let _ = PASSWORD;
}

#[tokio::test]
async fn unknown_pages_get_a_404_page_and_unknown_api_routes_json() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    owner
        .get("/nope")
        .await
        .expect(404, &["there is no page at this address"]);
    let api = owner.get("/api/nope").await;
    api.expect(404, &["openapi.json"]);
    assert_eq!(api.json()["error"]["status"], 404);
    owner.get("/my-keys/xyz/revoke").await.expect(405, &[]);
    // The stylesheet and script are public.
    let anonymous = app.person();
    anonymous
        .get("/static/app.css")
        .await
        .expect(200, &["font"]);
    anonymous.get("/static/app.js").await.expect(200, &["copy"]);
}

#[tokio::test]
async fn a_failure_on_our_side_shows_a_request_id_and_no_internals() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    // Break the database under the app: the members page can no longer read the ledger.
    app.sql("ALTER TABLE transactions RENAME TO transactions_gone")
        .await;
    let page = owner.get("/members").await;
    page.expect(500, &["something went wrong on our side", "request id"]);
    for internal in ["transactions", "relation", "SELECT", "ERROR"] {
        assert!(
            !page.body.contains(internal),
            "the 500 page shows {internal:?}: {}",
            page.body
        );
    }
    let api = owner.get("/api/members").await;
    assert_eq!(api.status.as_u16(), 500);
    assert!(!api.body.contains("relation"), "{}", api.body);
    app.sql("ALTER TABLE transactions_gone RENAME TO transactions")
        .await;
    owner.get("/members").await.expect(200, &[]);
}
