//! `keycap demo`: a seeded org, member, master key (the mock's) and sub-key, and the lines to
//! try them with.

use anyhow::Context;
use db::{Actor, orgs};
use domain::services::Service;
use domain::{Email, Money, Role};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::database::Database;

const ORG: &str = "demo";
/// The demo org's owner, who can claim the account through the setup link.
pub const OWNER: &str = "owner@demo.example";
const MEMBER: &str = "dev@demo.example";

/// Seeds the demo org once (or reuses it) and provisions a fresh $1 sub-key; returns its token.
pub async fn seed(
    database: &Database,
    keyring: &vault::Keyring,
    master_key: &str,
) -> anyhow::Result<secrecy::SecretString> {
    let pool = &database.pool;
    let member = Email::parse(MEMBER)?;
    let now = OffsetDateTime::now_utc();
    let client = pool.get().await?;
    let existing = orgs::find(&client, ORG).await.ok();
    drop(client);
    let org = match existing {
        Some(org) => org,
        None => {
            let created = orgs::create(pool, ORG, &Email::parse(OWNER)?, Actor::Cli, now).await?;
            db::members::add(
                pool,
                &created.org,
                &member,
                Role::User,
                Money::from_usd(10),
                Actor::Cli,
                now,
            )
            .await?;
            let id = Uuid::new_v4();
            let sealed = keyring.seal(created.org.id, id, master_key);
            let new = db::master_keys::NewMasterKey {
                id,
                service: Service::OpenRouter,
                name: "openrouter-mock".into(),
                last_four: vault::last_four(master_key),
                sealed,
            };
            db::master_keys::add(pool, &created.org, &new, Actor::Cli, now).await?;
            created.org
        }
    };
    let new_key = db::keys::NewKey {
        member,
        service: Service::OpenRouter,
        name: format!("demo-{}", now.unix_timestamp()),
        cap: Money::from_usd(1),
        expires_at: None,
        model_scope: vec![],
        renew_monthly: false,
        rate_limit_rpm: None,
    };
    let (_, token) = db::keys::create(pool, &org, &new_key, Actor::Cli, now)
        .await
        .context("provisioning the demo key (the demo member's $10 budget may be carved out: remove keycap-data/demo to start afresh)")?;
    Ok(secrecy::SecretString::from(token.expose().to_string()))
}

/// Prints a curl line and an OpenAI-SDK line that work as printed.
pub fn print_instructions(listen: &str, token: &secrecy::SecretString) {
    let token = token.expose_secret();
    println!("demo sub-key ($1.00 cap, member {MEMBER} of org {ORG:?}): {token}");
    println!();
    println!(
        "curl -s http://{listen}/api/v1/chat/completions -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"model\":\"openai/gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello\"}}],\"max_tokens\":32}}'"
    );
    println!();
    println!("curl -s http://{listen}/api/v1/key -H 'Authorization: Bearer {token}'");
    println!();
    println!(
        "python3 -c \"from openai import OpenAI; c = OpenAI(base_url='http://{listen}/api/v1', api_key='{token}'); print(c.chat.completions.create(model='openai/gpt-4o-mini', messages=[{{'role': 'user', 'content': 'Say hello'}}], max_tokens=32).choices[0].message.content)\""
    );
}
