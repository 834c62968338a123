//! The command line: every subcommand and flag of `keycap`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keycap: share expensive API credentials without sharing them.
#[derive(Debug, Parser)]
#[command(name = "keycap", version, about)]
pub struct Cli {
    /// Config file (TOML); without it only defaults and the environment apply.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Data folder for the embedded Postgres and the generated encryption key.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, such as info or keycap=debug.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run keycap: the gateway, the database (embedded unless a URL is set), migrations and
    /// background jobs.
    Up(UpArgs),
    /// Run keycap against a built-in OpenRouter mock, with a seeded org and a sub-key to try.
    Demo(UpArgs),
    /// Run the gateway and its metrics listener only (no admin app, no background jobs), for
    /// running the parts apart (docs/deployment.md). Probes: GET /livez and /readyz on the
    /// gateway's listener.
    Gateway(UpArgs),
    /// Run the admin app with maintenance (expiry, monthly renewal) and budget alerts only (no
    /// gateway). Probes: GET /livez and /readyz on the admin listener.
    Admin(UpArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Run the OpenRouter stand-in alone, for tests and demos.
    MockOpenrouter(MockArgs),
    /// Manage orgs.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage members of an org.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Manage members' monthly budgets.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Manage master keys in the vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Manage sub-keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show an org's ledger and check its whole hash chain; `audit head` prints the newest
    /// hash, to keep elsewhere, and `audit verify --from HASH` checks the chain from one kept.
    Audit(AuditArgs),
    /// Manage tokens for the admin listener: metrics tokens, for Prometheus.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `keycap token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token that reads one org's usage on the admin listener's /metrics and nothing
    /// else; prints only the token, once. (Admin API tokens act as an owner: an owner makes
    /// them on /account.)
    Create {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// What the token can do: metrics.
        #[arg(long)]
        scope: String,
        /// A name for the token.
        #[arg(long, default_value = "prometheus")]
        name: String,
        /// When it stops working: a duration (90d) or a date; default never.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List an org's tokens (name, prefix, scope, who made it, status).
    List {
        /// Org id or name.
        #[arg(long)]
        org: String,
    },
    /// Revoke a token by id.
    Revoke {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The token's id, from `keycap token list`.
        id: String,
    },
}

/// `keycap up` (and `demo`, `gateway`, `admin`: each uses the addresses of the parts it runs;
/// `admin` shows the gateway's in the snippets of a new key).
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Gateway listen address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub gateway_listen: Option<String>,
    /// Admin app listen address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Metrics listen address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// `keycap mock-openrouter`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The master key the mock accepts (default: the mock's built-in key, printed at start).
    #[arg(long, env = "KEYCAP_MOCK_MASTER_KEY")]
    pub master_key: Option<String>,
}

/// `keycap org ...`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an org with its first owner; prints the org id.
    Create {
        /// The org's name.
        name: String,
        /// The first owner's email.
        #[arg(long)]
        owner: String,
    },
}

/// `keycap member ...`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a member with a role and a monthly budget in USD.
    Add {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The member's email.
        email: String,
        /// owner or user.
        #[arg(long, default_value = "user")]
        role: String,
        /// Monthly budget in USD, such as 100 or 20.50.
        #[arg(long, allow_hyphen_values = true)]
        budget: String,
    },
    /// Make a single-use link to the admin app that adds someone as a member (or, for a member
    /// added here without a password, lets them choose one); prints the link.
    Invite {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The invitee's email.
        email: String,
        /// owner or user.
        #[arg(long, default_value = "user")]
        role: String,
        /// Monthly budget in USD.
        #[arg(long, default_value = "0", allow_hyphen_values = true)]
        budget: String,
    },
    /// Make a single-use, expiring link by which a member sets a new password (members added
    /// here included); prints the link. It replaces the member's older reset links, and using
    /// it ends their sessions and admin tokens.
    ResetLink {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The member's email.
        email: String,
    },
    /// List an org's pending invites (neither accepted nor cancelled), newest first.
    Invites {
        /// Org id or name.
        #[arg(long)]
        org: String,
    },
    /// Cancel a pending invite by its id (from `keycap member invites`): its link stops
    /// working.
    CancelInvite {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The invite's id.
        id: String,
    },
    /// List an org's members with their budgets for this month.
    List {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `keycap budget ...`.
#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set a member's monthly budget in USD.
    Set {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The member's email.
        email: String,
        /// Monthly budget in USD.
        #[arg(allow_hyphen_values = true)]
        usd: String,
    },
}

/// `keycap vault ...`.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Add a master key; the secret is read from standard input, never from the command line.
    Add {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The upstream service.
        #[arg(long, default_value = "openrouter")]
        service: String,
        /// A name for the key.
        #[arg(long)]
        name: String,
    },
    /// List an org's master keys (name and last four characters only).
    List {
        /// Org id or name.
        #[arg(long)]
        org: String,
    },
    /// Replace a master key's secret in place: its sub-keys go on working, with the new secret
    /// (a running gateway switches within a second). The secret is read from standard input.
    Rotate {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The master key's id, or its name when no other active key has it.
        key: String,
    },
    /// Seal every master key (of every org) again with the newest encryption key, so older
    /// keys can be removed from the key file. One transaction per master key, with a
    /// `master_key_resealed` ledger row; run it again to resume after an interruption.
    Rekey,
    /// Revoke a master key: a running gateway refuses its sub-keys within a second.
    Revoke {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// The master key's id, or its name when no other active key has it.
        key: String,
    },
}

/// `keycap key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Provision a sub-key from a member's budget; prints only the token, once.
    Create(KeyCreateArgs),
    /// List sub-keys.
    List {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// Only this member's keys.
        #[arg(long)]
        member: Option<String>,
        /// Print JSON (money as integer nano-dollars).
        #[arg(long)]
        json: bool,
    },
    /// Set a sub-key's cap: a raise is carved from its member's budget this month, a cut is
    /// refunded to it (up to what the key carved this month); never below what it has spent.
    SetCap {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// Key id or display prefix (kc_…).
        key: String,
        /// The new cap in USD.
        #[arg(long)]
        cap: String,
    },
    /// Revoke a sub-key by id or display prefix; refunds what is unspent.
    Revoke {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// Key id or display prefix (kc_…).
        key: String,
    },
}

/// `keycap key create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// Org id or name.
    #[arg(long)]
    pub org: String,
    /// The member whose budget pays for it.
    #[arg(long)]
    pub member: String,
    /// A name for the key.
    #[arg(long)]
    pub name: String,
    /// The spending cap in USD.
    #[arg(long, allow_hyphen_values = true)]
    pub cap: String,
    /// The upstream service.
    #[arg(long, default_value = "openrouter")]
    pub service: String,
    /// Expiry: 30d, 12h, 2w, a date (2027-01-31) or an RFC 3339 time.
    #[arg(long)]
    pub expires: Option<String>,
    /// Allowed models, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Carve the cap again from each new month's budget.
    #[arg(long)]
    pub renew_monthly: bool,
    /// Requests per minute through the gateway: at most N in each minute of the clock, over
    /// every gateway (default: no limit).
    #[arg(long, value_name = "N")]
    pub rpm: Option<i32>,
}

/// `keycap audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Org id or name.
    #[arg(long, required = false)]
    pub org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
}

/// `keycap audit head` and `keycap audit verify`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest row's hash (and sequence number) of the org's chain: keep it
    /// somewhere else, to check the chain from it later.
    Head {
        /// Org id or name.
        #[arg(long)]
        org: String,
    },
    /// Check the org's chain from the row with a kept hash to the newest row; fails if no row
    /// has that hash (the ledger was rewritten up to it) or the chain breaks after it.
    Verify {
        /// Org id or name.
        #[arg(long)]
        org: String,
        /// A hash printed by `keycap audit head` (hex).
        #[arg(long, value_name = "HASH")]
        from: String,
    },
}
