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
#[serde(from = "ReadEndpointWire")]
pub struct ReadEndpointRecord {
    /// None: [`DEFAULT_MAX_LAG`].
    pub max_lag: Option<MaxLag>,
    /// With no follower serving, route reads to the leader instead of
    /// refusing connections.
    pub fallback_to_leader: bool,
    /// Where its PgBouncers run: one place on the host of each of the app's
    /// endpoints, in the order `DATABASE_FOLLOWER_URL` lists them.
    pub places: Vec<ReadPlace>,
    /// The followers that served reads at the last decision (ids), and why
    /// each other follower did not.
    pub serving: Vec<String>,
    pub out: BTreeMap<String, String>,
    /// Of the serving ones, those that serve with no fresh measurement
    /// (their leader does not answer), and why.
    pub unmeasured: BTreeMap<String, String>,
}

/// The read endpoint on one host: its PgBouncers share one port there
/// (`SO_REUSEPORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPlace {
    pub host: String,
    pub port: u16,
    /// One PgBouncer ("slot") per follower, by the follower's id: where it
    /// was last routed (a database id), `None` while it refuses.
    #[serde(default)]
    pub applied: BTreeMap<String, Option<String>>,
}

/// [`ReadEndpointRecord`] as catalogs hold it, also those written while the
/// read endpoint had one host (`host`, `port` and `applied` beside the
/// rest), which load as its only place.
#[derive(Deserialize)]
struct ReadEndpointWire {
    #[serde(default)]
    max_lag: Option<MaxLag>,
    #[serde(default)]
    fallback_to_leader: bool,
    #[serde(default)]
    places: Vec<ReadPlace>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    applied: BTreeMap<String, Option<String>>,
    #[serde(default)]
    serving: Vec<String>,
    #[serde(default)]
    out: BTreeMap<String, String>,
    #[serde(default)]
    unmeasured: BTreeMap<String, String>,
}

impl From<ReadEndpointWire> for ReadEndpointRecord {
    fn from(w: ReadEndpointWire) -> Self {
        let mut places = w.places;
        if let (true, Some(host), Some(port)) = (places.is_empty(), w.host, w.port) {
            places.push(ReadPlace {
                host,
                port,
                applied: w.applied,
            });
        }
        Self {
            max_lag: w.max_lag,
            fallback_to_leader: w.fallback_to_leader,
            places,
            serving: w.serving,
            out: w.out,
            unmeasured: w.unmeasured,
        }
    }
}

impl ReadEndpointRecord {
    pub fn limit(&self) -> MaxLag {
        self.max_lag.unwrap_or(DEFAULT_MAX_LAG)
    }

    /// Its place on `host`, if it has one.
    pub fn place_on(&self, host: &str) -> Option<&ReadPlace> {
        self.places.iter().find(|p| p.host == host)
    }

    /// Whether some slot has been started somewhere.
    pub fn has_slots(&self) -> bool {
        self.places.iter().any(|p| !p.applied.is_empty())
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
    /// Why not; or, when it serves without a fresh measurement, why.
    #[serde(default)]
    pub why: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_of_one_host_loads_as_one_place_and_is_written_as_places() {
        let old = r#"{"max_lag":{"commits":1000},"host":"local","port":15893,
            "applied":{"db-a":"db-a","db-b":null},"serving":["db-a"],"out":{"db-b":"preparing"}}"#;
        let rec: ReadEndpointRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.max_lag, Some(MaxLag::Commits(1000)));
        assert_eq!(
            rec.places,
            vec![ReadPlace {
                host: "local".into(),
                port: 15893,
                applied: [("db-a".into(), Some("db-a".into())), ("db-b".into(), None)].into(),
            }]
        );
        assert!(rec.has_slots());
        let written = serde_json::to_value(&rec).unwrap();
        assert!(written.get("host").is_none(), "{written}");
        let again: ReadEndpointRecord = serde_json::from_value(written).unwrap();
        assert_eq!(again, rec);
        // Never given a port: no place.
        let none: ReadEndpointRecord = serde_json::from_str(r#"{"host":"local"}"#).unwrap();
        assert!(none.places.is_empty() && !none.has_slots());
    }

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
