//! [`Secret`]: a credential value that cannot be printed by accident.
//!
//! `Debug` and `Display` print `<redacted>`, so a secret that slips into a log line, an error
//! message or a panic shows nothing; the bytes are zeroed when the last copy is dropped. The
//! value is reached only through [`Secret::expose`], which makes every use visible in review.

use std::fmt;

use zeroize::Zeroizing;

/// What a secret looks like wherever it is formatted.
pub const REDACTED: &str = "<redacted>";

/// A secret value (token, client secret, key material as text).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value; the caller's `String` is moved, not copied.
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The value itself, for the few places that must send it (injection, token requests).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an empty file is not a credential).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let secret = Secret::new("hunter2-value".to_string());
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert_eq!(secret.expose(), "hunter2-value");
    }

    #[test]
    fn a_panic_message_does_not_carry_it() {
        let secret = Secret::new("panic-secret-value".to_string());
        let caught = std::panic::catch_unwind(|| panic!("failed with {secret:?}"));
        let message = caught
            .unwrap_err()
            .downcast_ref::<String>()
            .cloned()
            .unwrap();
        assert!(!message.contains("panic-secret-value"), "{message}");
    }
}
