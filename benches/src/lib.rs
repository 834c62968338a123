//! Criterion benches of keycap's hot paths; see benches/benches/.
