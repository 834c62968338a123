//! The real SDKs of each API against the gateway, each configured as its own docs say: the
//! OpenAI Python SDK (chat, Responses, embeddings, streams, a coding agent's turn), the OpenAI
//! Node SDK, the Anthropic Python SDK (messages, a stream, `api_key` and `auth_token`), and the
//! Vercel AI SDK (its OpenAI provider's Responses, chat and embeddings; its Anthropic
//! provider).
//! The scripts are in `keycap/tests/sdk/`; each exits non-zero when an answer is not what the
//! SDK should see, and the test then checks the key was charged exactly what the mock billed.
//!
//! An SDK that is not installed skips its test with a message, unless `E2E=1` (as `.ci/run`
//! sets), where it fails: `.ci/run` installs them all.

use std::path::{Path, PathBuf};

use domain::Money;

use crate::gateway_support::start;

/// The folder of the SDK scripts.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

/// True when `program args` exits with success: the SDK is installed.
fn installed(program: &str, args: &[&str], what: &str) -> bool {
    let ok = std::process::Command::new(program)
        .args(args)
        .current_dir(scripts())
        .output()
        .is_ok_and(|output| output.status.success());
    if !ok {
        assert!(
            std::env::var("E2E").is_err(),
            "{what} is not installed, and E2E=1 requires it (run .ci/run, or see README.md)"
        );
        eprintln!("skipped: {what} is not installed (see README.md, Prerequisites)");
    }
    ok
}

/// Runs `program script` against a fresh gateway with a key of `cap` dollars, and checks the
/// key was charged exactly what the mock billed; returns the script's output.
async fn run_against_gateway(program: &str, script: &str, cap: &str) -> String {
    let gw = start().await;
    let token = gw.key(
        cap,
        &["--models", "mock/cheap,openai/text-embedding-3-small"],
    );
    let output = tokio::process::Command::new(program)
        .arg(script)
        .current_dir(scripts())
        .env("KEYCAP_BASE_URL", format!("{}/api/v1", gw.base))
        .env("KEYCAP_ANTHROPIC_BASE_URL", format!("{}/api", gw.base))
        .env("KEYCAP_TOKEN", &token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}\ngateway:\n{}",
        String::from_utf8_lossy(&output.stderr),
        gw.logs()
    );
    let billed = Money::from_nanos(gw.mock.state().total_usage_nanousd() as i64);
    assert!(billed > Money::ZERO, "{stdout}");
    gw.wait_for_spent(&token, billed).await;
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_sdk_runs_chat_responses_and_embeddings() {
    if !installed("python3", &["-c", "import openai"], "the OpenAI Python SDK") {
        return;
    }
    let said = run_against_gateway("python3", "openai_python.py", "1").await;
    for call in ["chat", "responses-stream", "embeddings", "refused 403"] {
        assert!(said.contains(call), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_node_sdk_runs_chat_responses_and_embeddings() {
    let has_sdk = ["node", "-e", "require.resolve('openai')"];
    if !installed(
        has_sdk[0],
        &has_sdk[1..],
        "the OpenAI Node SDK (npm ci in keycap/tests/sdk)",
    ) {
        return;
    }
    let said = run_against_gateway("node", "openai_node.mjs", "1").await;
    for call in ["chat", "responses-stream", "embeddings", "refused 403"] {
        assert!(said.contains(call), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vercel_ai_sdk_runs_responses_chat_messages_and_embeddings() {
    let has_sdk = ["node", "-e", "require.resolve('ai')"];
    if !installed(
        has_sdk[0],
        &has_sdk[1..],
        "the Vercel AI SDK (npm ci in keycap/tests/sdk)",
    ) {
        return;
    }
    let said = run_against_gateway("node", "vercel_ai.mjs", "1").await;
    for call in [
        "responses ",
        "responses-stream",
        "chat",
        "messages",
        "embeddings",
    ] {
        assert!(said.contains(call), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_python_sdk_runs_messages_with_either_credential() {
    if !installed(
        "python3",
        &["-c", "import anthropic"],
        "the Anthropic Python SDK",
    ) {
        return;
    }
    let said = run_against_gateway("python3", "anthropic_python.py", "1").await;
    for call in ["messages ", "messages-stream", "refused 403", "refused 401"] {
        assert!(said.contains(call), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coding_agents_turn_streams_through_and_is_charged_exactly() {
    if !installed("python3", &["-c", "import openai"], "the OpenAI Python SDK") {
        return;
    }
    // The body is about 1.3 MB, every byte reserved as a prompt token at $1 per million.
    let said = run_against_gateway("python3", "coding_agent_turn.py", "5").await;
    assert!(said.contains("streamed"), "{said}");
}
