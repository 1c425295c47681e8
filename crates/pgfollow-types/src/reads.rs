//! The read endpoint: `DATABASE_FOLLOWER_URL`, which spreads read-only
//! connections over an app's available followers. Its settings (the lag
//! limit, whether reads may fall back to the leader) and what it last
//! did live on the app record; the API reads and sets the settings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How far behind a follower may be and still serve reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MaxLag {
    /// Commit records not yet replayed (Behind By).
    Commits(u64),
    /// Age of the oldest commit not yet replayed, in seconds.
    Seconds(u64),
}

/// The lag limit when none is set.
pub const DEFAULT_MAX_LAG: MaxLag = MaxLag::Seconds(30);

impl fmt::Display for MaxLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxLag::Commits(1) => write!(f, "1 commit"),
            MaxLag::Commits(n) => write!(f, "{n} commits"),
            MaxLag::Seconds(n) => write!(f, "{n}s"),
        }
    }
}

/// Why a lag limit could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a lag limit: give a number of commits (`1000`) or of seconds (`30s`)")]
pub struct MaxLagError(pub String);

impl FromStr for MaxLag {
    type Err = MaxLagError;

    /// `1000`, `1000 commits` → commits; `30s`, `30 s`, `30 seconds` → seconds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MaxLagError(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        let unit = t[digits.len()..].trim();
        let n: u64 = digits.parse().map_err(|_| bad())?;
        match unit {
            "" | "commit" | "commits" => Ok(MaxLag::Commits(n)),
            "s" | "sec" | "secs" | "second" | "seconds" => Ok(MaxLag::Seconds(n)),
            _ => Err(bad()),
        }
    }
}

/// The read endpoint of an app, on its app record. Catalogs written before
/// there was one load with the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadEndpointRecord {
    /// None: [`DEFAULT_MAX_LAG`].
    #[serde(default)]
    pub max_lag: Option<MaxLag>,
    /// With no follower serving, route reads to the leader instead of
    /// refusing connections.
    #[serde(default)]
    pub fallback_to_leader: bool,
    /// The host its PgBouncers run on and the port they share
    /// (`SO_REUSEPORT`), once it has them.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// One PgBouncer ("slot") per follower, by the follower's id: where it
    /// was last routed (a database id), `None` while it refuses.
    #[serde(default)]
    pub applied: BTreeMap<String, Option<String>>,
    /// The followers that served reads at the last decision (ids), and why
    /// each other follower did not.
    #[serde(default)]
    pub serving: Vec<String>,
    #[serde(default)]
    pub out: BTreeMap<String, String>,
}

impl ReadEndpointRecord {
    pub fn limit(&self) -> MaxLag {
        self.max_lag.unwrap_or(DEFAULT_MAX_LAG)
    }
}

/// `GET /v1/apps/{app}/endpoint/read`, and the answer of its `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadEndpoint {
    pub app: String,
    pub max_lag: MaxLag,
    pub fallback_to_leader: bool,
    /// Colours of the followers serving reads now.
    pub serving: Vec<String>,
    /// Colour → why it does not serve.
    pub out: BTreeMap<String, String>,
    /// Whether reads go to the leader now (no follower serves and
    /// `fallback_to_leader` is set).
    pub on_leader: bool,
}

/// `PUT /v1/apps/{app}/endpoint/read`: what to change (unset: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadEndpointChange {
    #[serde(default)]
    pub max_lag: Option<MaxLag>,
    #[serde(default)]
    pub fallback_to_leader: Option<bool>,
}

/// On a follower's `pg:info`: whether it serves `DATABASE_FOLLOWER_URL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServesReads {
    pub serves: bool,
    /// Why not.
    #[serde(default)]
    pub why: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lag_reads_commits_and_seconds() {
        for (text, want) in [
            ("1000", Some(MaxLag::Commits(1000))),
            ("1000 commits", Some(MaxLag::Commits(1000))),
            ("0", Some(MaxLag::Commits(0))),
            ("30s", Some(MaxLag::Seconds(30))),
            ("30 S", Some(MaxLag::Seconds(30))),
            ("5 seconds", Some(MaxLag::Seconds(5))),
            ("banana", None),
            ("", None),
            ("30m", None),
            ("-3", None),
            ("1.5s", None),
            ("99999999999999999999999", None),
        ] {
            assert_eq!(text.parse::<MaxLag>().ok(), want, "{text:?}");
        }
        let e = "banana".parse::<MaxLag>().unwrap_err().to_string();
        assert_eq!(
            e,
            "\"banana\" is not a lag limit: give a number of commits (`1000`) or of seconds (`30s`)"
        );
        for lag in [
            MaxLag::Commits(1000),
            MaxLag::Seconds(30),
            MaxLag::Commits(1),
        ] {
            assert_eq!(lag.to_string().parse::<MaxLag>().ok(), Some(lag));
        }
    }

    #[test]
    fn an_old_app_record_loads_with_the_defaults() {
        let r: ReadEndpointRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(r, ReadEndpointRecord::default());
        assert_eq!(r.limit(), DEFAULT_MAX_LAG);
    }
}
