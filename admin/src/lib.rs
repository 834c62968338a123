//! The admin app: keycap's control plane, an `axum` web app with server-rendered pages and a
//! JSON API.
//!
//! Not built yet: this crate holds no code until the admin issue lands. It will depend on
//! `domain`, `db` and `vault`, and never on `gateway`. Until then, the `keycap` command line's
//! admin verbs do everything the pages will.
