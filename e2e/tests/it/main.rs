//! Browser tests of the admin app: a real chromium (through Debian's `chromedriver`) walks the
//! pages of an admin app, gateway, OpenRouter mock and database that run in this process.
//! Run only when `E2E=1`.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly, like the tests that call them"
)]

mod abuse;
mod act;
mod browser;
mod check;
mod find;
mod stack;
mod walk;

/// True when browser tests are switched on (`E2E=1`); otherwise says the caller was skipped.
pub fn enabled(test: &str) -> bool {
    if std::env::var("E2E").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped {test}: browser tests run only with E2E=1");
    false
}
