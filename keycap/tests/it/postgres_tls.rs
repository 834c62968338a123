//! keycap on a Postgres that takes TLS connections only (as a managed one does): `sslmode`
//! and `sslrootcert` in the database URL, read by keycap's own connector (rustls), checked
//! against a test CA.

use std::path::Path;

use testkit::process::Keycap;
use testkit::tls_postgres::TlsPostgres;

/// Connects with `url` and says whether the connection is encrypted, or why it failed.
async fn encrypted(url: &str) -> Result<bool, String> {
    let pool = db::connect(url, 1).map_err(|err| err.to_string())?;
    let client = pool.get().await.map_err(|err| {
        let err = db::Error::from(err);
        err.to_string()
    })?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycap_reaches_a_tls_only_postgres_and_checks_its_certificate() {
    let pg = TlsPostgres::start().await.expect("the TLS cluster");
    let ca = pg.ca_file().display().to_string();
    let other = pg.other_ca_file().display().to_string();

    // Encrypted, certificate unchecked (libpq's `require`), and by default (`prefer`).
    assert_eq!(
        encrypted(&pg.url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(encrypted(&pg.url("127.0.0.1", "")).await, Ok(true));
    // verify-full: the chain to the given CA, and the host's name in the certificate.
    let full =
        |host: &str, root: &str| pg.url(host, &format!("sslmode=verify-full&sslrootcert={root}"));
    assert_eq!(encrypted(&full("localhost", &ca)).await, Ok(true));
    let wrong_name = encrypted(&full("127.0.0.1", &ca)).await.unwrap_err();
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    let wrong_ca = encrypted(&full("localhost", &other)).await.unwrap_err();
    assert!(wrong_ca.contains("certificate"), "{wrong_ca}");
    // The system's store (the default) does not hold the test CA.
    let system = encrypted(&pg.url("localhost", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(system.contains("certificate"), "{system}");
    // verify-ca checks the chain, not the name; `require` with a CA file is verify-ca.
    let ca_only =
        |mode: &str, root: &str| pg.url("127.0.0.1", &format!("sslmode={mode}&sslrootcert={root}"));
    assert_eq!(encrypted(&ca_only("verify-ca", &ca)).await, Ok(true));
    assert_eq!(encrypted(&ca_only("require", &ca)).await, Ok(true));
    assert!(encrypted(&ca_only("require", &other)).await.is_err());
    // So does `prefer` with a CA file, as libpq does.
    assert_eq!(encrypted(&ca_only("prefer", &ca)).await, Ok(true));
    assert!(encrypted(&ca_only("prefer", &other)).await.is_err());
    // Without TLS the server refuses; a bad sslmode is refused before connecting.
    let plain = encrypted(&pg.url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        plain.contains("no encryption") || plain.contains("pg_hba"),
        "{plain}"
    );
    let bad = encrypted(&pg.url("localhost", "sslmode=verify"))
        .await
        .unwrap_err();
    assert!(bad.contains("sslmode \"verify\" is not one of"), "{bad}");

    // The keycap binary itself, with verify-full: migrations, an org, a member listed. The
    // password in the URL never shows in what it prints.
    let dir = tempfile::tempdir().unwrap();
    let keycap = Keycap::new(
        Path::new(env!("CARGO_BIN_EXE_keycap")),
        &full("localhost", &ca),
        dir.path(),
    );
    keycap
        .ok(&["org", "create", "acme", "--owner", "ann@acme.test"])
        .unwrap();
    let listed = keycap.run(&["member", "list", "--org", "acme"]).unwrap();
    assert!(listed.success, "{}", listed.stderr);
    assert!(listed.stdout.contains("ann@acme.test"), "{}", listed.stdout);
    let refused = Keycap::new(
        Path::new(env!("CARGO_BIN_EXE_keycap")),
        &full("localhost", &other),
        dir.path(),
    )
    .run(&["member", "list", "--org", "acme"])
    .unwrap();
    assert!(!refused.success);
    for out in [&listed.stdout, &listed.stderr, &refused.stderr] {
        assert!(!out.contains(testkit::tls_postgres::PASSWORD), "{out}");
    }
}
