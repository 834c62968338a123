//! Pure types and rules that every other keycap crate shares.
//!
//! `domain` owns money ([`Money`], integer nano-dollars), the monthly budget arithmetic
//! ([`budget`]), sub-key tokens ([`token`]), roles, ledger event kinds ([`ledger`]), the
//! per-provider service adapters ([`services`]) and the shape of a sealed secret ([`Sealed`]),
//! which `vault` makes and `db` stores.
//!
//! It does no I/O and no async, and depends on no other keycap crate, so every rule here is
//! testable with plain unit tests.

pub mod budget;
pub mod email;
pub mod expiry;
pub mod ledger;
pub mod money;
pub mod role;
pub mod sealed;
pub mod services;
pub mod token;

pub use budget::{BudgetError, CapChange, MonthWindow, MonthlyBudget};
pub use email::{BadEmail, Email};
pub use ledger::LedgerKind;
pub use money::{Money, MoneyError};
pub use role::Role;
pub use sealed::Sealed;
pub use token::{ApiKeyToken, TokenError};
