//! A small TCP proxy in front of Postgres that a test can cut and restore, to see how a
//! service behaves when its database is unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// Where the real server is.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// The proxy; it stops when dropped.
pub struct ChaosProxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    dbname: String,
    user: String,
    _task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// A proxy on 127.0.0.1 in front of the server of `database_url`.
    pub async fn start(database_url: &str) -> anyhow::Result<ChaosProxy> {
        let config: tokio_postgres::Config =
            database_url.parse().context("parsing the database URL")?;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => Target::Tcp(format!("{host}:{port}")),
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                Target::Unix(dir.join(format!(".s.PGSQL.{port}")))
            }
            None => bail!("the database URL names no host"),
        };
        let dbname = config
            .get_dbname()
            .context("the database URL names no database")?
            .to_string();
        let user = config.get_user().unwrap_or("postgres").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, target, Arc::clone(&up), cut_rx));
        Ok(ChaosProxy {
            port: local_port,
            up,
            cut,
            dbname,
            user,
            _task: task,
        })
    }

    /// A connection string through the proxy (password-less, as the test servers trust
    /// local connections).
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={} connect_timeout=3",
            self.port, self.user, self.dbname
        )
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: Target,
    up: Arc<AtomicBool>,
    cut: watch::Receiver<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if !up.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let (target, mut cut) = (target.clone(), cut.clone());
        cut.mark_unchanged();
        tokio::spawn(async move {
            let mut client = client;
            let piped = async {
                match &target {
                    Target::Tcp(addr) => {
                        let mut server = TcpStream::connect(addr).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut server)
                            .await
                            .map(|_| ())
                    }
                    Target::Unix(path) => {
                        let mut server = UnixStream::connect(path).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut server)
                            .await
                            .map(|_| ())
                    }
                }
            };
            tokio::select! {
                _ = piped => {}
                _ = cut.changed() => {}
            }
        });
    }
}
