//! Change notifications: triggers on `api_keys` and `master_keys` send `NOTIFY keycap_changes`
//! (see `migrations/0001_init.sql`, and `0010_renewal_notices.sql` for renewals); a running
//! gateway listens here and reloads what changed.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::Error;

/// The channel the triggers notify on.
pub const CHANNEL: &str = "keycap_changes";

/// A row that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    ApiKey(Uuid),
    MasterKey(Uuid),
    /// The key's period changed (a renewal): announced just before its [`Change::ApiKey`]
    /// (migration 0010), so that a listener can tell that one apart from other changes.
    Renewed(Uuid),
    /// A gateway (the second id) was granted less of the key's cap (the first) than a request
    /// needed: gateways holding a lease of it give back what they do not use (migration 0015).
    LeaseWanted {
        key: Uuid,
        by: Uuid,
    },
}

impl Change {
    fn parse(payload: &str) -> Option<Change> {
        let (table, id) = payload.split_once(':')?;
        if table == "lease_wanted" {
            let (key, by) = id.split_once('/')?;
            return Some(Change::LeaseWanted {
                key: Uuid::parse_str(key).ok()?,
                by: Uuid::parse_str(by).ok()?,
            });
        }
        let id = Uuid::parse_str(id).ok()?;
        match table {
            "api_keys" => Some(Change::ApiKey(id)),
            "master_keys" => Some(Change::MasterKey(id)),
            "api_keys_renewed" => Some(Change::Renewed(id)),
            _ => None,
        }
    }
}

/// Opens a dedicated connection, runs `LISTEN` on [`CHANNEL`] and forwards each change. The
/// receiver ends when the connection is lost; the caller then reconnects and refreshes
/// everything, since changes made meanwhile were missed.
pub async fn listen(url: &str) -> Result<mpsc::UnboundedReceiver<Change>, Error> {
    let crate::tls::Connector { config, tls, .. } = crate::tls::read_url(url)?;
    match tls {
        Some(tls) => listen_with(&config, tls).await,
        None => listen_with(&config, tokio_postgres::NoTls).await,
    }
}

async fn listen_with<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<mpsc::UnboundedReceiver<Change>, Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let drive = async {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                        if let Some(change) = Change::parse(note.payload())
                            && sender.send(change).is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "change notification connection lost");
                        return;
                    }
                }
            }
        };
        let listen = async {
            let result = client.batch_execute("LISTEN keycap_changes").await;
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(result);
            }
            // Keep the client alive while the connection is driven.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = drive => {}
            () = listen => {}
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(receiver),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(Error::Pool(
            "change notification connection closed before LISTEN".into(),
        )),
    }
}
