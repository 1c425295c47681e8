//! Validated names: apps, database colours and config var names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid app name {0:?}: use 3 to 30 characters, lowercase letters, digits and dashes, starting with a letter")]
    App(String),
    #[error("invalid config var name {0:?}: use letters, digits and underscores, not starting with a digit")]
    ConfigVar(String),
    #[error("unknown colour {0:?}")]
    Color(String),
}

/// The name of an app: 3–30 of `[a-z0-9-]`, starting with a letter, no
/// trailing or doubled dash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct AppName(String);

impl AppName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = (3..=30).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && !s.contains("--")
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::App(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AppName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<AppName> for String {
    fn from(a: AppName) -> String {
        a.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a config var name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_config_var(name: &str) -> Result<(), NameError> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NameError::ConfigVar(name.to_string()))
    }
}

/// The colours databases are named by, in the order they are handed out.
pub const COLORS: &[&str] = &[
    "WHITE", "CHARCOAL", "AMBER", "AQUA", "BLUE", "BRONZE", "BROWN", "COBALT", "COPPER", "CRIMSON",
    "CYAN", "GOLD", "GRAY", "GREEN", "IVORY", "JADE", "LAVENDER", "MAROON", "MAUVE", "NAVY",
    "OLIVE", "ONYX", "ORANGE", "PINK", "PUCE", "PURPLE", "RED", "ROSE", "SILVER", "TEAL", "TOPAZ",
    "VIOLET", "YELLOW", "BLACK",
];

/// A database's colour, unique within the app that owns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct Color(String);

impl Color {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let upper = s.to_ascii_uppercase();
        if COLORS.contains(&upper.as_str()) {
            Ok(Self(upper))
        } else {
            Err(NameError::Color(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first colour not in `taken`, in [`COLORS`] order; after the list
    /// runs out, `COLOR_2`, `COLOR_3`… are not used: callers refuse instead.
    pub fn first_free<'a>(taken: impl IntoIterator<Item = &'a Color> + Clone) -> Option<Color> {
        COLORS
            .iter()
            .find(|c| !taken.clone().into_iter().any(|t| t.0 == **c))
            .map(|c| Color(c.to_string()))
    }

    /// The config var an app sees this database under: `PGFOLLOW_POSTGRESQL_<COLOR>_URL`.
    pub fn config_var(&self) -> String {
        format!("{COLOR_VAR_PREFIX}{}_URL", self.0)
    }
}

/// Prefix of the colour config vars.
pub const COLOR_VAR_PREFIX: &str = "PGFOLLOW_POSTGRESQL_";

impl TryFrom<String> for Color {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<Color> for String {
    fn from(c: Color) -> String {
        c.0
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for good in ["sushi", "my-app-2", "abc"] {
            assert!(AppName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Sushi",
            "2fast",
            "a_b",
            "end-",
            "a--b",
            &"x".repeat(31),
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn colours_are_handed_out_in_order() {
        let white = Color::parse("white").unwrap();
        assert_eq!(white.as_str(), "WHITE");
        assert_eq!(white.config_var(), "PGFOLLOW_POSTGRESQL_WHITE_URL");
        assert_eq!(
            Color::first_free(std::slice::from_ref(&white))
                .unwrap()
                .as_str(),
            "CHARCOAL"
        );
        assert_eq!(Color::first_free(&[]).unwrap(), white);
        assert!(Color::parse("PLAID").is_err());
    }

    #[test]
    fn config_var_names() {
        assert!(check_config_var("DATABASE_URL").is_ok());
        assert!(check_config_var("_x1").is_ok());
        assert!(check_config_var("1X").is_err());
        assert!(check_config_var("A-B").is_err());
        assert!(check_config_var("").is_err());
    }
}
