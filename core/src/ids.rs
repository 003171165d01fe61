//! Validated identifiers.
//!
//! Every id that can end up in a NATS subject is a newtype that can only be built by
//! validation against `[A-Za-z0-9_-]{1,64}`. A `.`, `*`, `>` or whitespace in an id
//! would let a client publish or subscribe outside its own space, so there is no way
//! to build these types from unchecked strings.

use std::fmt;

/// Maximum length of any id.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which kind of id.
        kind: &'static str,
    },
    /// The id is longer than 64 bytes.
    #[error("{kind} is longer than {MAX_ID_LEN} characters")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
    },
    /// The id contains a character outside `[A-Za-z0-9_-]`.
    #[error("{kind} contains {found:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar {
        /// Which kind of id.
        kind: &'static str,
        /// The first offending character.
        found: char,
    },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar { kind, found });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against `[A-Za-z0-9_-]{1,64}`.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }

            /// The validated id.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// A user id (the JWT `sub`).
    UserId,
    "user id"
);
id_type!(
    /// A device of a user (one user may be connected from several devices).
    DeviceId,
    "device id"
);
id_type!(
    /// A client-chosen message id, unique per sender; the dedup key on the hub.
    ClientMsgId,
    "client message id"
);
id_type!(
    /// A group id.
    GroupId,
    "group id"
);

/// A JetStream stream sequence number (1-based; 0 means "none").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_subject_metacharacters() {
        for bad in ["a.b", "*", ">", "a b", "a\tb", "bob>", "ä", "", "a\n"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserId::parse("x".repeat(64)).is_ok());
        assert_eq!(
            UserId::parse("x".repeat(65)),
            Err(IdError::TooLong { kind: "user id" })
        );
        assert!(UserId::parse("Alice_01-x").is_ok());
    }

    proptest! {
        #[test]
        fn accepted_ids_are_safe_subject_tokens(s in ".{0,80}") {
            if let Ok(id) = UserId::parse(s.clone()) {
                prop_assert!(!id.as_str().contains(['.', '*', '>', ' ']));
                prop_assert!(id.as_str().len() <= 64 && !id.as_str().is_empty());
            }
        }
    }
}
