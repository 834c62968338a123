//! `GET /metrics` on the admin listener: one org's usage in Prometheus' text format, for a
//! metrics token of that org (`Authorization: Bearer kcm_...`). The numbers
//! come from one batch of queries (`db::usage_report::org_usage`), kept for
//! `metrics_cache` so that scrapes cost the database at most one batch per org per that
//! long, and cut off after `metrics_timeout`: a slow database gets a 503, never a hung scrape.
//! The series are listed in docs/metrics.md.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use db::usage_report::OrgUsage;
use domain::Money;
use uuid::Uuid;

use crate::state::AppState;

/// Each org's last batch. One lock per org, held while its batch is read, so concurrent
/// scrapes of one org wait for one batch.
#[derive(Default)]
pub struct UsageCache {
    orgs: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Option<Batch>>>>>,
}

/// When an org's usage was read, and its text.
type Batch = (Instant, Arc<str>);

/// A series of one value per member or key: its name, its help, and its value.
type Series<T> = (&'static str, &'static str, fn(&T) -> Money);

/// `GET /metrics`.
pub async fn get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let timeout = state.config.metrics_timeout;
    match tokio::time::timeout(timeout, scrape(&state, &headers)).await {
        Ok(Ok((read_at, text))) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            format!(
                "{text}# HELP keycap_usage_metrics_age_seconds How long ago these numbers were read from the database\n\
                 # TYPE keycap_usage_metrics_age_seconds gauge\n\
                 keycap_usage_metrics_age_seconds {:.3}\n",
                read_at.elapsed().as_secs_f64()
            ),
        )
            .into_response(),
        Ok(Err(refusal)) => refusal,
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the database did not answer within {} ms (admin.metrics_timeout_ms); the scrape is abandoned",
                timeout.as_millis()
            ),
        ),
    }
}

/// The org's numbers, and when they were read.
async fn scrape(state: &AppState, headers: &HeaderMap) -> Result<Batch, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| token.starts_with(domain::token::METRICS_TOKEN_PREFIX))
        .ok_or_else(|| unauthorized("send Authorization: Bearer with a metrics token, kcm_... (keycap token create --org ORG --scope metrics)"))?;
    let org_id = {
        let client = state
            .pool
            .get()
            .await
            .map_err(|err| unavailable(err.into()))?;
        db::accounts::find_metrics_token(
            &client,
            &domain::token::hash_token(token),
            state.clock.now(),
        )
        .await
        .map_err(unavailable)?
        .ok_or_else(|| unauthorized("that is not an active metrics token"))?
    };
    let slot = {
        let mut orgs = state
            .usage_cache
            .orgs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(orgs.entry(org_id).or_default())
    };
    let mut cached = slot.lock().await;
    if let Some((at, text)) = cached.as_ref()
        && at.elapsed() < state.config.metrics_cache
    {
        return Ok((*at, Arc::clone(text)));
    }
    let usage = db::usage_report::org_usage(
        &state.pool,
        org_id,
        state.clock.now(),
        state.config.metrics_per_key,
        state.config.metrics_timeout,
    )
    .await
    .map_err(unavailable)?;
    let batch = (Instant::now(), Arc::from(render(&usage)));
    *cached = Some(batch.clone());
    Ok(batch)
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = plain(StatusCode::UNAUTHORIZED, message.to_string());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

fn unavailable(err: db::Error) -> Response {
    tracing::warn!(error = %err, "a usage metrics scrape failed");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the usage could not be read from the database; try again".into(),
    )
}

/// The exposition text of `usage`.
pub fn render(usage: &OrgUsage) -> String {
    let mut out = String::with_capacity(256 + 160 * (usage.members.len() + usage.keys.len()));
    let org = escape(&usage.org_name);
    let member_gauges: [Series<db::usage_report::MemberMonth>; 4] = [
        (
            "keycap_member_budget_dollars",
            "The member's monthly budget",
            |m| m.budget.budget,
        ),
        (
            "keycap_member_allocated_dollars",
            "What the member gave to keys this month (carved less refunded)",
            |m| m.budget.carved.saturating_sub(m.budget.refunded),
        ),
        (
            "keycap_member_budget_left_dollars",
            "What the member can still give to keys this month",
            |m| m.budget.available(),
        ),
        (
            "keycap_member_spent_dollars",
            "What the member's keys spent this UTC month",
            |m| m.spent,
        ),
    ];
    for (name, help, value) in member_gauges {
        header(&mut out, name, help, "gauge");
        for member in &usage.members {
            let _ = writeln!(
                out,
                "{name}{{org=\"{org}\",member=\"{}\"}} {}",
                escape(&member.email),
                value(member).decimal_usd()
            );
        }
    }
    header(
        &mut out,
        "keycap_member_spend_dollars_total",
        "What the member's keys spent on each model the requests named, since usage was recorded",
        "counter",
    );
    for spend in &usage.by_model {
        let model = if spend.model.is_empty() {
            "unknown"
        } else {
            &spend.model
        };
        let _ = writeln!(
            out,
            "keycap_member_spend_dollars_total{{org=\"{org}\",member=\"{}\",model=\"{}\"}} {}",
            escape(&spend.email),
            escape(model),
            spend.spent.decimal_usd()
        );
    }
    if !usage.keys.is_empty() {
        // Two open keys of one member may share a name and service: later ones are told apart
        // as "name (2)", "name (3)", in the order they were made, skipping any label another
        // key already has.
        let mut taken: HashSet<(&str, String, &str)> = HashSet::new();
        let labels: Vec<String> = usage
            .keys
            .iter()
            .map(|key| {
                let name = (1..)
                    .map(|n| match n {
                        1 => key.name.clone(),
                        n => format!("{} ({n})", key.name),
                    })
                    .find(|name| taken.insert((&key.email, name.clone(), &key.service)))
                    .unwrap_or_default();
                format!(
                    "org=\"{org}\",member=\"{}\",key=\"{}\",service=\"{}\"",
                    escape(&key.email),
                    escape(&name),
                    escape(&key.service)
                )
            })
            .collect();
        let key_gauges: [Series<db::usage_report::KeyUsage>; 3] = [
            ("keycap_key_cap_dollars", "The open key's cap", |k| k.cap),
            (
                "keycap_key_spent_dollars",
                "What the open key spent in its period",
                |k| k.spent,
            ),
            (
                "keycap_key_remaining_dollars",
                "What the open key can still spend (negative past its cap)",
                |k| k.cap.saturating_sub(k.spent),
            ),
        ];
        for (name, help, value) in key_gauges {
            header(&mut out, name, help, "gauge");
            for (key, labels) in usage.keys.iter().zip(&labels) {
                let _ = writeln!(out, "{name}{{{labels}}} {}", value(key).decimal_usd());
            }
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format needs it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use db::usage_report::{KeyUsage, MemberMonth, ModelSpend};
    use domain::MonthlyBudget;

    #[test]
    fn renders_each_series_with_escaped_labels_and_exact_dollars() {
        let usage = OrgUsage {
            org_name: "Acme \"R&D\"".into(),
            members: vec![MemberMonth {
                email: "bob@example.com".into(),
                budget: MonthlyBudget {
                    budget: Money::from_nanos(100_000_000_000),
                    carved: Money::from_nanos(30_000_000_000),
                    refunded: Money::from_nanos(5_000_000_000),
                },
                spent: Money::from_nanos(1),
            }],
            by_model: vec![
                ModelSpend {
                    email: "bob@example.com".into(),
                    model: "openai/gpt-4o-mini".into(),
                    spent: Money::from_nanos(1_500_000_000),
                },
                ModelSpend {
                    email: "bob@example.com".into(),
                    model: String::new(),
                    spent: Money::from_nanos(7),
                },
            ],
            keys: vec![
                KeyUsage {
                    email: "bob@example.com".into(),
                    name: "app".into(),
                    service: "openrouter".into(),
                    cap: Money::from_nanos(10_000_000_000),
                    spent: Money::from_nanos(12_000_000_000),
                },
                KeyUsage {
                    email: "bob@example.com".into(),
                    name: "app (2)".into(),
                    service: "openrouter".into(),
                    cap: Money::from_nanos(3_000_000_000),
                    spent: Money::ZERO,
                },
                KeyUsage {
                    email: "bob@example.com".into(),
                    name: "app".into(),
                    service: "openrouter".into(),
                    cap: Money::from_nanos(1_000_000_000),
                    spent: Money::ZERO,
                },
            ],
        };
        let text = render(&usage);
        let labels = r#"org="Acme \"R&D\"",member="bob@example.com""#;
        for line in [
            format!("keycap_member_budget_dollars{{{labels}}} 100.00"),
            format!("keycap_member_allocated_dollars{{{labels}}} 25.00"),
            format!("keycap_member_budget_left_dollars{{{labels}}} 75.00"),
            format!("keycap_member_spent_dollars{{{labels}}} 0.000000001"),
            format!(
                "keycap_member_spend_dollars_total{{{labels},model=\"openai/gpt-4o-mini\"}} 1.50"
            ),
            format!("keycap_member_spend_dollars_total{{{labels},model=\"unknown\"}} 0.000000007"),
            format!("keycap_key_cap_dollars{{{labels},key=\"app\",service=\"openrouter\"}} 10.00"),
            format!(
                "keycap_key_remaining_dollars{{{labels},key=\"app\",service=\"openrouter\"}} -2.00"
            ),
            // A key named "app (2)" keeps its name; the second "app" becomes "app (3)".
            format!(
                "keycap_key_cap_dollars{{{labels},key=\"app (2)\",service=\"openrouter\"}} 3.00"
            ),
            format!(
                "keycap_key_cap_dollars{{{labels},key=\"app (3)\",service=\"openrouter\"}} 1.00"
            ),
            "# TYPE keycap_member_spend_dollars_total counter".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
