//! Formats.

use super::*;

pub struct FormatRow {
    pub name: String,
    pub prefix: String,
    pub alphabet: String,
    pub body_length: i32,
    pub checksum: String,
    pub recoverable: bool,
}

/// Read as the caller (formats are readable by everyone), with the pinned search_path.
pub fn formats() -> Vec<FormatRow> {
    spi(Spi::connect(|c| {
        let mut rows = Vec::new();
        for row in c.select(
            "SELECT name, prefix, alphabet, body_length, checksum, recoverable
               FROM apikey.formats ORDER BY name",
            None,
            &[],
        )? {
            rows.push(FormatRow {
                name: col(&row, "name")?.unwrap_or_default(),
                prefix: col(&row, "prefix")?.unwrap_or_default(),
                alphabet: col(&row, "alphabet")?.unwrap_or_default(),
                body_length: col(&row, "body_length")?.unwrap_or_default(),
                checksum: col(&row, "checksum")?.unwrap_or_default(),
                recoverable: col(&row, "recoverable")?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(rows)
    }))
}

pub fn insert_format(f: &FormatRow, description: Option<&str>) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.formats (name, prefix, alphabet, body_length, checksum, recoverable, description)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            None,
            &[
                f.name.clone().into(),
                f.prefix.clone().into(),
                f.alphabet.clone().into(),
                f.body_length.into(),
                f.checksum.clone().into(),
                f.recoverable.into(),
                description.into(),
            ],
        )
        .map(|_| ())
    }))
}

pub fn set_format_recoverable(name: &str, recoverable: bool) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "UPDATE apikey.formats SET recoverable = $2 WHERE name OPERATOR(pg_catalog.=) $1",
            None,
            &[name.into(), recoverable.into()],
        )
        .map(|_| ())
    }))
}
