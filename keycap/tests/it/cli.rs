//! Every admin verb of the command line, and every refusal, against real Postgres.

use crate::support::{MASTER_SECRET, env, keys_json, seeded, snapshot};

#[tokio::test]
async fn the_whole_sequence_works_and_is_recorded() {
    let env = seeded().await;
    let out = env
        .keycap
        .run(&[
            "key",
            "create",
            "--org",
            "acme",
            "--member",
            "bob@acme.test",
            "--name",
            "app",
            "--cap",
            "20",
            "--expires",
            "30d",
            "--models",
            "openai/gpt-4o-mini,mock/cheap",
            "--renew-monthly",
        ])
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    // Only the token goes to standard output, once.
    let token = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(token.starts_with("kc_") && token.len() == 51, "{token}");
    assert!(!out.stderr.contains(token));

    let keys = keys_json(&env, &["--org", "acme"]);
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["name"], "app");
    assert_eq!(key["member"], "bob@acme.test");
    assert_eq!(key["service"], "openrouter");
    assert_eq!(key["cap_nanousd"], 20_000_000_000i64);
    assert_eq!(key["spent_nanousd"], 0);
    assert_eq!(key["remaining_nanousd"], 20_000_000_000i64);
    assert_eq!(key["prefix"], &token[..11]);
    assert!(key["expires_at"].is_string());
    assert!(key["revoked_at"].is_null());
    assert_eq!(
        key["model_scope"],
        serde_json::json!(["openai/gpt-4o-mini", "mock/cheap"])
    );
    // The token itself is nowhere in the database, only its hash.
    let client = env.db.client().await.unwrap();
    let stored: Vec<u8> = client
        .query_one("SELECT token_hash FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, domain::token::hash_token(token).to_vec());

    // Filtering by member.
    assert_eq!(
        keys_json(&env, &["--org", "acme", "--member", "bob@acme.test"]).len(),
        1
    );
    assert_eq!(
        keys_json(&env, &["--org", "acme", "--member", "ann@acme.test"]).len(),
        0
    );

    // A raise is carved from bob's budget, a cut refunded to it.
    for (cap, said) in [
        (
            "50",
            "cap $20.00 -> $50.00; carved $30.00 from bob@acme.test's budget",
        ),
        (
            "12",
            "cap $50.00 -> $12.00; refunded $38.00 to bob@acme.test",
        ),
    ] {
        let out = env
            .keycap
            .run(&[
                "key",
                "set-cap",
                "--org",
                "acme",
                &token[..11],
                "--cap",
                cap,
            ])
            .unwrap();
        assert!(out.success && out.stderr.contains(said), "{}", out.stderr);
    }
    assert_eq!(
        keys_json(&env, &["--org", "acme"])[0]["cap_nanousd"],
        12_000_000_000i64
    );

    // Revoke by display prefix refunds the unspent cap.
    let revoked = env
        .keycap
        .run(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    assert!(revoked.success, "{}", revoked.stderr);
    assert!(
        revoked.stderr.contains("refunded $12.00"),
        "{}",
        revoked.stderr
    );
    let keys = keys_json(&env, &["--org", "acme"]);
    assert!(keys[0]["revoked_at"].is_string());
    assert_eq!(keys[0]["status"], "revoked");

    let audit = env
        .keycap
        .run(&["audit", "--org", "acme", "--json"])
        .unwrap();
    assert!(audit.success, "{}", audit.stderr);
    assert!(
        audit.stderr.contains("hash chain intact (9 rows)"),
        "{}",
        audit.stderr
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "refund",
            "key_revoked",
            "refund",
            "key_cap_changed",
            "key_cap_changed",
            "key_provisioned",
            "master_key_added",
            "member_joined",
            "org_created"
        ]
    );
    let amounts: Vec<i64> = rows[..6]
        .iter()
        .map(|r| r["amount_nanousd"].as_i64().unwrap())
        .collect();
    assert_eq!(
        amounts,
        [12, 0, 38, 0, 30, 20].map(|usd| usd * 1_000_000_000)
    );
    assert_eq!(rows[3]["detail"]["old_cap_nanousd"], 50_000_000_000i64);
    assert_eq!(rows[3]["detail"]["cap_nanousd"], 12_000_000_000i64);
    assert_eq!(rows[5]["member_email"], "bob@acme.test");
}

/// Provisions a key of bob's in acme with `keycap key create`; returns its token.
fn bobs_key(env: &crate::support::Env, name: &str, cap: &str) -> String {
    env.keycap.bobs_key(name, cap, &[]).unwrap()
}

/// A refused command exits non-zero with one clear line and changes nothing.
#[tokio::test]
async fn every_refusal_is_clear_and_changes_nothing() {
    let env = seeded().await;
    // A key to revoke twice, and a second org without a master key.
    let token = bobs_key(&env, "k", "30");
    env.keycap
        .ok(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    // An open $10 key, for the cap changes refused (bob has $90 left after it).
    let open = bobs_key(&env, "open", "10");
    env.keycap
        .ok(&["org", "create", "empty", "--owner", "eve@empty.test"])
        .unwrap();
    env.keycap
        .ok(&[
            "member",
            "add",
            "--org",
            "empty",
            "carl@empty.test",
            "--budget",
            "50",
        ])
        .unwrap();

    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "r",
                "--cap",
                "1",
                "--rpm",
                "0",
            ],
            "",
            "a rate limit must be 1 to 1000000 requests per minute",
        ),
        (
            &["org", "create", "acme", "--owner", "x@acme.test"],
            "",
            "org \"acme\" already exists",
        ),
        (
            &["org", "create", "new", "--owner", "not-an-email"],
            "",
            "is not an email address",
        ),
        (
            &["org", "create", "   ", "--owner", "x@y.test"],
            "",
            "org name must be 1 to 200 characters",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "nope",
                "c@acme.test",
                "--budget",
                "5",
            ],
            "",
            "org \"nope\" not found",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "c@acme.test",
                "--budget",
                "abc",
            ],
            "",
            "is not a dollar amount",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "c@acme.test",
                "--budget",
                "0.0000000001",
            ],
            "",
            "more than nine decimals",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "c@acme.test",
                "--budget",
                "-5",
            ],
            "",
            "is negative",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "c@acme.test",
                "--budget",
                "5",
                "--role",
                "admin",
            ],
            "",
            "role \"admin\" is unknown",
        ),
        (
            &[
                "member",
                "add",
                "--org",
                "acme",
                "bob@acme.test",
                "--budget",
                "5",
            ],
            "",
            "already a member",
        ),
        (
            &["budget", "set", "--org", "acme", "nobody@acme.test", "10"],
            "",
            "member nobody@acme.test in org \"acme\" not found",
        ),
        (
            &["budget", "set", "--org", "acme", "bob@acme.test", "ten"],
            "",
            "is not a dollar amount",
        ),
        (
            &["vault", "add", "--org", "acme", "--name", "x"],
            "",
            "no secret on standard input",
        ),
        (
            &["vault", "add", "--org", "acme", "--name", "x"],
            "two words\n",
            "spaces or control characters",
        ),
        (
            &[
                "vault",
                "add",
                "--org",
                "acme",
                "--service",
                "s3",
                "--name",
                "x",
            ],
            "secret\n",
            "service \"s3\" is unknown",
        ),
        (
            &["vault", "add", "--org", "nope", "--name", "x"],
            "secret\n",
            "org \"nope\" not found",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "k",
                "--cap",
                "100.01",
            ],
            "",
            "exceeds the budget left this month ($90.00)",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "k",
                "--cap",
                "0",
            ],
            "",
            "cap must be more than $0.00",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "zed@acme.test",
                "--name",
                "k",
                "--cap",
                "1",
            ],
            "",
            "member zed@acme.test in org \"acme\" not found",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "k",
                "--cap",
                "1",
                "--expires",
                "soon",
            ],
            "",
            "expiry \"soon\" is not understood",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "k",
                "--cap",
                "1",
                "--expires",
                "2001-01-01",
            ],
            "",
            "is not in the future",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "acme",
                "--member",
                "bob@acme.test",
                "--name",
                "k",
                "--cap",
                "1",
                "--service",
                "s3",
            ],
            "",
            "service \"s3\" is unknown",
        ),
        (
            &[
                "key",
                "create",
                "--org",
                "empty",
                "--member",
                "carl@empty.test",
                "--name",
                "k",
                "--cap",
                "1",
            ],
            "",
            "has no active openrouter master key",
        ),
        (
            &["key", "revoke", "--org", "acme", &token[..11]],
            "",
            "is already revoked",
        ),
        (
            &[
                "key",
                "set-cap",
                "--org",
                "acme",
                &token[..11],
                "--cap",
                "5",
            ],
            "",
            "is revoked: its cap cannot change",
        ),
        (
            &[
                "key",
                "set-cap",
                "--org",
                "acme",
                &open[..11],
                "--cap",
                "five",
            ],
            "",
            "is not a dollar amount",
        ),
        (
            &["key", "set-cap", "--org", "acme", &open[..11], "--cap", "0"],
            "",
            "a cap must be more than $0.00",
        ),
        (
            &[
                "key",
                "set-cap",
                "--org",
                "acme",
                &open[..11],
                "--cap",
                "10",
            ],
            "",
            "cap is $10.00 already",
        ),
        (
            &[
                "key",
                "set-cap",
                "--org",
                "acme",
                &open[..11],
                "--cap",
                "100.01",
            ],
            "",
            "raising the cap takes $90.01 from the budget, more than is left this month ($90.00)",
        ),
        (
            &[
                "key",
                "set-cap",
                "--org",
                "acme",
                "kc_00000000",
                "--cap",
                "5",
            ],
            "",
            "key \"kc_00000000\" in org \"acme\" not found",
        ),
        (
            &["key", "revoke", "--org", "acme", "kc_00000000"],
            "",
            "key \"kc_00000000\" in org \"acme\" not found",
        ),
        (&["key", "revoke", "--org", "acme", "kc"], "", "too short"),
        (
            &["key", "list", "--org", "nope"],
            "",
            "org \"nope\" not found",
        ),
        (&["audit", "--org", "nope"], "", "org \"nope\" not found"),
        (
            &["vault", "rotate", "--org", "acme", "main"],
            "",
            "no secret on standard input",
        ),
        (
            &["vault", "rotate", "--org", "acme", "nope"],
            "secret\n",
            "no active master key \"nope\" in \"acme\"",
        ),
        (
            &["vault", "revoke", "--org", "acme", "nope"],
            "",
            "no active master key \"nope\" in \"acme\"",
        ),
    ];
    for (args, stdin, expected) in cases {
        let before = snapshot(&env.db).await;
        let out = env.keycap.run_with_stdin(args, stdin).unwrap();
        assert!(!out.success, "keycap {} succeeded", args.join(" "));
        assert!(
            out.stderr.contains(expected),
            "keycap {}: expected {expected:?} in {:?}",
            args.join(" "),
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line for keycap {}: {:?}",
            args.join(" "),
            out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "keycap {} printed {:?}",
            args.join(" "),
            out.stdout
        );
        assert_eq!(
            snapshot(&env.db).await,
            before,
            "keycap {} changed something",
            args.join(" ")
        );
    }
}

#[tokio::test]
async fn amounts_take_nine_decimals_and_budgets_can_be_lowered() {
    let env = seeded().await;
    env.keycap
        .ok(&[
            "member",
            "add",
            "--org",
            "acme",
            "cy@acme.test",
            "--budget",
            "0.000576",
        ])
        .unwrap();
    let members: Vec<serde_json::Value> = serde_json::from_str(
        &env.keycap
            .ok(&["member", "list", "--org", "acme", "--json"])
            .unwrap(),
    )
    .unwrap();
    let cy = members
        .iter()
        .find(|m| m["email"] == "cy@acme.test")
        .unwrap();
    assert_eq!(cy["budget_nanousd"], 576_000);

    bobs_key(&env, "a", "60");
    // Lowered below what is carved: allowed, the key keeps its cap, and nothing new fits.
    env.keycap
        .ok(&["budget", "set", "--org", "acme", "bob@acme.test", "50"])
        .unwrap();
    let refused = env
        .keycap
        .run(&[
            "key",
            "create",
            "--org",
            "acme",
            "--member",
            "bob@acme.test",
            "--name",
            "b",
            "--cap",
            "0.01",
        ])
        .unwrap();
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("budget left this month ($0.00)"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        keys_json(&env, &["--org", "acme"])[0]["cap_nanousd"],
        60_000_000_000i64
    );
    // Raised again: what is left is budget minus carved.
    env.keycap
        .ok(&["budget", "set", "--org", "acme", "bob@acme.test", "65.5"])
        .unwrap();
    env.keycap
        .ok(&[
            "key",
            "create",
            "--org",
            "acme",
            "--member",
            "bob@acme.test",
            "--name",
            "b",
            "--cap",
            "5.5",
        ])
        .unwrap();
    let members: Vec<serde_json::Value> = serde_json::from_str(
        &env.keycap
            .ok(&["member", "list", "--org", "acme", "--json"])
            .unwrap(),
    )
    .unwrap();
    let bob = members
        .iter()
        .find(|m| m["email"] == "bob@acme.test")
        .unwrap();
    assert_eq!(bob["available_nanousd"], 0);
    assert_eq!(bob["carved_nanousd"], 65_500_000_000i64);
}

#[tokio::test]
async fn orgs_are_found_by_id_or_name() {
    let env = env().await;
    let id = env
        .keycap
        .ok(&["org", "create", "first", "--owner", "a@first.test"])
        .unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    env.keycap
        .ok(&[
            "member",
            "add",
            "--org",
            &id,
            "b@first.test",
            "--budget",
            "1",
        ])
        .unwrap();
    let out = env
        .keycap
        .ok(&["member", "list", "--org", "first"])
        .unwrap();
    assert!(out.contains("b@first.test"), "{out}");
}

/// The master key is sealed: no plaintext anywhere in a dump of the whole database.
#[tokio::test]
async fn no_master_key_in_plaintext_in_the_database() {
    let env = seeded().await;
    let bin_dir = db::embedded::find_bin_dir().expect("PostgreSQL binaries");
    let dump = std::process::Command::new(bin_dir.join("pg_dump"))
        .args(["--data-only", "--inserts", "-d", &env.db.url])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("INSERT INTO public.master_keys"),
        "the dump holds the master key row"
    );
    assert!(!text.contains(MASTER_SECRET));
    assert!(!text.contains(&hex_of(MASTER_SECRET)));
    assert!(!text.contains(&MASTER_SECRET[9..40]));
    // The last four characters are the only part shown.
    let listed = env.keycap.ok(&["vault", "list", "--org", "acme"]).unwrap();
    assert!(listed.contains(&MASTER_SECRET[MASTER_SECRET.len() - 4..]));
    assert!(!listed.contains(&MASTER_SECRET[..20]));
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `keycap up` on a busy port stops at once with the key to change, rather than waiting.
#[tokio::test]
async fn up_refuses_a_busy_port_clearly() {
    let env = env().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let metrics = format!("127.0.0.1:{}", testkit::free_port());
    let out = env
        .keycap
        .run(&[
            "up",
            "--gateway-listen",
            &busy_addr,
            "--metrics-listen",
            &metrics,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
    assert!(!out.success);
    assert!(
        out.stderr
            .contains(&format!("gateway.listen = \"{busy_addr}\" cannot be used")),
        "{}",
        out.stderr
    );
    // The same for the admin app's port.
    let gateway = format!("127.0.0.1:{}", testkit::free_port());
    let out = env
        .keycap
        .run(&[
            "up",
            "--gateway-listen",
            &gateway,
            "--metrics-listen",
            &metrics,
            "--admin-listen",
            &busy_addr,
        ])
        .unwrap();
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!("admin.listen {busy_addr}")),
        "{}",
        out.stderr
    );
}

/// `keycap args` fails with one line on standard error.
#[track_caller]
fn refused_in_one_line(env: &crate::support::Env, args: &[&str]) {
    let out = env.keycap.run(args).unwrap();
    assert!(!out.success, "{args:?}");
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "{args:?}: {}",
        out.stderr
    );
}

/// `keycap member invite` prints a single-use link to the admin app, stored only as a hash.
#[tokio::test]
async fn member_invite_prints_a_link_to_the_admin_app() {
    let env = seeded().await;
    let link = env
        .keycap
        .ok(&[
            "member",
            "invite",
            "--org",
            "acme",
            "carol@acme.test",
            "--budget",
            "10",
        ])
        .unwrap();
    let token = link
        .strip_prefix("http://127.0.0.1:3000/invite/")
        .unwrap_or_else(|| panic!("unexpected link {link:?}"));
    assert_eq!(token.len(), 64, "{token}");
    let client = env.db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT email, role, monthly_budget_nanousd, token_hash FROM invites",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "carol@acme.test");
    assert_eq!(row.get::<_, String>(1), "user");
    assert_eq!(row.get::<_, i64>(2), 10_000_000_000);
    assert_eq!(
        row.get::<_, Vec<u8>>(3),
        domain::token::hash_token(token).to_vec()
    );
    // The owner made on the command line has no password yet: a link lets her choose one.
    let public = env
        .keycap
        .clone()
        .env("KEYCAP_ADMIN__PUBLIC_URL", "https://keycap.example");
    let ann = public
        .ok(&["member", "invite", "--org", "acme", "ann@acme.test"])
        .unwrap();
    assert!(ann.starts_with("https://keycap.example/invite/"), "{ann}");
    // The link works for `admin.invite_days`, as an invite from the admin app does.
    env.keycap
        .clone()
        .env("KEYCAP_ADMIN__INVITE_DAYS", "2")
        .ok(&["member", "invite", "--org", "acme", "dave@acme.test"])
        .unwrap();
    let days_left: f64 = client
        .query_one(
            "SELECT extract(epoch FROM expires_at - now())::float8 / 86400 FROM invites
             WHERE email = 'dave@acme.test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((1.9..=2.0).contains(&days_left), "{days_left}");
    // Bad input: one line, nothing written.
    let before = snapshot(&env.db).await;
    for args in [
        &["member", "invite", "--org", "acme", "not-an-email"][..],
        &[
            "member",
            "invite",
            "--org",
            "acme",
            "d@acme.test",
            "--role",
            "king",
        ],
        &[
            "member",
            "invite",
            "--org",
            "acme",
            "d@acme.test",
            "--budget",
            "-1",
        ],
        &["member", "invite", "--org", "nope", "d@acme.test"],
    ] {
        refused_in_one_line(&env, args);
    }
    assert_eq!(snapshot(&env.db).await, before);
}

/// `keycap member reset-link` prints a single-use password-reset link for a member, stored only
/// as a hash, working for `admin.password_reset_hours`, with its ledger row; bad input is one
/// line and writes nothing.
#[tokio::test]
async fn member_reset_link_prints_a_link_to_the_admin_app() {
    let env = seeded().await;
    let link = env
        .keycap
        .clone()
        .env("KEYCAP_ADMIN__PASSWORD_RESET_HOURS", "2")
        .ok(&["member", "reset-link", "--org", "acme", "bob@acme.test"])
        .unwrap();
    let token = link
        .strip_prefix("http://127.0.0.1:3000/reset/")
        .unwrap_or_else(|| panic!("unexpected link {link:?}"));
    let client = env.db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT u.email, r.token_hash, extract(epoch FROM r.expires_at - now())::float8 / 3600
             FROM password_resets r JOIN users u ON u.id = r.user_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bob@acme.test");
    assert_eq!(
        row.get::<_, Vec<u8>>(1),
        domain::token::hash_token(token).to_vec()
    );
    let hours: f64 = row.get(2);
    assert!((1.9..=2.0).contains(&hours), "{hours}");
    let issued: i64 = client
        .query_one(
            "SELECT count(*) FROM transactions WHERE kind = 'password_reset_issued'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(issued, 1);
    let before = snapshot(&env.db).await;
    for args in [
        &["member", "reset-link", "--org", "acme", "not-an-email"][..],
        &["member", "reset-link", "--org", "acme", "nobody@acme.test"],
        &["member", "reset-link", "--org", "nope", "bob@acme.test"],
    ] {
        refused_in_one_line(&env, args);
    }
    assert_eq!(snapshot(&env.db).await, before);
}

/// `keycap vault rekey` seals every master key again with the newest encryption key, one
/// transaction and ledger row each: interrupted by a key it cannot open, it keeps what it did
/// and a second run resumes with the rest; the secrets then open with the newest key alone.
#[tokio::test]
async fn vault_rekey_reseals_every_master_key_and_resumes() {
    let env = seeded().await;
    let old = std::fs::read_to_string(env._dir.path().join("encryption.key"))
        .unwrap()
        .lines()
        .find(|line| !line.starts_with('#') && !line.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    let new = vault::SealingKey::generate();
    let other = vault::SealingKey::generate();
    let keys = |list: &[&str]| {
        env.keycap
            .clone()
            .env("KEYCAP_ENCRYPTION_KEY", &list.join(","))
    };
    // A revoked master key is resealed too; one of another org is sealed with a key the first
    // run does not hold.
    let spare = keys(&[&old])
        .run_with_stdin(
            &["vault", "add", "--org", "acme", "--name", "spare"],
            MASTER_SECRET,
        )
        .unwrap();
    assert!(spare.success, "{}", spare.stderr);
    keys(&[&old])
        .ok(&["vault", "revoke", "--org", "acme", "spare"])
        .unwrap();
    keys(&[&old])
        .ok(&["org", "create", "beta", "--owner", "bea@beta.test"])
        .unwrap();
    let beta = keys(&[&other.to_base64()])
        .run_with_stdin(
            &["vault", "add", "--org", "beta", "--name", "b"],
            MASTER_SECRET,
        )
        .unwrap();
    assert!(beta.success, "{}", beta.stderr);
    let client = env.db.client().await.unwrap();
    let resealed = || async {
        client
            .query_one(
                "SELECT count(*) FROM transactions WHERE kind = 'master_key_resealed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    let first = keys(&[&new.to_base64(), &old])
        .run(&["vault", "rekey"])
        .unwrap();
    assert!(!first.success, "{}", first.stderr);
    assert!(
        first.stderr.contains("[1/3]") && first.stderr.contains("[2/3]"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("stopped after 2 of 3") && first.stderr.contains("again to resume"),
        "{}",
        first.stderr
    );
    assert_eq!(resealed().await, 2);

    let second = keys(&[&new.to_base64(), &old, &other.to_base64()])
        .run(&["vault", "rekey"])
        .unwrap();
    assert!(second.success, "{}", second.stderr);
    assert!(second.stderr.contains("[1/1]"), "{}", second.stderr);
    assert_eq!(resealed().await, 3);
    let third = keys(&[&new.to_base64()]).run(&["vault", "rekey"]).unwrap();
    assert!(third.success, "{}", third.stderr);
    assert_eq!(resealed().await, 3, "nothing left to do");

    // Every secret opens with the newest key alone, unchanged.
    let only_new = vault::Keyring::single(new.clone());
    let rows = client
        .query(
            "SELECT id, org_id, sealing_key_id, nonce, ciphertext FROM master_keys",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let sealed = domain::Sealed {
            sealing_key_id: row.get(2),
            nonce: row.get(3),
            ciphertext: row.get(4),
        };
        assert_eq!(sealed.sealing_key_id, new.id());
        let secret = only_new.open(row.get(1), row.get(0), &sealed).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), MASTER_SECRET);
    }
    let audit = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        audit.stderr.contains("hash chain intact"),
        "{}",
        audit.stderr
    );
}

/// `keycap vault rotate` replaces a master key's secret in place and `keycap vault revoke` ends
/// it, each with its ledger row; a revoked key can be neither rotated nor revoked again.
#[tokio::test]
async fn master_keys_are_rotated_and_revoked_from_the_command_line() {
    let env = seeded().await;
    let listed =
        |env: &crate::support::Env| env.keycap.ok(&["vault", "list", "--org", "acme"]).unwrap();
    let id = listed(&env)
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_string();
    let new_secret = "sk-or-v1-rotatedrotatedrotatedrotatedrotated0wxyz";
    let rotated = env
        .keycap
        .run_with_stdin(&["vault", "rotate", "--org", "acme", "main"], new_secret)
        .unwrap();
    assert!(rotated.success, "{}", rotated.stderr);
    assert!(rotated.stderr.contains("now …wxyz"), "{}", rotated.stderr);
    let after = listed(&env);
    assert!(
        after.contains(&id) && after.contains("wxyz") && after.contains("active"),
        "{after}"
    );
    assert!(
        !after.contains(&MASTER_SECRET[MASTER_SECRET.len() - 4..]),
        "{after}"
    );

    let revoked = env
        .keycap
        .run(&["vault", "revoke", "--org", "acme", &id])
        .unwrap();
    assert!(revoked.success, "{}", revoked.stderr);
    assert!(listed(&env).contains("revoked"));
    for (args, says) in [
        (
            vec!["vault", "revoke", "--org", "acme", id.as_str()],
            "already revoked",
        ),
        (
            vec!["vault", "revoke", "--org", "acme", "main"],
            "no active master key",
        ),
        (
            vec!["vault", "rotate", "--org", "acme", id.as_str()],
            "is revoked",
        ),
    ] {
        let before = snapshot(&env.db).await;
        let out = env.keycap.run_with_stdin(&args, new_secret).unwrap();
        assert!(!out.success, "keycap {} succeeded", args.join(" "));
        assert!(out.stderr.contains(says), "{}", out.stderr);
        assert_eq!(snapshot(&env.db).await, before);
    }

    let audit = env
        .keycap
        .run(&["audit", "--org", "acme", "--json"])
        .unwrap();
    assert!(audit.success, "{}", audit.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).unwrap();
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .take(2)
        .collect();
    assert_eq!(kinds, ["master_key_revoked", "master_key_rotated"]);
    assert_eq!(rows[1]["detail"]["last_four"], "wxyz");
}

/// Debian's libfaketime, which moves a process's clock (`apt-get install faketime`).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.is_file());
    found
        .expect("libfaketime is not installed (Debian: apt-get install faketime)")
        .display()
        .to_string()
}

/// keycap dates every change to money by its own clock, so a process whose clock is more than
/// two minutes from the database's refuses to run, and changes nothing; one a minute off runs.
#[tokio::test]
async fn a_clock_far_from_the_databases_is_refused() {
    let env = seeded().await;
    // Under `.ci/at-dates` this test's own clock is moved already: move keycap's from there.
    let base: i64 = std::env::var("FAKETIME")
        .ok()
        .and_then(|offset| offset.parse().ok())
        .unwrap_or(0);
    let with_offset = |seconds: i64| {
        env.keycap.clone().envs(&[
            ("LD_PRELOAD", &libfaketime()),
            ("FAKETIME", &format!("{:+}", base + seconds)),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ])
    };
    let before = snapshot(&env.db).await;
    for (offset, way) in [(3600, "ahead of"), (-600, "behind")] {
        let out = with_offset(offset)
            .run(&["key", "list", "--org", "acme"])
            .unwrap();
        assert!(!out.success, "{offset}: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!("s {way} the database's"))
                && out.stderr.contains("agree within 120s"),
            "{offset}: {}",
            out.stderr
        );
    }
    let out = with_offset(-60)
        .run(&["key", "list", "--org", "acme"])
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    assert_eq!(snapshot(&env.db).await, before);
}

/// A key the upstream billed past its cap (a pricing bug the gateway logs and counts) shows as
/// over its cap, by how much, in `keycap key list` and its JSON.
#[tokio::test]
async fn a_key_past_its_cap_is_listed_as_over_it() {
    let env = seeded().await;
    let token = bobs_key(&env, "overrun", "1");
    let hash = domain::token::hash_token(&token).to_vec();
    // What settling a reported cost above the reservation leaves behind: spend past the cap.
    env.db
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE key_spends SET spent_nanousd = 1000001234
             WHERE api_key_id = (SELECT id FROM api_keys WHERE token_hash = $1)",
            &[&hash],
        )
        .await
        .unwrap();
    let listed = env.keycap.ok(&["key", "list", "--org", "acme"]).unwrap();
    let line = listed.lines().find(|l| l.contains("overrun")).unwrap();
    assert!(
        line.contains("active (over its cap by $0.000001234)"),
        "{listed}"
    );
    let keys: Vec<serde_json::Value> = serde_json::from_str(
        &env.keycap
            .ok(&["key", "list", "--org", "acme", "--json"])
            .unwrap(),
    )
    .unwrap();
    let key = keys.iter().find(|k| k["name"] == "overrun").unwrap();
    assert_eq!(key["over_cap_nanousd"], 1234);
    assert_eq!(key["remaining_nanousd"], 0);
}

/// `keycap token create --scope metrics` prints a token once and stores only its hash; other
/// scopes and bad input are refused and change nothing; a listed token can be revoked.
#[tokio::test]
async fn metrics_tokens_are_made_listed_and_revoked_on_the_command_line() {
    let env = seeded().await;
    let before = snapshot(&env.db).await;
    for (args, message) in [
        (
            &["token", "create", "--org", "acme", "--scope", "admin"][..],
            "an owner makes them on the admin app's /account page",
        ),
        (
            &["token", "create", "--org", "acme", "--scope", "everything"][..],
            "is not one of: admin",
        ),
        (
            &["token", "create", "--org", "nope", "--scope", "metrics"][..],
            "nope",
        ),
        (
            &[
                "token", "create", "--org", "acme", "--scope", "metrics", "--name", "",
            ][..],
            "token name must be 1 to 200 characters",
        ),
    ] {
        let out = env.keycap.run(args).unwrap();
        assert!(!out.success, "{args:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    let client = env.db.pool.get().await.unwrap();
    let tokens: i64 = client
        .query_one("SELECT count(*) FROM admin_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tokens, 0);
    assert_eq!(snapshot(&env.db).await, before);

    let out = env
        .keycap
        .run(&["token", "create", "--org", "acme", "--scope", "metrics"])
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    let token = out.stdout.trim();
    assert!(token.starts_with("kcm_") && token.len() == 68, "{token}");
    let listed = env.keycap.ok(&["token", "list", "--org", "acme"]).unwrap();
    assert!(!listed.contains(token), "the secret is listed: {listed}");
    let line = listed.lines().find(|l| l.contains("prometheus")).unwrap();
    assert!(
        line.contains(&token[..12]) && line.contains("metrics") && line.contains("active"),
        "{listed}"
    );
    let id = line.split_whitespace().next().unwrap();
    env.keycap
        .ok(&["token", "revoke", "--org", "acme", id])
        .unwrap();
    let listed = env.keycap.ok(&["token", "list", "--org", "acme"]).unwrap();
    assert!(listed.contains("revoked"), "{listed}");
    let again = env
        .keycap
        .run(&["token", "revoke", "--org", "acme", id])
        .unwrap();
    assert!(!again.success);
}

/// No command makes a new encryption key while master keys are sealed in the database (it
/// could not open them): a lost key file is refused with what to do, and nothing is written.
/// A key file its group or others can read is refused. `keycap gateway` and `keycap admin`
/// need a database URL and never make a key.
#[tokio::test]
async fn a_lost_or_readable_key_file_is_refused_and_never_replaced() {
    use std::os::unix::fs::PermissionsExt;

    let env = seeded().await;
    let key_file = env._dir.path().join("encryption.key");
    let add = ["vault", "add", "--org", "acme", "--name", "second"];
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.keycap.run_with_stdin(&add, MASTER_SECRET).unwrap();
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!(
            "mode 644): make it private with chmod 600 {}",
            key_file.display()
        )),
        "{}",
        out.stderr
    );

    std::fs::remove_file(&key_file).unwrap();
    for args in [&add[..], &["up"][..], &["admin"][..]] {
        let out = env.keycap.run_with_stdin(args, MASTER_SECRET).unwrap();
        assert!(!out.success, "{args:?}");
        assert!(
            out.stderr.contains(
                "1 master key(s) are sealed in this database, but no encryption key was found"
            ),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!key_file.exists(), "{args:?} made a new key");
    }

    let fresh = crate::support::env().await;
    let out = fresh.keycap.run(&["gateway"]).unwrap();
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("keycap gateway and keycap admin never make one"),
        "{}",
        out.stderr
    );
    let embedded = testkit::process::Keycap::embedded(
        std::path::Path::new(env!("CARGO_BIN_EXE_keycap")),
        fresh._dir.path(),
    );
    let out = embedded.run(&["admin"]).unwrap();
    assert!(!out.success);
    assert!(out.stderr.contains("need database.url"), "{}", out.stderr);
}

/// Pending invites are listed and cancelled on the command line; a bad id changes nothing.
#[tokio::test]
async fn invites_are_listed_and_cancelled_on_the_command_line() {
    let env = seeded().await;
    env.keycap
        .ok(&[
            "member",
            "invite",
            "--org",
            "acme",
            "carol@acme.test",
            "--budget",
            "5",
        ])
        .unwrap();
    let listed = env
        .keycap
        .ok(&["member", "invites", "--org", "acme"])
        .unwrap();
    let line = listed
        .lines()
        .find(|l| l.contains("carol@acme.test"))
        .unwrap();
    assert!(
        line.contains("pending") && line.contains("$5.00"),
        "{listed}"
    );
    let id = line.split_whitespace().next().unwrap().to_string();

    let before = snapshot(&env.db).await;
    for bad in ["nope", "00000000-0000-0000-0000-000000000000"] {
        let out = env
            .keycap
            .run(&["member", "cancel-invite", "--org", "acme", bad])
            .unwrap();
        assert!(!out.success, "{bad}");
    }
    assert_eq!(snapshot(&env.db).await, before);

    let out = env
        .keycap
        .run(&["member", "cancel-invite", "--org", "acme", &id])
        .unwrap();
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cancelled the invite of carol@acme.test")
    );
    let listed = env
        .keycap
        .ok(&["member", "invites", "--org", "acme"])
        .unwrap();
    assert!(!listed.contains("carol@acme.test"), "{listed}");
    let audit = env.keycap.ok(&["audit", "--org", "acme"]).unwrap();
    assert!(audit.contains("invite_cancelled"), "{audit}");
}
