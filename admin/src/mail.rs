//! Email over SMTP, when an SMTP server is configured: invites and budget alerts. Without one,
//! the invite link is only shown to the owner to copy (alerts are on /dashboard); with one, it
//! is also sent, and a failed send is reported on the page while the invite stays valid.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends email through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// An SMTP setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    #[error(
        "smtp.url is not an SMTP URL such as smtp://user:pass@mail.example.com:587?tls=required (STARTTLS), smtps://... (TLS) or smtp://127.0.0.1:25 (plain): {0}"
    )]
    Url(String),
    #[error("smtp.from {0:?} is not an address such as \"keycap <keycap@example.com>\"")]
    From(String),
}

impl Mailer {
    /// A mailer for `url`, sending as `from`.
    pub fn new(url: &str, from: &str) -> Result<Mailer, MailConfigError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            // The URL may hold a password: only the parser's reason is shown.
            .map_err(|err| MailConfigError::Url(err.to_string().replace(url, "<url>")))?
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|_| MailConfigError::From(from.to_string()))?;
        Ok(Mailer { transport, from })
    }

    /// Sends a plain-text message. The error says why, for the owner to read.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), String> {
        let to = to
            .parse::<Mailbox>()
            .map_err(|err| format!("the address is not usable for email: {err}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body)
            .map_err(|err| format!("the message could not be built: {err}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|err| {
                tracing::warn!(error = %err, "sending an email failed");
                format!("the mail server refused or could not be reached ({err})")
            })
    }
}
