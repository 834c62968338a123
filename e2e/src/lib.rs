//! Browser tests of the admin app (fantoccini against Debian's chromium-driver), run only when
//! `E2E=1`.
//!
//! Not built yet: there are no pages to drive until the admin issue lands.
