//! HTTP-level tests of the admin app: the app runs in process on 127.0.0.1:0 against a real
//! Postgres database and is driven over real HTTP with a cookie-keeping client.
