//! The walk a new team takes, from the setup link to spend on the dashboard, in one browser.

use std::time::{Duration, Instant};

use fantoccini::Client;

use crate::browser::{Browser, PHONE};
use crate::stack::Stack;
use crate::{act, check, find};

const OWNER: &str = "owner@example.com";
const MEMBER: &str = "member@example.com";
const OWNER_PASSWORD: &str = "owner-password-123";
const MEMBER_PASSWORD: &str = "member-password-456";
/// A model the mock prices, at a fraction of a cent per request.
const MODEL: &str = "mock/cheap";

/// Checks the page is styled and keeps a picture of it.
async fn shot(browser: &Browser, name: &str) {
    check::styled(&browser.client).await;
    act::screenshot(browser, name).await;
}

/// Checks the page fits a phone's width and keeps a picture of it as a phone shows it.
async fn phone_shot(browser: &Browser, name: &str) {
    act::resize(&browser.client, PHONE).await;
    check::fits_width(&browser.client).await;
    act::phone_screenshot(browser, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_team_goes_from_setup_link_to_spend_on_the_dashboard() {
    if !crate::enabled("a_new_team_goes_from_setup_link_to_spend_on_the_dashboard") {
        return;
    }
    let started = Instant::now();
    let stack = Stack::start().await;
    let browser = Browser::start().await;
    let client = &browser.client;
    let admin = stack.admin_url.as_str();

    // The owner opens the setup link keycap printed and creates their account and org.
    act::open(client, &stack.setup_link).await;
    check::says(client, "h1", "Set up keycap").await;
    shot(&browser, "01-setup").await;
    act::fill(client, "#org_name", "Acme Research").await;
    act::fill(client, "#email", OWNER).await;
    act::fill(client, "#password", OWNER_PASSWORD).await;
    act::submit(client, "form[action='/setup']").await;
    check::no_form_errors(client).await;
    check::at(client, "/dashboard").await;
    check::notice(client, "keycap is set up").await;
    shot(&browser, "02-dashboard-owner-welcome").await;

    // They put the team's OpenRouter key in the vault and test it against the upstream.
    act::open(client, &format!("{admin}/vault")).await;
    act::fill(client, "#name", "team OpenRouter key").await;
    let master_key = stack.mock.state().config().master_key.clone();
    act::fill(client, "#secret", &master_key).await;
    act::submit(client, "form[action='/vault']").await;
    check::no_form_errors(client).await;
    check::notice(client, "Master key sealed and stored").await;
    act::submit(client, "form[action$='/test']").await;
    check::no_form_errors(client).await;
    check::notice(client, "the upstream accepted master key").await;
    shot(&browser, "03-vault-key-tested").await;

    // They invite a member with a monthly budget and copy the invite link.
    act::open(client, &format!("{admin}/members")).await;
    act::fill(client, "#invite-email", MEMBER).await;
    find::element(client, "#invite-role")
        .await
        .select_by_value("user")
        .await
        .unwrap();
    act::fill(client, "#invite-budget", "50.00").await;
    act::submit(client, "form[action='/members/invite']").await;
    check::no_form_errors(client).await;
    let invite_link = find::text(client, "#invite-link").await;
    assert!(
        invite_link.starts_with(&format!("{admin}/invite/")),
        "invite link {invite_link:?}"
    );
    shot(&browser, "04-members-invite-link").await;

    // The member opens the link in a browser of their own and chooses a password.
    client.delete_all_cookies().await.unwrap();
    act::open(client, &invite_link).await;
    check::says(client, "h1", "Join Acme Research").await;
    check::says(client, "main", MEMBER).await;
    shot(&browser, "05-invite").await;
    act::fill(client, "#password", MEMBER_PASSWORD).await;
    act::submit(client, "form[action^='/invite/']").await;
    check::no_form_errors(client).await;
    check::at(client, "/dashboard").await;
    check::notice(client, "you joined the org").await;
    check::says(client, "#budget", "$50.00").await;

    // The member provisions a key with a $5 cap and copies its one-time token.
    act::open(client, &format!("{admin}/store")).await;
    act::fill(client, "#name", "laptop").await;
    act::fill(client, "#cap", "5").await;
    act::submit(client, "#store-form").await;
    check::no_form_errors(client).await;
    let token = find::text(client, "#token").await;
    assert!(token.starts_with("kc_"), "token {token:?}");
    check::says(client, "#snippet-env", &stack.gateway_url).await;
    shot(&browser, "06-store-token").await;
    phone_shot(&browser, "06-store-token-phone").await;

    // An app uses the token against the gateway.
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", stack.gateway_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": "Hello from the browser walk" }],
        }))
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "the gateway refused the new key: {body}");

    // Once the gateway flushes, the member sees the spend on their key.
    act::open(client, &format!("{admin}/my-keys")).await;
    let spent = wait_for_spend(client).await;
    check::more_than_zero("the key's spend on /my-keys", &spent);
    shot(&browser, "07-my-keys-spent").await;

    // The member raises the key's cap from their budget, on the same page.
    act::fill(client, "form[action$='/cap'] input[name='cap']", "8").await;
    act::submit(client, "form[action$='/cap']").await;
    check::no_form_errors(client).await;
    check::says(client, ".notice", "Cap changed").await;
    let cap = find::first_key(client)
        .await
        .into_iter()
        .find(|(heading, _)| heading == "Cap")
        .map(|(_, value)| value)
        .expect("the keys table has a Cap column");
    assert_eq!(cap, "$8.00", "the key's cap on /my-keys after the raise");
    shot(&browser, "07b-my-keys-cap-raised").await;

    // The owner signs in again and sees the spend and the ledger.
    act::sign_out(client).await;
    check::at(client, "/login").await;
    shot(&browser, "08-login").await;
    act::sign_in(client, admin, OWNER, OWNER_PASSWORD).await;
    check::no_form_errors(client).await;
    check::at(client, "/dashboard").await;
    let org_spent = find::org_figure(client, "Spent this month").await;
    check::more_than_zero("the org's spend this month on /dashboard", &org_spent);
    shot(&browser, "09-dashboard-owner-spend").await;
    phone_shot(&browser, "09-dashboard-owner-spend-phone").await;

    act::open(client, &format!("{admin}/audit")).await;
    check::says(client, "#chain-status", "intact").await;
    let chain_class = find::element(client, "#chain-status")
        .await
        .attr("class")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        chain_class.split(' ').any(|c| c == "ok"),
        "chain status class {chain_class:?}"
    );
    let kinds = find::ledger_kinds(client).await;
    for kind in [
        "key provisioned",
        "key cap changed",
        "member joined",
        "member invited",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind:?} in the audit rows {kinds:?}"
        );
    }
    shot(&browser, "10-audit").await;

    // The member is not an owner: the vault is closed to them.
    act::sign_out(client).await;
    act::sign_in(client, admin, MEMBER, MEMBER_PASSWORD).await;
    check::at(client, "/dashboard").await;
    act::open(client, &format!("{admin}/vault")).await;
    check::says(client, "h1", "403").await;
    check::says(client, ".error-message", "only an owner").await;
    shot(&browser, "11-vault-refused-403").await;

    browser.close().await;
    stack.stop().await;
    println!(
        "walked from setup link to spend in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The Spent column of the first key on `/my-keys`, reloading until it is more than $0.00 (the
/// gateway writes spend every 100 ms) or 15 s have passed.
async fn wait_for_spend(client: &Client) -> String {
    let started = Instant::now();
    loop {
        let cells = find::first_key(client).await;
        let spent = cells
            .iter()
            .find(|(heading, _)| heading == "Spent")
            .map(|(_, value)| value.clone())
            .expect("the keys table has a Spent column");
        if spent != "$0.00" || started.elapsed() > Duration::from_secs(15) {
            return spent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.refresh().await.unwrap();
    }
}
