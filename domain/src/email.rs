//! Email addresses, the name by which people are known in keycap.

use std::fmt;

/// A lowercased, trimmed email address with one `@` and something on each side of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// A string that is not an email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an email address")]
pub struct BadEmail(pub String);

/// The longest address accepted, in bytes (RFC 5321's path limit less its brackets).
pub const MAX_LEN: usize = 254;

impl Email {
    /// Parses and normalises an address.
    pub fn parse(text: &str) -> Result<Email, BadEmail> {
        let email = text.trim().to_lowercase();
        let valid = match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && email.len() <= MAX_LEN
                    && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            }
            None => false,
        };
        if !valid {
            return Err(BadEmail(text.to_string()));
        }
        Ok(Email(email))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        assert_eq!(
            Email::parse(input).ok().as_ref().map(Email::as_str),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn parses_and_normalises() {
        check("Ann@Example.com ", Some("ann@example.com"));
        check("a@b", Some("a@b"));
        check("nobody", None);
        check("@example.com", None);
        check("ann@", None);
        check("a@b@c", None);
        check("a b@c", None);
        check("a@.c", None);
    }
}
