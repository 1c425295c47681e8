//! Real drivers through `DATABASE_URL` with named, protocol-level prepared
//! statements, each with more clients than the endpoint has server
//! connections (a plan with a connection limit of 8: a pool of 8), under
//! load and across `pg:changeover` and `pg:promote`, where PgBouncer
//! prepares the statements again on the new server: tokio-postgres,
//! psycopg 3 (`prepare_threshold=0`) and `pgbench -M prepared`, all at
//! once. 0 errors, and no acknowledged insert lost in the changeover.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pgfollow_testkit::drivers::{
    driver_rows, summary, LoadReport, Pgbench, PgbenchReport, PreparedLoad, PsycopgLoad,
    DRIVER_TABLE_SQL,
};

use crate::common::*;

const PLAN_FILE: &str = r#"
[[plan]]
name = "standard-8"
tier = "standard"
connection_limit = 8
shared_buffers_mb = 32
work_mem_mb = 4
storage_limit_gb = 10
price_per_month = 8
"#;
/// The endpoint's pool: the plan's connection limit.
const POOL: usize = 8;
const TOKIO_CLIENTS: usize = 12;
const PSYCOPG_CLIENTS: usize = 12;
const PGBENCH_CLIENTS: usize = 10;
const _: () = assert!(TOKIO_CLIENTS > POOL && PSYCOPG_CLIENTS > POOL && PGBENCH_CLIENTS > POOL);
const TABLE: &str = "drv";
/// How long each phase's psycopg and pgbench runs last.
const PHASE: Duration = Duration::from_secs(8);

/// Everything that ran through `DATABASE_URL` in one phase.
struct Phase {
    tokio: PreparedLoad,
    psycopg: PsycopgLoad,
    pgbench: Pgbench,
    started: Instant,
}

struct PhaseReport {
    tokio: LoadReport,
    psycopg: LoadReport,
    pgbench: PgbenchReport,
}

impl Phase {
    /// Starts the three drivers; client ids start at `first_client` (tokio)
    /// and `first_client + 100` (psycopg).
    fn start(url: &str, first_client: i32) -> Phase {
        let mut cfg: tokio_postgres::Config = url.parse().unwrap();
        cfg.connect_timeout(Duration::from_secs(10));
        let tokio = PreparedLoad::start(
            cfg,
            TABLE,
            TOKIO_CLIENTS,
            first_client,
            PHASE + Duration::from_secs(30),
        )
        .unwrap();
        let psycopg =
            PsycopgLoad::start(url, &[], TABLE, PSYCOPG_CLIENTS, first_client + 100, PHASE)
                .unwrap();
        let secs = u32::try_from(PHASE.as_secs()).unwrap();
        let pgbench =
            Pgbench::start(Path::new("pgbench"), url, &[], PGBENCH_CLIENTS, secs).unwrap();
        tokio.wait_for(100, Duration::from_secs(30)).unwrap();
        Phase {
            tokio,
            psycopg,
            pgbench,
            started: Instant::now(),
        }
    }

    /// Waits for the psycopg and pgbench runs to end, then stops tokio's.
    fn finish(self) -> PhaseReport {
        let psycopg = self.psycopg.finish().unwrap();
        let pgbench = self.pgbench.finish().unwrap();
        let tokio = self.tokio.finish();
        eprintln!(
            "{}\n{}\npgbench -M prepared: {} clients, {} transactions, {} failed, {} aborted ({:?} after the first commits)",
            summary("tokio-postgres", &tokio),
            summary("psycopg", &psycopg),
            pgbench.clients,
            pgbench.processed,
            pgbench.failed,
            pgbench.aborted.len(),
            self.started.elapsed()
        );
        PhaseReport {
            tokio,
            psycopg,
            pgbench,
        }
    }
}

impl PhaseReport {
    fn assert_no_errors(&self) {
        assert_eq!(
            self.tokio.errors, 0,
            "tokio-postgres errors: {:?}",
            self.tokio.first_errors
        );
        assert_eq!(
            self.psycopg.errors, 0,
            "psycopg errors: {:?}",
            self.psycopg.first_errors
        );
        let b = &self.pgbench;
        assert!(
            b.exit_ok && b.failed == 0 && b.aborted.is_empty(),
            "pgbench saw errors:\n{}",
            b.output
        );
        assert!(self.tokio.transactions > 0 && self.psycopg.transactions > 0);
        assert!(b.processed > 0, "{}", b.output);
    }

    fn acked(&self) -> BTreeSet<(i32, i32)> {
        self.tokio
            .acked
            .union(&self.psycopg.acked)
            .copied()
            .collect()
    }
}

/// The most server connections the endpoint held at once on the database
/// `db`, sampled `n` times: the app role's client backends there.
fn max_server_connections(s: &Server, db: &str, n: usize) -> usize {
    let sql = "select count(*) from pg_stat_activity where backend_type = 'client backend' \
               and usename <> 'postgres'";
    let dir = cluster_dir_of(s, "sushi", db);
    (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            superuser_sql_at(&dir, sql)
                .trim()
                .parse()
                .unwrap_or(usize::MAX)
        })
        .max()
        .unwrap_or(0)
}

/// Rows of the clients `range` in `rows`.
fn of_clients(rows: &BTreeSet<(i32, i32)>, range: std::ops::Range<i32>) -> usize {
    rows.iter().filter(|(c, _)| range.contains(c)).count()
}

fn history_count(url: &str) -> u64 {
    psql_url(url, "select count(*) from pgbench_history")
        .ok()
        .stdout
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn drivers_with_prepared_statements_through_database_url_across_changeover_and_promote() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.toml");
    std::fs::write(&plans, PLAN_FILE).unwrap();
    let s = Server::start_with(bin(), &["--plans", plans.to_str().unwrap()]).unwrap();
    app_with_database(&s, "sushi", "standard-8");
    assert!(
        s.log().contains("app endpoints use PgBouncer 1."),
        "serve did not say which PgBouncer it uses:\n{}",
        s.log()
    );
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    psql_url(&white, &DRIVER_TABLE_SQL.replace("{table}", TABLE)).ok();
    Pgbench::init(Path::new("pgbench"), &white, &[]).unwrap();
    add_follower(&s, "sushi", "standard-8", "WHITE");
    wait_available(&s, "sushi");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");

    // Phase 1: a changeover to the follower CHARCOAL under the three loads.
    let phase = Phase::start(&main, 1);
    let busy = max_server_connections(&s, "WHITE", 5);
    assert!(
        (1..=POOL).contains(&busy),
        "{busy} server connections on WHITE for a pool of {POOL}"
    );
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    eprintln!("{}", out.stdout);
    let history_before = history_count(&white);
    let report = phase.finish();
    report.assert_no_errors();
    // Nothing acknowledged is missing on the new primary, and every driver
    // wrote there after the changeover (WHITE took nothing after it).
    let on_new = driver_rows(&charcoal, TABLE).unwrap();
    let on_old = driver_rows(&white, TABLE).unwrap();
    let missing: Vec<_> = report.acked().difference(&on_new).copied().collect();
    assert!(
        missing.is_empty(),
        "acknowledged, missing on CHARCOAL: {missing:?}"
    );
    let after: BTreeSet<_> = on_new.difference(&on_old).copied().collect();
    assert!(
        of_clients(&after, 1..100) > 0,
        "no tokio-postgres write after the changeover"
    );
    assert!(
        of_clients(&after, 101..200) > 0,
        "no psycopg write after the changeover"
    );
    assert!(
        history_count(&charcoal) > history_before,
        "no pgbench transaction on CHARCOAL after the changeover"
    );
    assert_eq!(
        history_count(&white),
        history_before,
        "WHITE took pgbench writes after the changeover"
    );

    // Phase 2: pg:promote WHITE (a writable fork now) back behind
    // DATABASE_URL under new loads.
    wait_available(&s, "sushi");
    let phase = Phase::start(&main, 1001);
    let out = s.cli(&["pg:promote", "WHITE", "--app", "sushi"]).ok();
    eprintln!("{}", out.stdout);
    assert!(out.stdout.contains("now routes to WHITE"), "{}", out.stdout);
    let report = phase.finish();
    report.assert_no_errors();
    let on_white = driver_rows(&white, TABLE).unwrap();
    let on_charcoal = driver_rows(&charcoal, TABLE).unwrap();
    for (name, range) in [("tokio-postgres", 1001..1100), ("psycopg", 1101..1200)] {
        assert!(
            of_clients(&on_charcoal, range.clone()) > 0 && of_clients(&on_white, range) > 0,
            "{name} did not write to both databases (before and after the promote)"
        );
    }
    let both: BTreeSet<_> = on_white.union(&on_charcoal).copied().collect();
    let lost: Vec<_> = report.acked().difference(&both).copied().collect();
    assert!(
        lost.is_empty(),
        "acknowledged, in neither database: {lost:?}"
    );
}
