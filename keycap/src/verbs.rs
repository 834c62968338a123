//! The admin verbs of the command line: each one database transaction with its ledger row.
//! Results go to standard output; notes for people go to standard error.

use std::io::Read;

use anyhow::{Context, bail};
use db::{Actor, orgs};
use domain::services::Service;
use domain::{Email, Money, MonthWindow, Role};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::cli::{
    AuditArgs, AuditCommand, BudgetCommand, KeyCommand, KeyCreateArgs, MemberCommand, OrgCommand,
    TokenCommand, VaultCommand,
};
use crate::config::AdminSection;
use crate::database::Database;

/// The org named `name`, read on a connection that goes back to the pool at once.
async fn find_org(database: &Database, name: &str) -> anyhow::Result<orgs::Org> {
    let client = database.pool.get().await?;
    Ok(orgs::find(&client, name).await?)
}

fn email(text: &str) -> anyhow::Result<Email> {
    Ok(Email::parse(text)?)
}

fn usd(text: &str) -> anyhow::Result<Money> {
    Ok(Money::parse_usd(text)?)
}

fn rfc3339(at: Option<OffsetDateTime>) -> Option<String> {
    at.and_then(|at| at.format(&Rfc3339).ok())
}

/// `keycap org create`.
pub async fn org(database: &Database, command: OrgCommand) -> anyhow::Result<()> {
    match command {
        OrgCommand::Create { name, owner } => {
            let owner = email(&owner)?;
            let created = orgs::create(
                &database.pool,
                &name,
                &owner,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!("created org {:?} with owner {owner}", created.org.name);
            println!("{}", created.org.id);
        }
    }
    Ok(())
}

/// `keycap member ...`. `admin_url` is where the admin app is reached, for invite and reset
/// links, which work as long as `admin` says (`admin.invite_days`,
/// `admin.password_reset_hours`, as for links from the admin app).
pub async fn member(
    database: &Database,
    admin_url: &str,
    admin: &AdminSection,
    command: MemberCommand,
) -> anyhow::Result<()> {
    let admin_url = admin_url.trim_end_matches('/');
    match command {
        MemberCommand::ResetLink {
            org,
            email: address,
        } => {
            let address = email(&address)?;
            let org = find_org(database, &org).await?;
            let token = domain::token::random_secret();
            let hours = i64::try_from(admin.password_reset_hours)?;
            let now = OffsetDateTime::now_utc();
            db::password_resets::issue(
                &database.pool,
                &org,
                &address,
                &domain::token::hash_token(&token),
                now + time::Duration::hours(hours),
                Actor::Cli,
                now,
            )
            .await?;
            eprintln!(
                "password reset link for {address} of {:?}; it works once, for {hours} hours, and replaces any older one (open it in a browser while keycap up runs)",
                org.name
            );
            println!("{admin_url}/reset/{token}");
        }
        MemberCommand::Invite {
            org,
            email: address,
            role,
            budget,
        } => {
            let (address, role, budget) = (email(&address)?, role.parse::<Role>()?, usd(&budget)?);
            let org = find_org(database, &org).await?;
            let token = domain::token::random_secret();
            let ttl_days = i64::try_from(admin.invite_days)?;
            let now = OffsetDateTime::now_utc();
            let new = db::invites::NewInvite {
                email: address.clone(),
                role,
                monthly_budget: budget,
                token_hash: domain::token::hash_token(&token),
                expires_at: now + time::Duration::days(ttl_days),
            };
            db::invites::create(&database.pool, &org, &new, Actor::Cli, now).await?;
            eprintln!(
                "invited {address} to {:?}; the link below works once, for {ttl_days} days (open it in a browser while keycap up runs)",
                org.name
            );
            println!("{admin_url}/invite/{token}");
        }
        MemberCommand::Add {
            org,
            email: address,
            role,
            budget,
        } => {
            let (address, role, budget) = (email(&address)?, role.parse::<Role>()?, usd(&budget)?);
            let org = find_org(database, &org).await?;
            db::members::add(
                &database.pool,
                &org,
                &address,
                role,
                budget,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "added {address} to {:?} as {role} with a monthly budget of {budget}",
                org.name
            );
        }
        MemberCommand::Invites { org } => {
            let client = database.pool.get().await?;
            let org = orgs::find(&client, &org).await?;
            let now = OffsetDateTime::now_utc();
            println!(
                "{:<36}  {:<32} {:<6} {:>12}  {:<20} STATUS",
                "ID", "EMAIL", "ROLE", "BUDGET", "EXPIRES (UTC)"
            );
            for invite in db::invites::pending(&client, &org).await? {
                let expires = invite.expires_at.format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]"
                ))?;
                println!(
                    "{:<36}  {:<32} {:<6} {:>12}  {:<20} {}",
                    invite.id,
                    invite.email,
                    invite.role.as_str(),
                    invite.monthly_budget.to_string(),
                    expires,
                    if invite.expires_at <= now {
                        "expired"
                    } else {
                        "pending"
                    }
                );
            }
        }
        MemberCommand::CancelInvite { org, id } => {
            let org = find_org(database, &org).await?;
            let id = Uuid::parse_str(&id).with_context(|| {
                format!("{id:?} is not an invite id: see keycap member invites")
            })?;
            let invite = db::invites::cancel(
                &database.pool,
                &org,
                id,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "cancelled the invite of {}: its link no longer works",
                invite.email
            );
        }
        MemberCommand::List { org, json } => {
            let client = database.pool.get().await?;
            let org = orgs::find(&client, &org).await?;
            let window = MonthWindow::containing(OffsetDateTime::now_utc());
            let rows: Vec<_> = db::members::months(&client, org.id, window, None)
                .await?
                .into_iter()
                .map(|m| (m.membership, m.month))
                .collect();
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(m, month)| {
                        json!({
                            "email": m.email, "role": m.role.as_str(),
                            "budget_nanousd": m.monthly_budget.nanos(),
                            "carved_nanousd": month.carved.nanos(),
                            "refunded_nanousd": month.refunded.nanos(),
                            "available_nanousd": month.available().nanos(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<32} {:<6} {:>14} {:>14} {:>14}",
                    "EMAIL", "ROLE", "BUDGET", "CARVED", "AVAILABLE"
                );
                for (m, month) in &rows {
                    println!(
                        "{:<32} {:<6} {:>14} {:>14} {:>14}",
                        m.email,
                        m.role,
                        m.monthly_budget.to_string(),
                        month.carved.saturating_sub(month.refunded).to_string(),
                        month.available().to_string()
                    );
                }
            }
        }
    }
    Ok(())
}

/// `keycap budget set`.
pub async fn budget(database: &Database, command: BudgetCommand) -> anyhow::Result<()> {
    let BudgetCommand::Set {
        org,
        email: address,
        usd: amount,
    } = command;
    let (address, amount) = (email(&address)?, usd(&amount)?);
    let org = find_org(database, &org).await?;
    db::members::set_budget(
        &database.pool,
        &org,
        &address,
        amount,
        Actor::Cli,
        OffsetDateTime::now_utc(),
    )
    .await?;
    eprintln!(
        "set the monthly budget of {address} in {:?} to {amount}",
        org.name
    );
    Ok(())
}

/// Reads a secret from standard input: the first line, trimmed.
fn read_secret() -> anyhow::Result<SecretString> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .context("reading the secret from standard input")?;
    let secret = SecretString::from(text.lines().next().unwrap_or("").trim().to_string());
    text.clear();
    if secret.expose_secret().is_empty() {
        bail!(
            "no secret on standard input: pipe the master key in, e.g. `printenv OPENROUTER_API_KEY | keycap vault add ...`"
        );
    }
    if secret
        .expose_secret()
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("the secret on standard input contains spaces or control characters");
    }
    Ok(secret)
}

/// The id of `org`'s master key `id_or_name`: an id, or the name of exactly one active key.
async fn find_master_key(
    database: &Database,
    org: &orgs::Org,
    id_or_name: &str,
) -> anyhow::Result<Uuid> {
    let client = database.pool.get().await?;
    let keys = db::master_keys::list(&client, org).await?;
    let id = Uuid::parse_str(id_or_name).ok();
    if let Some(key) = keys.iter().find(|key| Some(key.id) == id) {
        return Ok(key.id);
    }
    let named: Vec<_> = keys
        .iter()
        .filter(|key| key.name == id_or_name && key.revoked_at.is_none())
        .collect();
    match named.as_slice() {
        [key] => Ok(key.id),
        [] => bail!(
            "no active master key {id_or_name:?} in {:?}: see `keycap vault list --org {}`",
            org.name,
            org.name
        ),
        _ => bail!(
            "{} active master keys in {:?} are named {id_or_name:?}: give the id (`keycap vault list`)",
            named.len(),
            org.name
        ),
    }
}

/// `keycap vault rekey`: seals every master key sealed with an older encryption key again with
/// the newest, one transaction each, with a progress line each. An interrupted run resumes
/// where it stopped: what is done is sealed with the newest key and is not listed again.
async fn rekey(database: &Database, keyring: &vault::Keyring) -> anyhow::Result<()> {
    let current = keyring.current().id().to_string();
    let todo = {
        let client = database.pool.get().await?;
        db::master_keys::sealed_with_older(&client, &current).await?
    };
    if todo.is_empty() {
        eprintln!("every master key is sealed with the newest encryption key {current}");
        return Ok(());
    }
    eprintln!(
        "sealing {} master keys again with encryption key {current}; each is its own transaction, so running this again resumes",
        todo.len()
    );
    for (i, key) in todo.iter().enumerate() {
        let resealed = db::master_keys::reseal(
            &database.pool,
            key.id,
            &current,
            |org_id, sealed| {
                keyring
                    .reseal(org_id, key.id, sealed)
                    .map_err(|err| err.to_string())
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .with_context(|| {
            format!(
                "stopped after {i} of {}: run `keycap vault rekey` again to resume",
                todo.len()
            )
        })?;
        let what = match resealed {
            Some(name) => format!("resealed {name:?} ({}), was {}", key.id, key.sealing_key_id),
            None => format!("{} was already resealed", key.id),
        };
        eprintln!("[{}/{}] {what}", i + 1, todo.len());
    }
    eprintln!(
        "every master key is sealed with {current}: older keys can now be removed from the key \
         file (or KEYCAP_ENCRYPTION_KEY) once every keycap process runs with the newest"
    );
    Ok(())
}

/// `keycap vault ...`.
pub async fn vault(
    database: &Database,
    keyring: &vault::Keyring,
    command: VaultCommand,
) -> anyhow::Result<()> {
    match command {
        VaultCommand::Add { org, service, name } => {
            let service: Service = service.parse()?;
            let org = find_org(database, &org).await?;
            let secret = read_secret()?;
            let id = Uuid::new_v4();
            let sealed = keyring.seal(org.id, id, secret.expose_secret());
            let last_four = vault::last_four(secret.expose_secret());
            let new = db::master_keys::NewMasterKey {
                id,
                service,
                name,
                last_four,
                sealed,
            };
            let key = db::master_keys::add(
                &database.pool,
                &org,
                &new,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "stored {} master key {:?} (…{}) for {:?}",
                key.service, key.name, key.last_four, org.name
            );
            println!("{}", key.id);
        }
        VaultCommand::Rotate { org, key } => {
            let org = find_org(database, &org).await?;
            let id = find_master_key(database, &org, &key).await?;
            let secret = read_secret()?;
            let sealed = keyring.seal(org.id, id, secret.expose_secret());
            let last_four = vault::last_four(secret.expose_secret());
            let key = db::master_keys::rotate(
                &database.pool,
                &org,
                id,
                &last_four,
                &sealed,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "rotated master key {:?} of {:?}: now …{}",
                key.name, org.name, key.last_four
            );
        }
        VaultCommand::Rekey => rekey(database, keyring).await?,
        VaultCommand::Revoke { org, key } => {
            let org = find_org(database, &org).await?;
            let id = find_master_key(database, &org, &key).await?;
            let key = db::master_keys::revoke(
                &database.pool,
                &org,
                id,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "revoked master key {:?} of {:?}: its sub-keys are refused from now on",
                key.name, org.name
            );
        }
        VaultCommand::List { org } => {
            let client = database.pool.get().await?;
            let org = orgs::find(&client, &org).await?;
            println!(
                "{:<36} {:<12} {:<24} {:<6} STATUS",
                "ID", "SERVICE", "NAME", "LAST4"
            );
            for key in db::master_keys::list(&client, &org).await? {
                let status = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<36} {:<12} {:<24} {:<6} {status}",
                    key.id, key.service, key.name, key.last_four
                );
            }
        }
    }
    Ok(())
}

/// `keycap key ...`.
pub async fn key(database: &Database, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create(args) => key_create(database, args).await,
        KeyCommand::List { org, member, json } => {
            let member = member.as_deref().map(email).transpose()?;
            let client = database.pool.get().await?;
            let org = orgs::find(&client, &org).await?;
            let now = OffsetDateTime::now_utc();
            let keys = db::keys::list(&client, &org, member.as_ref()).await?;
            if json {
                let out: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({
                            "id": k.id, "name": k.name, "member": k.member_email, "service": k.service,
                            "cap_nanousd": k.cap.nanos(), "spent_nanousd": k.spent.nanos(),
                            "remaining_nanousd": k.remaining().nanos(),
                            "over_cap_nanousd": k.over_cap().map(|over| over.nanos()),
                            "expires_at": rfc3339(k.expires_at), "revoked_at": rfc3339(k.revoked_at()),
                            "prefix": k.prefix, "model_scope": k.model_scope,
                            "renew_monthly": k.renew_monthly, "paused_reason": k.paused_reason,
                            "rate_limit_rpm": k.rate_limit_rpm,
                            "status": k.status(now),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<36} {:<11} {:<20} {:<28} {:>12} {:>12} {:>12} {:<8}",
                    "ID", "PREFIX", "NAME", "MEMBER", "CAP", "SPENT", "REMAINING", "STATUS"
                );
                for k in &keys {
                    println!(
                        "{:<36} {:<11} {:<20} {:<28} {:>12} {:>12} {:>12} {:<8}",
                        k.id,
                        k.prefix,
                        k.name,
                        k.member_email,
                        k.cap.to_string(),
                        k.spent.to_string(),
                        k.remaining().to_string(),
                        match k.over_cap() {
                            Some(over) => format!("{} (over its cap by {over})", k.status(now)),
                            None => k.status(now).to_string(),
                        }
                    );
                }
            }
            Ok(())
        }
        KeyCommand::SetCap { org, key, cap } => {
            let org = find_org(database, &org).await?;
            let changed = db::keys::set_cap(
                &database.pool,
                &org,
                &key,
                usd(&cap)?,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            let what = match changed.change {
                domain::CapChange::Carve(raise) => {
                    format!("carved {raise} from {}'s budget", changed.key.member_email)
                }
                domain::CapChange::Refund(refund) => {
                    format!("refunded {refund} to {}", changed.key.member_email)
                }
                domain::CapChange::Neither => "no budget moved".to_string(),
            };
            eprintln!(
                "{} ({:?}): cap {} -> {}; {what}",
                changed.key.prefix, changed.key.name, changed.old_cap, changed.key.cap
            );
            Ok(())
        }
        KeyCommand::Revoke { org, key } => {
            let org = find_org(database, &org).await?;
            let revoked = db::keys::revoke(
                &database.pool,
                &org,
                &key,
                Actor::Cli,
                OffsetDateTime::now_utc(),
            )
            .await?;
            eprintln!(
                "revoked {} ({:?}); refunded {} to {}",
                revoked.key.prefix, revoked.key.name, revoked.refund, revoked.key.member_email
            );
            Ok(())
        }
    }
}

async fn key_create(database: &Database, args: KeyCreateArgs) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let new = db::keys::NewKey {
        member: email(&args.member)?,
        service: args.service.parse()?,
        name: args.name,
        cap: usd(&args.cap)?,
        expires_at: args
            .expires
            .as_deref()
            .map(|text| domain::expiry::parse_expiry(text, now))
            .transpose()?,
        model_scope: args
            .models
            .into_iter()
            .filter(|m| !m.trim().is_empty())
            .collect(),
        renew_monthly: args.renew_monthly,
        rate_limit_rpm: args.rpm,
    };
    let org = find_org(database, &args.org).await?;
    let (key, token) = db::keys::create(&database.pool, &org, &new, Actor::Cli, now).await?;
    eprintln!(
        "created key {} ({:?}) for {} with a cap of {}; the token below is shown only once",
        key.prefix, key.name, key.member_email, key.cap
    );
    println!("{}", token.expose());
    Ok(())
}

/// `keycap audit`.
pub async fn audit(database: &Database, args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AuditCommand::Head { org }) => return audit_head(database, &org).await,
        Some(AuditCommand::Verify { org, from }) => {
            return audit_verify(database, &org, &from).await;
        }
        None => {}
    }
    let Some(org) = args.org else {
        bail!(
            "--org is required: keycap audit --org ORG (or keycap audit head / verify --org ORG)"
        );
    };
    if args.limit < 1 {
        bail!("--limit must be at least 1");
    }
    let client = database.pool.get().await?;
    let org = orgs::find(&client, &org).await?;
    let entries =
        db::transactions::list_filtered(&client, org.id, &Default::default(), args.limit).await?;
    let chain = db::transactions::verify_chain(&client, org.id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        println!(
            "{:>5} {:<20} {:<18} {:<28} {:>14}  DETAIL",
            "SEQ", "TIME (UTC)", "KIND", "MEMBER", "AMOUNT"
        );
        for e in &entries {
            let time = e.created_at.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))?;
            println!(
                "{:>5} {:<20} {:<18} {:<28} {:>14}  {}",
                e.seq,
                time,
                e.kind,
                e.member_email.as_deref().unwrap_or("-"),
                Money::from_nanos(e.amount_nanousd).to_string(),
                e.detail
            );
        }
    }
    match chain {
        db::transactions::ChainStatus::Intact { n_rows } => {
            eprintln!("hash chain intact ({n_rows} rows)")
        }
        db::transactions::ChainStatus::Broken { seq } => {
            bail!("hash chain broken at row {seq}: the ledger was tampered with")
        }
    }
    Ok(())
}

/// `keycap audit head`: the newest row's sequence number and hash, on one line.
async fn audit_head(database: &Database, org: &str) -> anyhow::Result<()> {
    let client = database.pool.get().await?;
    let org = orgs::find(&client, org).await?;
    match db::transactions::head(&client, org.id).await? {
        Some((seq, hash)) => println!("{hash} {seq}"),
        None => bail!("org {} has no ledger rows yet", org.name),
    }
    Ok(())
}

/// `keycap audit verify --from HASH`.
async fn audit_verify(database: &Database, org: &str, from: &str) -> anyhow::Result<()> {
    let kept = hex::decode(from.trim())
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .with_context(|| {
            format!(
                "--from {from:?} is not a hash: give the 64 hex digits `keycap audit head` printed"
            )
        })?;
    let client = database.pool.get().await?;
    let org = orgs::find(&client, org).await?;
    match db::transactions::verify_from_hash(&client, org.id, &kept).await? {
        db::transactions::FromKept::Intact { seq, n_rows } => {
            eprintln!(
                "hash chain intact from row {seq} (of {n_rows} rows) to the newest; the rows before it are vouched for by the kept hash"
            );
            Ok(())
        }
        db::transactions::FromKept::Broken { seq } => {
            bail!(
                "hash chain broken at row {seq}, after the kept hash: the ledger was tampered with"
            )
        }
        db::transactions::FromKept::NotFound => bail!(
            "no row of org {} has the kept hash: the ledger was rewritten up to it, or the hash is another org's",
            org.name
        ),
    }
}

/// `keycap token ...`.
pub async fn token(database: &Database, command: TokenCommand) -> anyhow::Result<()> {
    use db::accounts::TokenScope;
    let now = OffsetDateTime::now_utc();
    match command {
        TokenCommand::Create {
            org,
            scope,
            name,
            expires,
        } => {
            let expires_at = expires
                .map(|text| domain::expiry::parse_expiry(&text, now))
                .transpose()
                .context("--expires")?;
            let scope: TokenScope = scope.parse()?;
            if scope != TokenScope::Metrics {
                bail!(
                    "--scope admin tokens act as an owner: an owner makes them on the admin app's /account page; the command line makes --scope metrics tokens"
                );
            }
            let org = find_org(database, &org).await?;
            let (token, prefix) = domain::token::admin_token(scope.token_prefix());
            let client = database.pool.get().await?;
            db::accounts::create_admin_token(
                &client,
                &org,
                None,
                scope,
                &name,
                &domain::token::hash_token(&token),
                &prefix,
                expires_at,
                now,
            )
            .await?;
            eprintln!(
                "a metrics token for {:?}: it reads GET /metrics on the admin listener and nothing else; shown once",
                org.name
            );
            println!("{token}");
        }
        TokenCommand::List { org } => {
            let org = find_org(database, &org).await?;
            let client = database.pool.get().await?;
            println!(
                "{:<36}  {:<20} {:<13} {:<8} {:<28} STATUS",
                "ID", "NAME", "PREFIX", "SCOPE", "MADE BY"
            );
            for t in db::accounts::list_admin_tokens(&client, org.id).await? {
                let status = if t.revoked_at.is_some() {
                    "revoked".to_string()
                } else {
                    match t.expires_at {
                        Some(at) if at <= now => "expired".to_string(),
                        Some(at) => format!("active until {}", at.date()),
                        None => "active".to_string(),
                    }
                };
                println!(
                    "{:<36}  {:<20} {:<13} {:<8} {:<28} {}",
                    t.id,
                    t.name,
                    t.prefix,
                    t.scope.as_str(),
                    t.owner_email.as_deref().unwrap_or("the command line"),
                    status
                );
            }
        }
        TokenCommand::Revoke { org, id } => {
            let org = find_org(database, &org).await?;
            let id = Uuid::parse_str(&id)
                .with_context(|| format!("{id:?} is not a token id: see keycap token list"))?;
            let client = database.pool.get().await?;
            db::accounts::revoke_admin_token(&client, org.id, id, now).await?;
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}
