//! Budget alerts without Prometheus: every pass records the thresholds members' monthly spend
//! and keys' spend have crossed (`db::alerts::detect`, once per threshold per period), then
//! sends what is due: an email to the member and the org's owners through the SMTP settings,
//! and a JSON webhook signed with HMAC-SHA256. A failed send is tried again later, each wait
//! twice the one before, up to [`MAX_ATTEMPTS`] tries. `keycap up` and `keycap admin` run
//! [`run`].

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Sha256;
use time::OffsetDateTime;

use db::alerts::{Alert, Channels, Delivery, Outcome, Thresholds};

use crate::state::AppState;

/// Tries per delivery before it is given up.
pub const MAX_ATTEMPTS: i32 = 8;
/// The wait after a first failed try; each later wait is twice the one before, up to an hour.
const FIRST_RETRY: time::Duration = time::Duration::minutes(1);
/// How long a claimed delivery is hidden from other senders while it is sent.
const CLAIM_HOLD: time::Duration = time::Duration::minutes(5);
/// Deliveries claimed at once: each send takes at most about 10 s (the SMTP and HTTP
/// timeouts), so a batch ends well within its claim. A pass claims batches until none is due.
const BATCH: i64 = 20;
/// Batches per pass at most; the rest wait for the next pass.
const BATCHES: usize = 10;

/// The alert settings (`[alerts]`).
#[derive(Clone, Default)]
pub struct AlertConfig {
    pub thresholds: Thresholds,
    pub webhook: Option<Webhook>,
    /// Time between passes.
    pub interval: Duration,
}

/// Where the webhook goes, and the secret its signature is made with.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: SecretString,
}

impl fmt::Debug for AlertConfig {
    /// The webhook's URL and secret may hold credentials: neither is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertConfig")
            .field("thresholds", &self.thresholds)
            .field("webhook", &self.webhook.as_ref().map(|_| "<set>"))
            .field("interval", &self.interval)
            .finish()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub new_alerts: usize,
    pub sent: usize,
    pub retried: usize,
    pub given_up: usize,
}

/// Runs a pass every `config.alerts.interval` until the task is dropped.
pub async fn run(state: AppState) {
    let mut ticker =
        tokio::time::interval(state.config.alerts.interval.max(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match pass(&state, state.clock.now()).await {
            Ok(report) if report != Report::default() => tracing::info!(?report, "budget alerts"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "budget alert pass failed"),
        }
    }
}

/// One pass at `now`: records new alerts, then sends the deliveries that are due.
pub async fn pass(state: &AppState, now: OffsetDateTime) -> Result<Report, db::Error> {
    let config = &state.config.alerts;
    // Keys' spend exact for their thresholds (a member's month is read from the rollups).
    if !config.thresholds.key_percents.is_empty() {
        let client = state.pool.get().await?;
        db::usage::fold(&client).await?;
    }
    let channels = Channels {
        email: state.mailer.is_some(),
        webhook: config.webhook.is_some(),
    };
    let mut report = Report {
        new_alerts: db::alerts::detect(&state.pool, now, &config.thresholds, channels).await?,
        ..Report::default()
    };
    let started = std::time::Instant::now();
    for _ in 0..BATCHES {
        // Each batch is claimed at the time it is claimed, so its hold runs from then.
        let at = now + started.elapsed();
        let batch = db::alerts::claim_due(&state.pool, at, CLAIM_HOLD, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            deliver(state, &delivery, now, &mut report).await?;
        }
    }
    Ok(report)
}

/// Sends one claimed delivery and records what came of it.
async fn deliver(
    state: &AppState,
    delivery: &Delivery,
    now: OffsetDateTime,
    report: &mut Report,
) -> Result<(), db::Error> {
    let outcome = match send(state, delivery, now).await {
        Ok(()) => Outcome::Sent,
        Err(error) if delivery.attempts >= MAX_ATTEMPTS => Outcome::GiveUp(error),
        Err(error) => Outcome::Retry(now + retry_wait(delivery.attempts), error),
    };
    match &outcome {
        Outcome::Sent => report.sent += 1,
        Outcome::Retry(_, error) => {
            tracing::warn!(channel = %delivery.channel, attempt = delivery.attempts, %error, "an alert could not be sent; it will be tried again");
            report.retried += 1;
        }
        Outcome::GiveUp(error) => {
            tracing::warn!(channel = %delivery.channel, attempt = delivery.attempts, %error, "an alert could not be sent; giving up");
            report.given_up += 1;
        }
    }
    db::alerts::finish(&state.pool, delivery, &outcome, now).await
}

/// The wait after the `attempts`-th failed try: one minute, then twice the one before, at
/// most an hour.
fn retry_wait(attempts: i32) -> time::Duration {
    let doublings = attempts.clamp(1, 7) - 1;
    (FIRST_RETRY * 2i32.pow(doublings as u32)).min(time::Duration::hours(1))
}

async fn send(state: &AppState, delivery: &Delivery, now: OffsetDateTime) -> Result<(), String> {
    match delivery.channel.as_str() {
        "email" => {
            let mailer = state
                .mailer
                .as_ref()
                .ok_or("smtp.url is not set any more")?;
            let (subject, body) = email(&delivery.alert, state.config.base());
            mailer.send(&delivery.recipient, &subject, body).await
        }
        "webhook" => {
            let webhook = state
                .config
                .alerts
                .webhook
                .as_ref()
                .ok_or("alerts.webhook_url is not set any more")?;
            let body = webhook_body(&delivery.alert).to_string();
            let timestamp = now.unix_timestamp().to_string();
            let answer = state
                .http
                .post(&webhook.url)
                .header("content-type", "application/json")
                .header("x-keycap-timestamp", &timestamp)
                .header(
                    "x-keycap-signature",
                    signature(webhook.secret.expose_secret(), &timestamp, &body),
                )
                .body(body)
                .send()
                .await
                // reqwest's error names the URL, which may hold a credential.
                .map_err(|err| {
                    format!("the webhook could not be reached ({})", err.without_url())
                })?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("the webhook answered {}", answer.status()))
            }
        }
        other => Err(format!("unknown alert channel {other:?}")),
    }
}

/// `sha256=` and the hex HMAC-SHA256, keyed by the secret, of `{timestamp}.{body}`: the
/// receiver recomputes it, and refuses a timestamp far from its clock (a replay).
pub fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a threshold is a share of, in words.
fn subject_line(alert: &Alert) -> String {
    match &alert.key {
        Some((name, _)) => format!(
            "key \"{name}\" of {} passed {}% of its cap",
            alert.member_email, alert.threshold_percent
        ),
        None => format!(
            "{} passed {}% of this month's budget",
            alert.member_email, alert.threshold_percent
        ),
    }
}

fn email(alert: &Alert, base_url: &str) -> (String, String) {
    let subject = format!("keycap: {} in {}", subject_line(alert), alert.org_name);
    let what = match &alert.key {
        Some((name, service)) => format!(
            "The {service} key \"{name}\" of {} has spent {} of its {} cap ({}% or more). At its cap, the gateway refuses its requests; the member can raise the cap on /my-keys, from their monthly budget.",
            alert.member_email, alert.spent, alert.limit, alert.threshold_percent
        ),
        None => format!(
            "{} has spent {} of a {} monthly budget this month ({}% or more).",
            alert.member_email, alert.spent, alert.limit, alert.threshold_percent
        ),
    };
    let body = format!(
        "{what}\n\nOrg: {}\nSeen at: {}\n\n{base_url}/dashboard\n\nYou get this once per threshold per month (per key period, for a key).\n",
        alert.org_name,
        alert
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    (subject, body)
}

fn webhook_body(alert: &Alert) -> serde_json::Value {
    let rfc3339 = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    json!({
        "type": if alert.key.is_some() { "key_cap" } else { "member_budget" },
        "alert_id": alert.id,
        "summary": subject_line(alert),
        "org": alert.org_name,
        "member": alert.member_email,
        "key": alert.key.as_ref().map(|(name, service)| json!({ "name": name, "service": service })),
        "threshold_percent": alert.threshold_percent,
        "spent_nanousd": alert.spent.nanos(),
        "limit_nanousd": alert.limit.nanos(),
        "period_start": rfc3339(alert.period_start),
        "created_at": rfc3339(alert.created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
        let waits: Vec<i64> = (1..=9).map(|n| retry_wait(n).whole_minutes()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Python: hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("s3cret", "1700000000", r#"{"a":1}"#),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
        assert_ne!(
            signature("s3cret", "1700000001", r#"{"a":1}"#),
            signature("s3cret", "1700000000", r#"{"a":1}"#)
        );
    }
}
