//! Running the `keycap` binary: one-shot commands and long-running servers.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Environment variables a child must not inherit from the developer's shell.
const INHERITED_CONFIG: &[&str] = &["DATABASE_URL", "KEYCAP_ENCRYPTION_KEY", "KEYCAP_LOG"];

/// A `keycap` command line bound to one database and one data folder.
#[derive(Debug, Clone)]
pub struct Keycap {
    bin: PathBuf,
    database_url: Option<String>,
    data_dir: PathBuf,
    envs: Vec<(String, String)>,
}

/// The result of a one-shot command.
#[derive(Debug)]
pub struct CommandResult {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CommandResult {
    fn from(output: Output) -> CommandResult {
        CommandResult {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Keycap {
    /// `bin` is `env!("CARGO_BIN_EXE_keycap")` in the caller's tests.
    pub fn new(bin: &Path, database_url: &str, data_dir: &Path) -> Keycap {
        Keycap {
            bin: bin.to_path_buf(),
            database_url: Some(database_url.to_string()),
            data_dir: data_dir.to_path_buf(),
            envs: Vec::new(),
        }
    }

    /// A command line with no database URL: keycap uses its embedded cluster in `data_dir`.
    pub fn embedded(bin: &Path, data_dir: &Path) -> Keycap {
        Keycap {
            bin: bin.to_path_buf(),
            database_url: None,
            data_dir: data_dir.to_path_buf(),
            envs: Vec::new(),
        }
    }

    /// The same command line on another route to the database (a chaos proxy, say).
    pub fn with_database_url(&self, database_url: &str) -> Keycap {
        Keycap {
            database_url: Some(database_url.to_string()),
            ..self.clone()
        }
    }

    /// Adds an environment variable for every command.
    pub fn env(mut self, name: &str, value: &str) -> Keycap {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds each `(name, value)` of `pairs` as with [`Keycap::env`].
    pub fn envs(self, pairs: &[(&str, &str)]) -> Keycap {
        pairs
            .iter()
            .fold(self, |keycap, (name, value)| keycap.env(name, value))
    }

    /// A `Command` for `keycap <args>` with this database and data folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        for (name, _) in std::env::vars() {
            if name.starts_with("KEYCAP_") || INHERITED_CONFIG.contains(&name.as_str()) {
                command.env_remove(name);
            }
        }
        if let Some(url) = &self.database_url {
            command.env("KEYCAP_DATABASE__URL", url);
        }
        command.env("KEYCAP_DATA_DIR", &self.data_dir);
        for (name, value) in &self.envs {
            command.env(name, value);
        }
        command.args(args);
        command
    }

    /// Runs `keycap <args>` to completion with `stdin` as its standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<CommandResult> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running keycap {}", args.join(" ")))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes())?;
        }
        Ok(child.wait_with_output()?.into())
    }

    /// Runs `keycap <args>` to completion with empty standard input.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<CommandResult> {
        self.run_with_stdin(args, "")
    }

    /// Runs `keycap <args>` and fails unless it succeeded; returns its trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let result = self.run(args)?;
        if !result.success {
            bail!("keycap {} failed: {}", args.join(" "), result.stderr);
        }
        Ok(result.stdout.trim().to_string())
    }

    /// `keycap key create` for bob of the seeded org `acme` (named `name`, with a cap of `cap`
    /// dollars and `extra` flags); returns the token.
    pub fn bobs_key(&self, name: &str, cap: &str, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec![
            "key",
            "create",
            "--org",
            "acme",
            "--member",
            "bob@acme.test",
            "--name",
            name,
            "--cap",
            cap,
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// Starts `keycap <args>` and waits until its standard error shows `ready` (at most
    /// `timeout`).
    pub fn spawn(&self, args: &[&str], ready: &str, timeout: Duration) -> anyhow::Result<Running> {
        let command = self.command(args);
        Running::spawn(command, ready, timeout)
    }
}

/// A running child process; killed when dropped.
pub struct Running {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

/// The lines a child has written to one of its streams so far.
type Lines = Arc<Mutex<Vec<String>>>;

/// Collects `stream`'s lines on a thread of its own until it closes.
fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines = Lines::default();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    });
    lines
}

fn text_of(lines: &Lines) -> String {
    lines
        .lock()
        .map(|lines| lines.join("\n"))
        .unwrap_or_default()
}

impl Running {
    /// Spawns `command` and waits for a line of standard error containing `ready`.
    pub fn spawn(mut command: Command, ready: &str, timeout: Duration) -> anyhow::Result<Running> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = collect_lines(child.stdout.take().context("child has no stdout")?);
        let stderr = collect_lines(child.stderr.take().context("child has no stderr")?);
        let mut running = Running {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if running.stderr_text().contains(ready) {
                return Ok(running);
            }
            if let Some(status) = running.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "process exited ({status}) before it was ready:\n{}",
                    running.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "process not ready after {timeout:?}:\n{}",
                    running.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the child wrote to standard error so far.
    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    /// Everything the child wrote to standard output so far.
    pub fn stdout_text(&self) -> String {
        text_of(&self.stdout)
    }

    /// Waits until standard error contains `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(&self.stderr, text, timeout)
    }

    /// Waits until standard output contains `text`.
    pub fn wait_for_stdout(&self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(&self.stdout, text, timeout)
    }

    fn wait_until(&self, lines: &Lines, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !text_of(lines).contains(text) {
            if Instant::now() > deadline {
                bail!(
                    "{text:?} not seen after {timeout:?}:\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the child to exit (at most `timeout`, then SIGKILL).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.stop_with("-TERM", timeout)
    }

    /// Sends SIGINT (Ctrl-C) and waits for the child to exit (at most `timeout`, then SIGKILL).
    pub fn interrupt(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.stop_with("-INT", timeout)
    }

    fn stop_with(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!(
                    "process did not exit within {timeout:?} of kill {signal}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
