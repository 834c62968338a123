//! The embedded default: a private PostgreSQL cluster under keycap's data folder, used when no
//! database URL is configured.
//!
//! The cluster listens only on a Unix socket inside the data folder (no TCP port, socket mode
//! 0700), trusts local connections, and is started with the installed PostgreSQL binaries.
//! PostgreSQL refuses to run as root, so when keycap runs as root the cluster is owned by and
//! run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The database and role keycap uses inside an embedded cluster.
pub const DATABASE: &str = "keycap";
const PORT: u16 = 5432;
const UNIX_SOCKET_PATH_MAX: usize = 107;

/// Why the embedded cluster could not be used. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL is not installed (no initdb found): install it (Debian: apt-get install postgresql) or set KEYCAP_DATABASE__URL to an existing database"
    )]
    NotInstalled,
    #[error(
        "keycap runs as root and PostgreSQL refuses to: create the `postgres` user (apt-get install postgresql does) or set KEYCAP_DATABASE__URL"
    )]
    NoPostgresUser,
    #[error(
        "the postgres user cannot write {0}: set KEYCAP_DATA_DIR to a folder it can reach (not under root's home), or set KEYCAP_DATABASE__URL"
    )]
    Unreachable(PathBuf),
    #[error("data folder path {0} is too long for a Unix socket: choose a shorter KEYCAP_DATA_DIR")]
    PathTooLong(PathBuf),
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A private cluster in a folder.
#[derive(Debug, Clone)]
pub struct Cluster {
    bin_dir: PathBuf,
    pg_data: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    run_as_postgres: bool,
}

impl Cluster {
    /// The cluster kept in `folder` (its `postgres/` and `postgres-run/` subfolders). Nothing is
    /// created until [`Cluster::ensure_running`].
    pub fn in_folder(folder: &Path) -> Result<Cluster, EmbeddedError> {
        let folder = std::path::absolute(folder)?;
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NotInstalled)?;
        let folder = if is_root() {
            reachable_folder(&folder)?
        } else {
            folder
        };
        let socket_dir = folder.join("postgres-run");
        let socket_len = socket_dir.as_os_str().len() + ".s.PGSQL.5432".len() + 1;
        if socket_len > UNIX_SOCKET_PATH_MAX {
            return Err(EmbeddedError::PathTooLong(socket_dir));
        }
        Ok(Cluster {
            bin_dir,
            pg_data: folder.join("postgres"),
            log_file: folder.join("postgres").join("server.log"),
            socket_dir,
            run_as_postgres: is_root(),
        })
    }

    /// The connection string for database `dbname` in this cluster.
    pub fn url(&self, dbname: &str) -> String {
        format!("{} dbname={dbname}", self.server_url())
    }

    /// The connection string of the server, without a database name.
    pub fn server_url(&self) -> String {
        format!(
            "host='{}' port={PORT} user={DATABASE} connect_timeout=10",
            self.socket_dir.display()
        )
    }

    /// The data directory (PGDATA).
    pub fn pg_data(&self) -> &Path {
        &self.pg_data
    }

    /// Initialises the cluster if needed and starts it if it is not running. Returns true when
    /// this call started it (so the caller should stop it when done).
    pub fn ensure_running(&self) -> Result<bool, EmbeddedError> {
        if !self.pg_data.join("PG_VERSION").exists() {
            self.init()?;
        }
        if self.is_running() {
            self.create_database(DATABASE)?;
            return Ok(false);
        }
        self.prepare_dir(&self.socket_dir)?;
        let log = self.log_file.display().to_string();
        let data = self.pg_data.display().to_string();
        let output = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )?;
        if !output.status.success() {
            // Another process may have started it at the same moment.
            if self.is_running() {
                self.create_database(DATABASE)?;
                return Ok(false);
            }
            return Err(command_error(
                "starting PostgreSQL",
                &output,
                Some(&self.log_file),
            ));
        }
        self.create_database(DATABASE)?;
        Ok(true)
    }

    /// True when the cluster's postmaster is running.
    pub fn is_running(&self) -> bool {
        let data = self.pg_data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "status"])
            .is_ok_and(|out| out.status.success())
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, committed data is kept).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let data = self.pg_data.display().to_string();
        let output = self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"],
        )?;
        if !output.status.success() && self.is_running() {
            return Err(command_error("stopping PostgreSQL", &output, None));
        }
        Ok(())
    }

    /// Creates database `name` if it does not exist, optionally from a template.
    pub fn create_database(&self, name: &str) -> Result<(), EmbeddedError> {
        self.create_database_from(name, None)
    }

    /// Creates database `name` as a copy of `template` (or empty), unless it exists.
    pub fn create_database_from(
        &self,
        name: &str,
        template: Option<&str>,
    ) -> Result<(), EmbeddedError> {
        let socket = self.socket_dir.display().to_string();
        let port = PORT.to_string();
        let mut args = vec!["-h", &socket, "-p", &port, "-U", DATABASE];
        if let Some(template) = template {
            args.extend(["-T", template]);
        }
        args.push(name);
        let output = self.run("createdb", &args)?;
        if !output.status.success()
            && !String::from_utf8_lossy(&output.stderr).contains("already exists")
        {
            return Err(command_error("creating database", &output, None));
        }
        Ok(())
    }

    /// The program and arguments that stop the cluster at once (immediate shutdown), for a
    /// watchdog process that outlives its parent, such as the test kit's.
    pub fn stop_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if self.run_as_postgres {
            argv.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        argv.push(self.bin_dir.join("pg_ctl").display().to_string());
        argv.extend(["-D".to_string(), self.pg_data.display().to_string()]);
        argv.extend(["-m", "immediate", "stop"].map(String::from));
        argv
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        let folder = self.pg_data.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(folder)?;
        self.prepare_dir(&self.pg_data)?;
        let data = self.pg_data.display().to_string();
        let output = self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                DATABASE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        )?;
        if !output.status.success() {
            return Err(command_error(
                "initialising the PostgreSQL cluster",
                &output,
                None,
            ));
        }
        let settings = format!(
            "\n# Written by keycap: a private cluster reachable only through its Unix socket.\n\
             listen_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\nmax_connections = 200\n",
            self.socket_dir.display()
        );
        let conf = self.pg_data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        Ok(())
    }

    /// Creates `dir` (mode 0700) and, as root, hands it to the postgres user.
    fn prepare_dir(&self, dir: &Path) -> Result<(), EmbeddedError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if self.run_as_postgres {
            let output = Command::new(system_program("chown"))
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .output()?;
            if !output.status.success() {
                return Err(EmbeddedError::NoPostgresUser);
            }
            let reach = Command::new(system_program("runuser"))
                .args(["-u", "postgres", "--", "test", "-w"])
                .arg(dir)
                .status()?;
            if !reach.success() {
                return Err(EmbeddedError::Unreachable(dir.to_path_buf()));
            }
        }
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, EmbeddedError> {
        let path = self.bin_dir.join(program);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new(system_program("runuser"));
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.args(args).env("LC_ALL", "C").current_dir("/");
        command.stdin(std::process::Stdio::null());
        command.output().map_err(|err| EmbeddedError::Command {
            step: format!("running {program}"),
            detail: err.to_string(),
        })
    }
}

/// Where the cluster of data folder `folder` lives when keycap runs as root: in `folder` when
/// the postgres user can reach it, else (a folder under `/root`, say) in
/// `/var/lib/keycap/clusters/<name>-<hash of folder>`, the same place on every run. Says so once.
fn reachable_folder(folder: &Path) -> Result<PathBuf, EmbeddedError> {
    std::fs::create_dir_all(folder)?;
    let reachable = Command::new(system_program("runuser"))
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(folder)
        .status()
        .map_err(|err| EmbeddedError::Command {
            step: "running runuser (util-linux) to act as the postgres user".into(),
            detail: err.to_string(),
        })?
        .success();
    if reachable {
        return Ok(folder.to_path_buf());
    }
    let digest = folder
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
        });
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let elsewhere = PathBuf::from("/var/lib/keycap/clusters").join(format!("{name}-{digest:016x}"));
    std::fs::create_dir_all(&elsewhere)?;
    use std::os::unix::fs::PermissionsExt;
    for dir in ["/var/lib/keycap", "/var/lib/keycap/clusters"] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755))?;
    let note = folder.join("postgres-location.txt");
    if !note.exists() {
        eprintln!(
            "the postgres user cannot reach {}; keeping this data folder's Postgres cluster in {} instead",
            folder.display(),
            elsewhere.display()
        );
        std::fs::write(&note, format!("{}\n", elsewhere.display()))?;
    }
    Ok(elsewhere)
}

fn command_error(step: &str, output: &Output, log: Option<&Path>) -> EmbeddedError {
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    if let Some(text) = log.and_then(|log| std::fs::read_to_string(log).ok()) {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        detail.push_str(&format!(
            " (last lines of the server log: {})",
            tail.join(" | ")
        ));
    }
    EmbeddedError::Command {
        step: step.to_string(),
        detail,
    }
}

/// A system program by name: from `PATH`, else from the sbin and bin folders, where `runuser`
/// and `chown` live even when a service's `PATH` leaves them out.
fn system_program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    on_path.flatten().unwrap_or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    })
}

/// Finds the PostgreSQL server binaries: `KEYCAP_PG_BIN_DIR`, then `initdb` on `PATH`, then the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KEYCAP_PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            // Follow links (such as /usr/local/bin/initdb) to the folder with all the programs.
            let Ok(initdb) = std::fs::canonicalize(dir.join("initdb")) else {
                continue;
            };
            let Some(dir) = initdb.parent() else { continue };
            if ["pg_ctl", "createdb"]
                .iter()
                .all(|program| dir.join(program).is_file())
            {
                return Some(dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    // Reading the effective uid needs no unsafe code: /proc/self is owned by it.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
