//! PostgreSQL write-ahead log positions (`pg_lsn`), written `16/B374D848`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL position: a byte offset into the log.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "0/3000148"))]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers such as 0/3000148")]
pub struct LsnError(String);

impl Lsn {
    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = LsnError;
    fn from_str(s: &str) -> Result<Self, LsnError> {
        let err = || LsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl TryFrom<String> for Lsn {
    type Error = LsnError;
    fn try_from(s: String) -> Result<Self, LsnError> {
        s.parse()
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().0, 1 << 32);
        assert!("3000148".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
    }

    #[test]
    fn distance() {
        let a: Lsn = "0/100".parse().unwrap();
        let b: Lsn = "0/180".parse().unwrap();
        assert_eq!(b.bytes_since(a), 0x80);
        assert_eq!(a.bytes_since(b), 0);
    }
}
