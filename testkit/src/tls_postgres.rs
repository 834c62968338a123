//! A Postgres cluster of a test's own that a client reaches over TCP on 127.0.0.1 with TLS
//! only, as a managed Postgres is reached: a server certificate for `localhost` from a test CA,
//! password (SCRAM) authentication, and plain TCP refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::tls::TestCa;

/// The password of the cluster's user `keycap`.
pub const PASSWORD: &str = "tls-test-password";

/// The running cluster; stopped when dropped.
pub struct TlsPostgres {
    cluster: db::embedded::Cluster,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    /// Starts the cluster, listening on 127.0.0.1:5432 (the embedded cluster's port, which no
    /// other test cluster listens on over TCP).
    pub async fn start() -> anyhow::Result<TlsPostgres> {
        let dir = tempfile::Builder::new()
            .prefix("keycap-tls-pg-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let cluster = db::embedded::Cluster::in_folder(dir.path())?;
        cluster.ensure_running().context("starting the cluster")?;
        let (client, connection) =
            tokio_postgres::connect(&cluster.url(db::embedded::DATABASE), tokio_postgres::NoTls)
                .await?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE keycap PASSWORD '{PASSWORD}'"
            ))
            .await?;
        drop(client);
        let _ = driver.await;
        cluster.stop()?;

        let ca = TestCa::new()?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        std::fs::write(dir.path().join("other-ca.pem"), TestCa::new()?.pem())?;
        let (cert, key) = ca.issue("localhost")?;
        let data = cluster.pg_data();
        write_private(&data.join("server.crt"), &cert.pem())?;
        write_private(&data.join("server.key"), &key.serialize_pem())?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(
            "\nlisten_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n",
        );
        std::fs::write(&conf, text)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )?;
        cluster
            .ensure_running()
            .context("starting the cluster with TLS")?;
        Ok(TlsPostgres { cluster, dir })
    }

    /// A `postgres://` URL to the cluster's database at `host` (`localhost` is the name in
    /// the certificate), with `query` (such as `sslmode=verify-full&sslrootcert=...`).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://keycap:{PASSWORD}@{host}:5432/keycap?{query}")
    }

    /// The test CA's certificate file, which issued the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Another CA's certificate file, which did not.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

/// Writes a file only its owner reads (Postgres refuses a key others can read), owned by the
/// postgres user when the cluster runs as that user.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if db::embedded::is_root() {
        let status = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()?;
        anyhow::ensure!(status.success(), "chown {}", path.display());
    }
    Ok(())
}
