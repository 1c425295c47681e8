//! The ways a user names a database: `WHITE`, `PGFOLLOW_POSTGRESQL_WHITE_URL`
//! or Heroku's `HEROKU_POSTGRESQL_WHITE_URL` (with or without `_URL`),
//! `DATABASE_URL`, the add-on name, `OTHERAPP::VAR`, or the full URL of a
//! pgfollow database.

use crate::names::{Color, COLOR_VAR_PREFIX};

/// Heroku's prefix of a colour config var, taken as pgfollow's.
pub const HEROKU_COLOR_VAR_PREFIX: &str = "HEROKU_POSTGRESQL_";

/// A parsed database reference, not yet looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseRef {
    /// A name in the app the command is about.
    Local(LocalName),
    /// `OTHERAPP::VAR`: a name in another app.
    OtherApp { app: String, name: LocalName },
    /// `postgres://user:password@host:port/db`.
    Url(String),
}

/// A name within one app, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalName {
    /// An attachment, without `_URL`: `DATABASE`, `PGFOLLOW_POSTGRESQL_WHITE`.
    Attachment(String),
    /// Anything else: an add-on name such as `postgresql-curved-12345`.
    Addon(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} does not name a database: use a colour (WHITE), a config var (DATABASE_URL), OTHERAPP::VAR or a postgres:// URL")]
pub struct DatabaseRefError(String);

impl DatabaseRef {
    pub fn parse(s: &str) -> Result<Self, DatabaseRefError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DatabaseRefError(s.to_string()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(DatabaseRef::Url(s.to_string()));
        }
        if let Some((app, name)) = s.split_once("::") {
            if app.is_empty() || name.is_empty() {
                return Err(DatabaseRefError(s.to_string()));
            }
            return Ok(DatabaseRef::OtherApp {
                app: app.to_string(),
                name: LocalName::parse(name),
            });
        }
        Ok(DatabaseRef::Local(LocalName::parse(s)))
    }
}

impl LocalName {
    /// `WHITE`, `PGFOLLOW_POSTGRESQL_WHITE_URL` and
    /// `HEROKU_POSTGRESQL_WHITE_URL` all become the attachment
    /// `PGFOLLOW_POSTGRESQL_WHITE`; `DATABASE_URL` becomes `DATABASE`.
    pub fn parse(s: &str) -> Self {
        if let Ok(color) = Color::parse(s) {
            return LocalName::Attachment(format!("{COLOR_VAR_PREFIX}{color}"));
        }
        let looks_like_var = s
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if looks_like_var {
            let base = s.strip_suffix("_URL").unwrap_or(s);
            if let Some(color) = base
                .strip_prefix(HEROKU_COLOR_VAR_PREFIX)
                .and_then(|c| Color::parse(c).ok())
            {
                return LocalName::Attachment(format!("{COLOR_VAR_PREFIX}{color}"));
            }
            return LocalName::Attachment(base.to_string());
        }
        LocalName::Addon(s.to_string())
    }
}

/// The config var of an attachment: `DATABASE` → `DATABASE_URL`.
pub fn attachment_var(attachment: &str) -> String {
    format!("{attachment}_URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(s: &str) -> DatabaseRef {
        DatabaseRef::Local(LocalName::Attachment(s.into()))
    }

    #[test]
    fn every_form_of_a_name() {
        let white = att("PGFOLLOW_POSTGRESQL_WHITE");
        assert_eq!(DatabaseRef::parse("WHITE").unwrap(), white);
        assert_eq!(DatabaseRef::parse("white").unwrap(), white);
        assert_eq!(
            DatabaseRef::parse("PGFOLLOW_POSTGRESQL_WHITE_URL").unwrap(),
            white
        );
        assert_eq!(
            DatabaseRef::parse("PGFOLLOW_POSTGRESQL_WHITE").unwrap(),
            white
        );
        // Heroku's spelling, with and without _URL, here and in another app.
        assert_eq!(
            DatabaseRef::parse("HEROKU_POSTGRESQL_WHITE_URL").unwrap(),
            white
        );
        assert_eq!(
            DatabaseRef::parse("HEROKU_POSTGRESQL_WHITE").unwrap(),
            white
        );
        assert_eq!(
            DatabaseRef::parse("sushi::HEROKU_POSTGRESQL_WHITE_URL").unwrap(),
            DatabaseRef::OtherApp {
                app: "sushi".into(),
                name: LocalName::Attachment("PGFOLLOW_POSTGRESQL_WHITE".into())
            }
        );
        // Not a colour after the prefix: an ordinary config var name.
        assert_eq!(
            DatabaseRef::parse("HEROKU_POSTGRESQL_URL").unwrap(),
            att("HEROKU_POSTGRESQL")
        );
        assert_eq!(DatabaseRef::parse("DATABASE_URL").unwrap(), att("DATABASE"));
        assert_eq!(DatabaseRef::parse("DATABASE").unwrap(), att("DATABASE"));
        assert_eq!(
            DatabaseRef::parse("postgresql-curved-1234").unwrap(),
            DatabaseRef::Local(LocalName::Addon("postgresql-curved-1234".into()))
        );
        assert_eq!(
            DatabaseRef::parse("sushi::DATABASE_URL").unwrap(),
            DatabaseRef::OtherApp {
                app: "sushi".into(),
                name: LocalName::Attachment("DATABASE".into())
            }
        );
        assert_eq!(
            DatabaseRef::parse("postgres://u:p@127.0.0.1:5432/d").unwrap(),
            DatabaseRef::Url("postgres://u:p@127.0.0.1:5432/d".into())
        );
        assert!(DatabaseRef::parse("").is_err());
        assert!(DatabaseRef::parse("::X").is_err());
        assert!(DatabaseRef::parse("app::").is_err());
    }
}
