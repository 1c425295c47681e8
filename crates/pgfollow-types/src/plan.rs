//! Plans: a tier, the resources a database gets, and a monthly price.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The four tiers. Followers and HA need more than hobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Tier {
    Hobby,
    Standard,
    Premium,
    Enterprise,
}

impl Tier {
    /// Standard, premium and enterprise databases may follow and be followed.
    pub fn supports_followers(self) -> bool {
        self != Tier::Hobby
    }

    /// (manual, daily scheduled) backups kept per database, as Heroku
    /// keeps them: hobby 2 and 7, standard 25 and 7, premium and
    /// enterprise 50 and 30.
    pub fn backups_kept(self) -> (u32, u32) {
        match self {
            Tier::Hobby => (2, 7),
            Tier::Standard => (25, 7),
            Tier::Premium | Tier::Enterprise => (50, 30),
        }
    }

    /// Days a database can be rolled back (continuous protection with
    /// pgBackRest): none on hobby, 4 standard, 7 premium, 14 enterprise.
    pub fn rollback_days(self) -> Option<u32> {
        match self {
            Tier::Hobby => None,
            Tier::Standard => Some(4),
            Tier::Premium => Some(7),
            Tier::Enterprise => Some(14),
        }
    }

    /// Premium and enterprise databases get an HA standby.
    pub fn has_ha(self) -> bool {
        matches!(self, Tier::Premium | Tier::Enterprise)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hobby => "hobby",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One plan. The resource fields become PostgreSQL settings of every
/// database on the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plan {
    /// `standard-0`, `premium-2`, ...
    pub name: String,
    pub tier: Tier,
    /// `max_connections` for the app's own connections.
    pub connection_limit: u32,
    /// `shared_buffers`, in MiB.
    pub shared_buffers_mb: u32,
    /// `work_mem`, in MiB.
    pub work_mem_mb: u32,
    /// `maintenance_work_mem`, in MiB.
    #[serde(default = "default_maintenance_work_mem")]
    pub maintenance_work_mem_mb: u32,
    /// `effective_cache_size`, in MiB.
    #[serde(default = "default_effective_cache_size")]
    pub effective_cache_size_mb: u32,
    /// Storage the plan allows, in GiB.
    pub storage_limit_gb: u32,
    /// WAL a lagging follower may hold back on its leader
    /// (`max_slot_wal_keep_size`), in MiB.
    #[serde(default = "default_slot_wal_keep")]
    pub max_slot_wal_keep_mb: u32,
    /// Whether the HA standby of this plan is synchronous.
    #[serde(default)]
    pub synchronous_standby: bool,
    /// Whether commits keep waiting for a lost synchronous standby.
    #[serde(default)]
    pub synchronous_strict: bool,
    /// Whole US dollars a month, charged pro rata.
    pub price_per_month: u32,
    /// Manual backups (`pg:backups:capture`) kept per database; the oldest
    /// beyond it is deleted. Default: the tier's ([`Tier::backups_kept`]).
    #[serde(default)]
    pub backups_kept: Option<u32>,
    /// Daily scheduled backups kept per database. Default: the tier's.
    #[serde(default)]
    pub scheduled_backups_kept: Option<u32>,
}

impl Plan {
    /// (manual, scheduled) backups kept per database.
    pub fn backup_retention(&self) -> (u32, u32) {
        let (manual, scheduled) = self.tier.backups_kept();
        (
            self.backups_kept.unwrap_or(manual),
            self.scheduled_backups_kept.unwrap_or(scheduled),
        )
    }
}

fn default_maintenance_work_mem() -> u32 {
    64
}
fn default_effective_cache_size() -> u32 {
    512
}
fn default_slot_wal_keep() -> u32 {
    1024
}

/// Backup storage beyond what a plan includes, per GB and month.
pub const BACKUP_STORAGE_USD_PER_GB_MONTH: f64 = 0.02;

/// Seconds in the month that prices are quoted for (30 days).
pub const SECONDS_PER_BILLING_MONTH: i64 = 30 * 24 * 3600;

impl Plan {
    /// Backup storage included in the plan: as much as its data storage.
    pub fn backup_storage_included_bytes(&self) -> u64 {
        u64::from(self.storage_limit_gb) << 30
    }

    /// The price of `seconds` on this plan, in US dollars.
    pub fn cost_of(&self, seconds: i64) -> f64 {
        f64::from(self.price_per_month) * seconds.max(0) as f64 / SECONDS_PER_BILLING_MONTH as f64
    }

    /// `$50/mo`, or `free`.
    pub fn price_label(&self) -> String {
        if self.price_per_month == 0 {
            "free".to_string()
        } else {
            format!("${}/mo", self.price_per_month)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan(
    name: &str,
    tier: Tier,
    connection_limit: u32,
    shared_buffers_mb: u32,
    work_mem_mb: u32,
    effective_cache_size_mb: u32,
    storage_limit_gb: u32,
    price_per_month: u32,
) -> Plan {
    Plan {
        name: name.to_string(),
        tier,
        connection_limit,
        shared_buffers_mb,
        work_mem_mb,
        maintenance_work_mem_mb: default_maintenance_work_mem(),
        effective_cache_size_mb,
        storage_limit_gb,
        max_slot_wal_keep_mb: default_slot_wal_keep(),
        synchronous_standby: false,
        synchronous_strict: false,
        price_per_month,
        backups_kept: Some(tier.backups_kept().0),
        scheduled_backups_kept: Some(tier.backups_kept().1),
    }
}

/// The plans pgfollow knows before an operator adds any.
pub fn builtin_plans() -> Vec<Plan> {
    use Tier::*;
    let mut enterprise = plan("enterprise-2", Enterprise, 400, 512, 8, 2048, 256, 1200);
    enterprise.synchronous_standby = true;
    enterprise.max_slot_wal_keep_mb = 4096;
    vec![
        plan("hobby-dev", Hobby, 20, 32, 4, 128, 1, 0),
        plan("hobby-basic", Hobby, 20, 32, 4, 128, 10, 9),
        plan("standard-0", Standard, 120, 128, 4, 512, 64, 50),
        plan("standard-2", Standard, 400, 512, 8, 2048, 256, 200),
        plan("premium-0", Premium, 120, 128, 4, 512, 64, 200),
        plan("premium-2", Premium, 400, 512, 8, 2048, 256, 350),
        enterprise,
    ]
}

/// An operator's plan file: plans to add (or to replace built-ins of the
/// same name), or with `replace = true` the whole list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default)]
    pub replace: bool,
    #[serde(default, rename = "plan")]
    pub plans: Vec<Plan>,
}

/// The plans in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCatalog {
    plans: Vec<Plan>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan {0:?} is listed twice in the plan file")]
    Duplicate(String),
    #[error("plan {name:?}: {what}")]
    Invalid { name: String, what: &'static str },
    #[error("the plan file replaces the built-in plans but lists none")]
    Empty,
}

impl Default for PlanCatalog {
    fn default() -> Self {
        Self {
            plans: builtin_plans(),
        }
    }
}

impl PlanCatalog {
    /// The built-in plans changed by an operator's file.
    pub fn with_file(file: PlanFile) -> Result<Self, PlanError> {
        for (i, p) in file.plans.iter().enumerate() {
            if file.plans[..i].iter().any(|q| q.name == p.name) {
                return Err(PlanError::Duplicate(p.name.clone()));
            }
            check_plan(p)?;
        }
        if file.replace {
            if file.plans.is_empty() {
                return Err(PlanError::Empty);
            }
            return Ok(Self { plans: file.plans });
        }
        let mut plans = builtin_plans();
        for p in file.plans {
            match plans.iter_mut().find(|q| q.name == p.name) {
                Some(q) => *q = p,
                None => plans.push(p),
            }
        }
        Ok(Self { plans })
    }

    /// The plan `name`, also spelled `heroku-postgresql:NAME` or
    /// `pgfollow-postgresql:NAME` (the add-on service's prefix).
    pub fn get(&self, name: &str) -> Option<&Plan> {
        let name = plan_name(name);
        self.plans.iter().find(|p| p.name == name)
    }

    pub fn all(&self) -> &[Plan] {
        &self.plans
    }
}

/// Add-on service prefixes a plan may be written with, as on Heroku
/// (`addons:create heroku-postgresql:standard-0`).
pub const PLAN_PREFIXES: [&str; 2] = ["heroku-postgresql:", "pgfollow-postgresql:"];

/// A plan's name without its service prefix: `heroku-postgresql:standard-0`
/// and `pgfollow-postgresql:standard-0` are `standard-0`.
pub fn plan_name(spelled: &str) -> &str {
    let spelled = spelled.trim();
    PLAN_PREFIXES
        .iter()
        .find_map(|p| spelled.strip_prefix(p))
        .unwrap_or(spelled)
}

fn check_plan(p: &Plan) -> Result<(), PlanError> {
    let invalid = |what| PlanError::Invalid {
        name: p.name.clone(),
        what,
    };
    let name_ok = !p.name.is_empty()
        && p.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(invalid("names use lowercase letters, digits and dashes"));
    }
    if p.connection_limit < 5 {
        return Err(invalid("connection_limit must be at least 5"));
    }
    if p.shared_buffers_mb < 1 || p.work_mem_mb < 1 || p.storage_limit_gb < 1 {
        return Err(invalid(
            "shared_buffers_mb, work_mem_mb and storage_limit_gb must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(name: &str) -> Plan {
        plan(name, Tier::Standard, 50, 64, 4, 256, 20, 30)
    }

    #[test]
    fn backup_retention_per_plan() {
        let c = PlanCatalog::default();
        assert_eq!(c.get("hobby-dev").unwrap().backup_retention(), (2, 7));
        assert_eq!(c.get("standard-0").unwrap().backup_retention(), (25, 7));
        assert_eq!(c.get("premium-0").unwrap().backup_retention(), (50, 30));
        let mut p = extra("standard-9");
        p.backups_kept = None;
        p.scheduled_backups_kept = Some(3);
        assert_eq!(p.backup_retention(), (25, 3));
    }

    #[test]
    fn builtins_cover_every_tier() {
        let c = PlanCatalog::default();
        for t in [Tier::Hobby, Tier::Standard, Tier::Premium, Tier::Enterprise] {
            assert!(c.all().iter().any(|p| p.tier == t), "{t}");
        }
        assert_eq!(c.get("standard-0").unwrap().price_per_month, 50);
        assert!(c.get("standard-9").is_none());
    }

    #[test]
    fn heroku_spellings_of_a_plan() {
        let c = PlanCatalog::default();
        for spelled in [
            "heroku-postgresql:standard-0",
            "pgfollow-postgresql:standard-0",
            " standard-0 ",
        ] {
            assert_eq!(c.get(spelled).map(|p| p.name.as_str()), Some("standard-0"));
        }
        assert_eq!(plan_name("heroku-postgresql:premium-2"), "premium-2");
        assert!(c.get("heroku-postgresql:").is_none());
        assert!(c.get("heroku-redis:standard-0").is_none());
        assert!(c
            .get("heroku-postgresql:heroku-postgresql:standard-0")
            .is_none());
    }

    #[test]
    fn a_file_extends_or_replaces() {
        let mut changed = extra("standard-0");
        changed.price_per_month = 70;
        let c = PlanCatalog::with_file(PlanFile {
            replace: false,
            plans: vec![extra("standard-1"), changed],
        })
        .unwrap();
        assert_eq!(c.all().len(), builtin_plans().len() + 1);
        assert_eq!(c.get("standard-0").unwrap().price_per_month, 70);

        let c = PlanCatalog::with_file(PlanFile {
            replace: true,
            plans: vec![extra("standard-1")],
        })
        .unwrap();
        assert_eq!(c.all().len(), 1);
        assert!(c.get("hobby-dev").is_none());
    }

    #[test]
    fn bad_files_are_refused() {
        let dup = PlanFile {
            replace: false,
            plans: vec![extra("a"), extra("a")],
        };
        assert_eq!(
            PlanCatalog::with_file(dup),
            Err(PlanError::Duplicate("a".into()))
        );
        let mut bad = extra("B");
        assert!(PlanCatalog::with_file(PlanFile {
            replace: false,
            plans: vec![bad.clone()]
        })
        .is_err());
        bad.name = "ok".into();
        bad.connection_limit = 1;
        assert!(PlanCatalog::with_file(PlanFile {
            replace: false,
            plans: vec![bad]
        })
        .is_err());
        assert_eq!(
            PlanCatalog::with_file(PlanFile {
                replace: true,
                plans: vec![]
            }),
            Err(PlanError::Empty)
        );
    }

    #[test]
    fn pro_rata() {
        let p = extra("x");
        assert!((p.cost_of(SECONDS_PER_BILLING_MONTH) - 30.0).abs() < 1e-9);
        assert!((p.cost_of(SECONDS_PER_BILLING_MONTH / 2) - 15.0).abs() < 1e-9);
        assert_eq!(p.cost_of(-5), 0.0);
    }
}
