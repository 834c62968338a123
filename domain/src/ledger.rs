//! The kinds of rows in the append-only ledger (`transactions`).

use std::fmt;

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    OrgCreated,
    MemberInvited,
    /// A pending invite was cancelled: by an owner, or because its inviter stopped being one.
    InviteCancelled,
    MemberJoined,
    MemberRemoved,
    RoleChanged,
    BudgetSet,
    MasterKeyAdded,
    MasterKeyRotated,
    MasterKeyRevoked,
    KeyProvisioned,
    KeyCapChanged,
    KeyRevoked,
    KeyExpired,
    KeyRenewed,
    KeyPaused,
    Refund,
    LeaseReclaimed,
    /// A request that ended without a reported cost was charged what the upstream said it
    /// billed, instead of its reservation.
    UsageReconciled,
    /// An owner (or the command line) made a password-reset link for a member.
    PasswordResetIssued,
    /// A member set a new password through a reset link.
    PasswordResetUsed,
    /// `keycap vault rekey` sealed a master key's secret again with the newest encryption key.
    MasterKeyResealed,
}

impl LedgerKind {
    /// Every kind, for filters and validation.
    pub const ALL: [LedgerKind; 22] = [
        LedgerKind::OrgCreated,
        LedgerKind::MemberInvited,
        LedgerKind::InviteCancelled,
        LedgerKind::MemberJoined,
        LedgerKind::MemberRemoved,
        LedgerKind::RoleChanged,
        LedgerKind::BudgetSet,
        LedgerKind::MasterKeyAdded,
        LedgerKind::MasterKeyRotated,
        LedgerKind::MasterKeyRevoked,
        LedgerKind::KeyProvisioned,
        LedgerKind::KeyCapChanged,
        LedgerKind::KeyRevoked,
        LedgerKind::KeyExpired,
        LedgerKind::KeyRenewed,
        LedgerKind::KeyPaused,
        LedgerKind::Refund,
        LedgerKind::LeaseReclaimed,
        LedgerKind::UsageReconciled,
        LedgerKind::PasswordResetIssued,
        LedgerKind::PasswordResetUsed,
        LedgerKind::MasterKeyResealed,
    ];

    /// The name stored in `transactions.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::OrgCreated => "org_created",
            LedgerKind::MemberInvited => "member_invited",
            LedgerKind::InviteCancelled => "invite_cancelled",
            LedgerKind::MemberJoined => "member_joined",
            LedgerKind::MemberRemoved => "member_removed",
            LedgerKind::RoleChanged => "role_changed",
            LedgerKind::BudgetSet => "budget_set",
            LedgerKind::MasterKeyAdded => "master_key_added",
            LedgerKind::MasterKeyRotated => "master_key_rotated",
            LedgerKind::MasterKeyRevoked => "master_key_revoked",
            LedgerKind::KeyProvisioned => "key_provisioned",
            LedgerKind::KeyCapChanged => "key_cap_changed",
            LedgerKind::KeyRevoked => "key_revoked",
            LedgerKind::KeyExpired => "key_expired",
            LedgerKind::KeyRenewed => "key_renewed",
            LedgerKind::KeyPaused => "key_paused",
            LedgerKind::Refund => "refund",
            LedgerKind::LeaseReclaimed => "lease_reclaimed",
            LedgerKind::UsageReconciled => "usage_reconciled",
            LedgerKind::PasswordResetIssued => "password_reset_issued",
            LedgerKind::PasswordResetUsed => "password_reset_used",
            LedgerKind::MasterKeyResealed => "master_key_resealed",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(name: &str) -> Option<LedgerKind> {
        LedgerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for LedgerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in LedgerKind::ALL {
            assert_eq!(LedgerKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(LedgerKind::parse("nope"), None);
    }
}
