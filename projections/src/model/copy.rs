//! Bulk loading rows with `COPY ... FROM STDIN` in PostgreSQL's text format:
//! the rebuild writes a whole read model this way, several times faster than
//! through `INSERT` statements.

use std::io::Write;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::ReadModel;

/// Rows in `COPY` text format: columns separated by tabs, rows ended by a
/// newline, `\N` for NULL, and backslash escapes for the characters that
/// would otherwise end a column or a row.
#[derive(Debug, Default)]
pub struct CopyText {
    buffer: Vec<u8>,
    /// Whether the next column starts a row (and needs no separator).
    row_start: bool,
}

impl CopyText {
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            row_start: true,
        }
    }

    fn separate(&mut self) {
        if !self.row_start {
            self.buffer.push(b'\t');
        }
        self.row_start = false;
    }

    fn escaped(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match byte {
                b'\\' => self.buffer.extend_from_slice(b"\\\\"),
                b'\n' => self.buffer.extend_from_slice(b"\\n"),
                b'\r' => self.buffer.extend_from_slice(b"\\r"),
                b'\t' => self.buffer.extend_from_slice(b"\\t"),
                other => self.buffer.push(other),
            }
        }
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.separate();
        self.escaped(value.as_bytes());
        self
    }

    pub fn optional_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => {
                self.separate();
                self.buffer.extend_from_slice(b"\\N");
                self
            }
        }
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.separate();
        // Writing into a Vec cannot fail.
        let _ = write!(self.buffer, "{value}");
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.separate();
        self.buffer
            .extend_from_slice(if value { b"t" } else { b"f" });
        self
    }

    pub fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.separate();
        self.buffer.extend_from_slice(
            value
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        self
    }

    /// A `timestamptz`, to the microsecond PostgreSQL keeps, written digit by
    /// digit: chrono's formatter would cost more than the rest of the row.
    pub fn time(&mut self, value: DateTime<Utc>) -> &mut Self {
        use chrono::{Datelike, Timelike};
        self.separate();
        let year = value.year();
        if !(0..=9999).contains(&year) {
            let _ = write!(self.buffer, "{}", value.format("%Y-%m-%d %H:%M:%S%.6f+00"));
            return self;
        }
        let parts = [
            (b'-', year.unsigned_abs(), 4),
            (b'-', value.month(), 2),
            (b' ', value.day(), 2),
            (b':', value.hour(), 2),
            (b':', value.minute(), 2),
            (b'.', value.second(), 2),
            (b'+', value.nanosecond() % 1_000_000_000 / 1_000, 6),
        ];
        for (after, number, width) in parts {
            for place in (0..width).rev() {
                self.buffer
                    .push(b'0' + (number / 10u32.pow(place) % 10) as u8);
            }
            self.buffer.push(after);
        }
        self.buffer.extend_from_slice(b"00");
        self
    }

    /// A `json` or `jsonb` column holding `value` serialized.
    pub fn json(&mut self, value: &impl serde::Serialize) -> serde_json::Result<&mut Self> {
        let text = serde_json::to_vec(value)?;
        self.separate();
        self.escaped(&text);
        Ok(self)
    }

    /// A JSON column that may be `NULL`.
    pub fn optional_json(
        &mut self,
        value: Option<&impl serde::Serialize>,
    ) -> serde_json::Result<&mut Self> {
        match value {
            Some(value) => self.json(value),
            None => {
                self.separate();
                self.buffer.extend_from_slice(b"\\N");
                Ok(self)
            }
        }
    }

    /// Ends the row; the next column starts the next one.
    pub fn end_row(&mut self) {
        self.buffer.push(b'\n');
        self.row_start = true;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer
    }
}

/// Appends `rows` to `table` with one `COPY`. The table must not hold any of
/// them yet: unlike [`ReadModel::store`], this does not replace rows.
pub async fn copy_rows<M: ReadModel>(
    connection: &mut PgConnection,
    table: &str,
    rows: &[&M::Row],
) -> sqlx::Result<u64> {
    let mut copy = connection
        .copy_in_raw(&format!("COPY {table} ({}) FROM STDIN", M::COLUMNS))
        .await?;
    let mut text = CopyText::new();
    for chunk in rows.chunks(COPY_CHUNK) {
        for row in chunk {
            if let Err(error) = M::copy_row(row, &mut text) {
                copy.abort(error.to_string()).await?;
                return Err(sqlx::Error::Encode(Box::new(error)));
            }
            text.end_row();
        }
        copy.send(text.as_bytes()).await?;
        text = CopyText::new();
    }
    copy.finish().await
}

/// Rows per message sent.
const COPY_CHUNK: usize = 2_000;

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn columns_are_tab_separated_and_escaped() {
        let mut text = CopyText::new();
        text.text("a\tb\\c\nd")
            .optional_text(None)
            .int(-42)
            .uuid(Uuid::nil());
        text.json(&serde_json::json!({"q": "say \"hi\"\n"}))
            .unwrap();
        text.end_row();
        text.time(Utc.timestamp_opt(1_800_000_000, 123_456_000).unwrap());
        text.end_row();

        assert_eq!(
            String::from_utf8(text.as_bytes().to_vec()).unwrap(),
            "a\\tb\\\\c\\nd\t\\N\t-42\t00000000-0000-0000-0000-000000000000\t\
             {\"q\":\"say \\\\\"hi\\\\\"\\\\n\"}\n\
             2027-01-15 08:00:00.123456+00\n"
        );
    }
}
