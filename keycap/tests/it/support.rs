//! Shared set-up: a fresh database and a `keycap` command line bound to it.

use std::path::Path;

use testkit::TestDb;
use testkit::process::Keycap;

pub const MASTER_SECRET: &str =
    "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

pub struct Env {
    pub db: TestDb,
    pub keycap: Keycap,
    pub _dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    let db = TestDb::new().await.expect("test database");
    let dir = tempfile::tempdir().expect("temp dir");
    let keycap = Keycap::new(Path::new(env!("CARGO_BIN_EXE_keycap")), &db.url, dir.path());
    Env {
        db,
        keycap,
        _dir: dir,
    }
}

/// Seeds org `acme` with owner ann, member bob (budget $100) and the master key `master`.
pub fn seed_acme(keycap: &Keycap, master: &str) {
    keycap
        .ok(&["org", "create", "acme", "--owner", "ann@acme.test"])
        .unwrap();
    keycap
        .ok(&[
            "member",
            "add",
            "--org",
            "acme",
            "bob@acme.test",
            "--role",
            "user",
            "--budget",
            "100",
        ])
        .unwrap();
    let added = keycap
        .run_with_stdin(
            &[
                "vault",
                "add",
                "--org",
                "acme",
                "--service",
                "openrouter",
                "--name",
                "main",
            ],
            master,
        )
        .unwrap();
    assert!(added.success, "{}", added.stderr);
}

/// An org `acme` with owner ann, member bob (budget $100) and an OpenRouter master key.
pub async fn seeded() -> Env {
    let env = env().await;
    seed_acme(&env.keycap, MASTER_SECRET);
    env
}

/// Every row count and money total in the database (the spend journal folded first): equal
/// snapshots mean nothing changed.
pub async fn snapshot(db: &TestDb) -> String {
    let client = db.pool.get().await.unwrap();
    db::usage::fold(&client).await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM orgs), (SELECT count(*) FROM users),
                    (SELECT count(*) FROM memberships), (SELECT coalesce(sum(monthly_budget_nanousd), 0)::bigint FROM memberships),
                    (SELECT count(*) FROM master_keys), (SELECT count(*) FROM api_keys),
                    (SELECT coalesce(sum(cap_nanousd), 0)::bigint FROM api_keys),
                    (SELECT count(*) FILTER (WHERE closed_at IS NOT NULL) FROM api_keys),
                    (SELECT count(*) FROM transactions),
                    (SELECT count(*) FROM key_spends),
                    (SELECT coalesce(sum(spent_nanousd), 0)::bigint FROM key_spends)",
            &[],
        )
        .await
        .unwrap();
    (0..11)
        .map(|i| row.get::<_, i64>(i).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `keycap key list --json` as parsed JSON.
pub fn keys_json(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    keys_json_of(&env.keycap, args)
}

/// The same, run by `keycap`.
pub fn keys_json_of(keycap: &Keycap, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["key", "list", "--json"];
    full.extend_from_slice(args);
    let out = keycap.ok(&full).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// What bob may still carve this month in acme, as `keycap member list --json` says.
pub fn bobs_available_listed(keycap: &Keycap) -> i64 {
    let out = keycap
        .ok(&["member", "list", "--org", "acme", "--json"])
        .unwrap();
    let members: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bob = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "bob@acme.test")
        .unwrap();
    bob["available_nanousd"].as_i64().unwrap()
}
