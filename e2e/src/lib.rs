//! Browser tests of the admin app, and nothing else: this library is empty and the tests live in
//! `tests/it/`.
//!
//! The one test walks the product as a new team would (setup link, owner account, a master key
//! in the vault, an invite, a member who provisions a key, a request through the gateway with
//! that key, the spend on the pages, the audit chain, a refused page) in a real chromium driven
//! by `fantoccini` through Debian's `chromedriver`. Everything else runs in the test process on
//! loopback: a fresh Postgres database from `testkit`, `openrouter-mock` as the upstream, the
//! gateway on its own thread and the admin app. It saves a screenshot of every page it visits in
//! `target/e2e-screenshots/` (or `E2E_SCREENSHOTS`). It runs only when `E2E=1`; otherwise it
//! says it was skipped.
