//! Where a command left its aggregate, as an opaque token a client hands
//! back to read its own writes: the aggregate (type and id) and the
//! sequence of the command's last event.
//!
//! A read model has applied a position when its row of that aggregate is at
//! that sequence or later; a read model of another aggregate type has
//! nothing to apply. The token is the URL-safe base64 of a versioned text,
//! so clients treat it as opaque and the format can change with its version.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The position of an aggregate's event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The event's sequence in its aggregate, from 1.
    pub sequence: u64,
}

/// The token's format version, its first field.
const FORMAT: &str = "1";

/// Longest aggregate id a position names (ids are bounded at the API).
const MAX_ID: usize = 200;

/// Why a token is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a position this platform gives out")]
pub struct NotAPosition;

impl Position {
    /// Sequence `sequence` of the aggregate `aggregate_type` `aggregate_id`.
    pub fn new(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Self {
        Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!(
            "{FORMAT}\n{}\n{}\n{}",
            self.aggregate_type, self.sequence, self.aggregate_id
        );
        f.write_str(&URL_SAFE_NO_PAD.encode(text))
    }
}

impl FromStr for Position {
    type Err = NotAPosition;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        if token.is_empty() || token.len() > 4 * MAX_ID {
            return Err(NotAPosition);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| NotAPosition)?;
        let text = String::from_utf8(bytes).map_err(|_| NotAPosition)?;
        let mut fields = text.splitn(4, '\n');
        let (Some(FORMAT), Some(aggregate_type), Some(sequence), Some(aggregate_id)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(NotAPosition);
        };
        let type_ok = !aggregate_type.is_empty()
            && aggregate_type.len() <= 64
            && aggregate_type.bytes().all(|b| b.is_ascii_alphanumeric());
        let id_ok = !aggregate_id.is_empty()
            && aggregate_id.len() <= MAX_ID
            && aggregate_id.bytes().all(|b| b.is_ascii_graphic());
        // Digits only: no sign, no spaces, no leading zero.
        let sequence_ok =
            !sequence.starts_with('0') && sequence.bytes().all(|b| b.is_ascii_digit());
        if !(type_ok && id_ok && sequence_ok) {
            return Err(NotAPosition);
        }
        let sequence = sequence.parse().map_err(|_| NotAPosition)?;
        Ok(Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position {
            aggregate_type: "Order".into(),
            aggregate_id: "0190a0b0-aaaa-7bbb-8ccc-dddddddddddd".into(),
            sequence: 3,
        }
    }

    #[test]
    fn a_token_reads_back_as_its_position() {
        let token = position().to_string();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert_eq!(token.parse::<Position>(), Ok(position()));
    }

    #[test]
    fn ids_with_separators_survive() {
        let mut odd = position();
        odd.aggregate_type = "Product".into();
        odd.aggregate_id = "SKU:1\u{21}-x".into();
        assert_eq!(odd.to_string().parse::<Position>(), Ok(odd));
    }

    #[test]
    fn anything_else_is_refused() {
        let encode = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for token in [
            String::new(),
            "not base64!".into(),
            "x".repeat(1000),
            encode("2\nOrder\n3\nid"),
            encode("1\nOrder\n3"),
            encode("1\n\n3\nid"),
            encode("1\nOr der\n3\nid"),
            encode("1\nOrder\n-3\nid"),
            encode("1\nOrder\n+3\nid"),
            encode("1\nOrder\n03\nid"),
            encode("1\nOrder\n0\nid"),
            encode("1\nOrder\n99999999999999999999999\nid"),
            encode("1\nOrder\n3\n"),
            encode("1\nOrder\n3\nhas space"),
            encode(&format!("1\nOrder\n3\n{}", "i".repeat(201))),
        ] {
            assert_eq!(token.parse::<Position>(), Err(NotAPosition), "{token:?}");
        }
    }
}
