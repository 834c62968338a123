//! The gateway: keycap's data plane, a `pingora` reverse proxy that is OpenRouter-compatible on
//! `/api/v1/*`, swaps sub-key tokens for master keys, and meters and caps spend.
//!
//! Not built yet: this crate holds no code until the gateway issue lands. It will depend on
//! `domain`, `db` and `vault`, and never on `admin`.
