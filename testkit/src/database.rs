//! Throwaway databases.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use uuid::Uuid;

/// Where test databases are made.
struct Server {
    /// Builds the connection string of one database on the server.
    url_template: UrlTemplate,
    template_db: String,
}

enum UrlTemplate {
    /// A `postgres://` URL whose path is replaced.
    Url(String),
    /// A `key=value` string to which ` dbname=...` is appended.
    KeyValue(String),
}

impl UrlTemplate {
    fn for_db(&self, dbname: &str) -> String {
        match self {
            UrlTemplate::Url(url) => {
                let (without_query, query) = match url.split_once('?') {
                    Some((base, query)) => (base, Some(query)),
                    None => (url.as_str(), None),
                };
                let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
                let base = match without_query[scheme_end..].find('/') {
                    Some(slash) => &without_query[..scheme_end + slash],
                    None => without_query,
                };
                match query {
                    Some(query) => format!("{base}/{dbname}?{query}"),
                    None => format!("{base}/{dbname}"),
                }
            }
            UrlTemplate::KeyValue(base) => format!("{base} dbname={dbname}"),
        }
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

fn server() -> anyhow::Result<&'static Server> {
    let server = SERVER.get_or_init(|| {
        // Set up on a thread of its own: the runtime of whichever test comes first must not
        // own connections that later tests rely on.
        std::thread::spawn(|| start_server().map_err(|err| format!("{err:#}")))
            .join()
            .unwrap_or_else(|_| Err("test database set-up panicked".into()))
    });
    server
        .as_ref()
        .map_err(|err| anyhow::anyhow!("test database server: {err}"))
}

fn start_server() -> anyhow::Result<Server> {
    let url_template = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            UrlTemplate::Url(url)
        }
        Ok(url) => UrlTemplate::KeyValue(url),
        Err(_) => start_cluster()?,
    };
    let digest = db::MIGRATIONS.iter().fold(0u64, |acc, (name, sql)| {
        name.bytes().chain(sql.bytes()).fold(acc, |h, b| {
            h.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b))
        })
    });
    let template_db = format!("keycap_template_{digest:016x}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(prepare_template(&url_template, &template_db))?;
    Ok(Server {
        url_template,
        template_db,
    })
}

fn start_cluster() -> anyhow::Result<UrlTemplate> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("keycap-test-")
        .tempdir_in("/tmp")?
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let cluster = db::embedded::Cluster::in_folder(&dir)?;
    cluster
        .ensure_running()
        .context("starting the throwaway Postgres cluster")?;
    spawn_watchdog(&cluster, &dir)?;
    Ok(UrlTemplate::KeyValue(cluster.server_url()))
}

/// A process that outlives this one by a moment: when this test binary exits, however it exits,
/// it stops the cluster and removes its folder.
fn spawn_watchdog(cluster: &db::embedded::Cluster, dir: &std::path::Path) -> anyhow::Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let stop: Vec<String> = cluster.stop_argv().iter().map(|a| quote(a)).collect();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        stop = stop.join(" "),
        dir = quote(&dir.display().to_string()),
    );
    std::process::Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the test database watchdog")?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to the test database server ({})", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn redact(url: &str) -> String {
    match url.find('@') {
        Some(at) if url.contains("://") => format!(
            "{}://…{}",
            url.split("://").next().unwrap_or(""),
            &url[at..]
        ),
        _ => url.to_string(),
    }
}

async fn prepare_template(urls: &UrlTemplate, template_db: &str) -> anyhow::Result<()> {
    let admin = connect(&urls.for_db("postgres")).await?;
    // Several test binaries may share TEST_DATABASE_URL: one prepares the template at a time.
    admin
        .execute("SELECT pg_advisory_lock(727272)", &[])
        .await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&template_db],
        )
        .await?
        .is_some();
    if !exists {
        let building = format!("{template_db}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await?;
        let pool = db::connect(&urls.for_db(&building), 1)?;
        db::migrate(&pool)
            .await
            .context("migrating the template database")?;
        pool.close();
        drop(pool);
        rename_when_free(&admin, &building, template_db).await?;
    }
    admin
        .execute("SELECT pg_advisory_unlock(727272)", &[])
        .await?;
    Ok(())
}

async fn rename_when_free(
    admin: &tokio_postgres::Client,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        match admin
            .batch_execute(&format!("ALTER DATABASE {from} RENAME TO {to}"))
            .await
        {
            Ok(()) => return Ok(()),
            Err(err) if err.to_string().contains("being accessed") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    bail!("template database {from} stayed busy")
}

/// A fresh, migrated database for one test, dropped when the value is dropped.
pub struct TestDb {
    /// The connection string, for `db::connect` or for a `keycap` child's `DATABASE_URL`.
    pub url: String,
    /// A small pool on it.
    pub pool: db::Pool,
    name: String,
}

impl TestDb {
    /// Copies the migrated template into a new database.
    pub async fn new() -> anyhow::Result<TestDb> {
        let server = server()?;
        let name = format!("t_{}", Uuid::new_v4().simple());
        let admin = connect(&server.url_template.for_db("postgres")).await?;
        let sql = format!("CREATE DATABASE {name} TEMPLATE {}", server.template_db);
        let mut last_err = None;
        for _ in 0..100 {
            match admin.batch_execute(&sql).await {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                // Another test copying the template at the same moment holds it briefly.
                Err(err) if err.to_string().contains("being accessed") => {
                    last_err = Some(err);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => return Err(err).context("creating a test database"),
            }
        }
        if let Some(err) = last_err {
            return Err(err).context("creating a test database");
        }
        let url = server.url_template.for_db(&name);
        let pool = db::connect(&url, 8)?;
        Ok(TestDb { url, pool, name })
    }

    /// A plain client on this database, for assertions in SQL.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        let Ok(server) = server() else { return };
        let admin_url = server.url_template.for_db("postgres");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside or outside a runtime: do the work on a thread of its own.
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(admin) = connect(&admin_url).await {
                    let _ = admin.batch_execute(&sql).await;
                }
            });
        });
        let _ = handle.join();
    }
}
