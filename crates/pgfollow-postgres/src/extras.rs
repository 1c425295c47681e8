//! Read-only reports on a running cluster, for `pg:locks`, `pg:blocking`,
//! `pg:outliers`, `pg:bloat`, `pg:vacuum-stats`, `pg:index-usage` and the
//! checks of `pg:diagnose`: one SQL query per [`ExtrasReport`], run as the
//! superuser in the app's database with a statement timeout, every value
//! read as PostgreSQL prints it (the simple query protocol), so a report is
//! a plain table of text. Judging the numbers is the control plane's work.

use pgfollow_types::api::{ExtrasReport, ExtrasTable};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::cluster::Cluster;
use crate::error::PgError;

/// How long one report may run.
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

/// Client sessions of the asking database, other than the agent's own.
const SESSIONS: &str = "a.datname = current_database() AND a.backend_type = 'client backend' \
     AND a.pid <> pg_backend_pid()";

/// A query's text on one line, at most 200 characters.
fn one_line(column: &str) -> String {
    format!("left(regexp_replace({column}, '\\s+', ' ', 'g'), 200)")
}

/// User relations: not in the system schemas.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

/// The SQL of `report`.
pub fn report_sql(report: ExtrasReport) -> String {
    match report {
        ExtrasReport::Locks => format!(
            "SELECT a.pid, l.locktype, coalesce(n.nspname || '.' || c.relname, '') AS relation, \
             l.mode, l.granted, \
             to_char(now() - coalesce(a.xact_start, a.query_start), 'HH24:MI:SS') AS age, \
             {} AS query \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             LEFT JOIN pg_class c ON c.oid = l.relation \
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {SESSIONS} AND l.locktype <> 'virtualxid' \
             AND (c.oid IS NULL OR n.nspname NOT IN ('pg_catalog', 'information_schema')) \
             ORDER BY l.granted, a.pid, relation, l.mode",
            one_line("a.query")
        ),
        ExtrasReport::Blocking => format!(
            "SELECT blocked.pid AS blocked_pid, {} AS blocked_query, \
             extract(epoch FROM now() - blocked.query_start)::int AS blocked_secs, \
             blocking.pid AS blocking_pid, blocking.state AS blocking_state, \
             {} AS blocking_query, \
             extract(epoch FROM now() - coalesce(blocking.xact_start, blocking.query_start))::int AS blocking_secs \
             FROM pg_stat_activity blocked \
             CROSS JOIN LATERAL unnest(pg_blocking_pids(blocked.pid)) AS b(pid) \
             JOIN pg_stat_activity blocking ON blocking.pid = b.pid \
             WHERE blocked.datname = current_database() \
             ORDER BY blocked_secs DESC",
            one_line("blocked.query"),
            one_line("blocking.query")
        ),
        ExtrasReport::Outliers => format!(
            "SELECT to_char(s.total_exec_time, 'FM999999999990.0') AS total_ms, \
             to_char(100 * s.total_exec_time / nullif(sum(s.total_exec_time) OVER (), 0), 'FM990.0') AS percent, \
             s.calls, to_char(s.mean_exec_time, 'FM999999999990.00') AS mean_ms, s.rows, \
             {} AS query \
             FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
             WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND r.rolname <> 'postgres' \
             ORDER BY s.total_exec_time DESC LIMIT 10",
            one_line("s.query")
        ),
        ExtrasReport::Bloat => format!(
            "WITH rel AS ( \
               SELECT 'table' AS type, n.nspname AS schema, c.relname AS object, c.relpages, c.reltuples, \
               (SELECT sum(s.avg_width) FROM pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname) + 28 AS entry, \
               current_setting('block_size')::numeric - 24 AS room \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind IN ('r', 'm') AND {USER_SCHEMAS} \
               UNION ALL \
               SELECT 'index', n.nspname, i.relname, i.relpages, i.reltuples, \
               (SELECT sum(s.avg_width) FROM pg_attribute a JOIN pg_stats s ON s.schemaname = n.nspname \
                  AND s.tablename = c.relname AND s.attname = a.attname \
                  WHERE a.attrelid = c.oid AND a.attnum = ANY (x.indkey)) + 12, \
               (current_setting('block_size')::numeric - 40) * 0.9 \
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am m ON m.oid = i.relam \
               WHERE m.amname = 'btree' AND {USER_SCHEMAS} \
             ), est AS ( \
               SELECT type, schema, object, relpages, \
               greatest(ceil(greatest(reltuples, 0)::numeric * entry / room), 1) AS expected \
               FROM rel WHERE entry IS NOT NULL AND reltuples >= 0 \
             ) \
             SELECT type, schema, object, round(relpages / expected, 1) AS bloat, \
             (greatest(relpages - expected, 0) * current_setting('block_size')::numeric)::bigint AS waste_bytes, \
             pg_size_pretty((greatest(relpages - expected, 0) * current_setting('block_size')::numeric)::bigint) AS waste \
             FROM est ORDER BY waste_bytes DESC, schema, object"
        ),
        ExtrasReport::VacuumStats =>             "SELECT n.nspname AS schema, c.relname AS table, \
             to_char(s.last_vacuum, 'YYYY-MM-DD HH24:MI') AS last_vacuum, \
             to_char(s.last_autovacuum, 'YYYY-MM-DD HH24:MI') AS last_autovacuum, \
             s.n_live_tup AS rows, s.n_dead_tup AS dead_rows, \
             (current_setting('autovacuum_vacuum_threshold')::numeric \
               + current_setting('autovacuum_vacuum_scale_factor')::numeric * greatest(c.reltuples, 0))::bigint AS autovacuum_threshold, \
             CASE WHEN coalesce(c.reloptions::text[], '{}') @> ARRAY['autovacuum_enabled=false'] THEN 'disabled' \
               WHEN s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::numeric \
                 + current_setting('autovacuum_vacuum_scale_factor')::numeric * greatest(c.reltuples, 0) THEN 'yes' \
               ELSE 'no' END AS expect_autovacuum \
             FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY s.n_dead_tup DESC, schema, c.relname"
            .to_string(),
        ExtrasReport::IndexUsage => "SELECT s.schemaname AS schema, s.relname AS table, \
             CASE WHEN s.seq_scan + coalesce(s.idx_scan, 0) = 0 THEN NULL \
               ELSE round(100.0 * coalesce(s.idx_scan, 0) / (s.seq_scan + coalesce(s.idx_scan, 0)), 1) END AS index_use_percent, \
             s.seq_scan, coalesce(s.idx_scan, 0) AS idx_scan, s.n_live_tup AS rows \
             FROM pg_stat_user_tables s \
             ORDER BY s.n_live_tup DESC, schema, s.relname"
            .to_string(),
        ExtrasReport::Connections => "SELECT count(*) AS connections, \
             current_setting('max_connections')::int AS max_connections \
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            .to_string(),
        ExtrasReport::LongRunning => format!(
            "SELECT a.pid, extract(epoch FROM now() - a.query_start)::int AS running_secs, \
             a.usename AS user, {} AS query \
             FROM pg_stat_activity a WHERE {SESSIONS} AND a.state = 'active' \
             ORDER BY running_secs DESC",
            one_line("a.query")
        ),
        ExtrasReport::IdleInTransaction => format!(
            "SELECT a.pid, extract(epoch FROM now() - a.state_change)::int AS idle_secs, \
             extract(epoch FROM now() - a.xact_start)::int AS transaction_secs, \
             a.usename AS user, {} AS last_query \
             FROM pg_stat_activity a WHERE {SESSIONS} \
             AND a.state IN ('idle in transaction', 'idle in transaction (aborted)') \
             ORDER BY idle_secs DESC",
            one_line("a.query")
        ),
        ExtrasReport::UnusedIndexes => "SELECT s.schemaname AS schema, s.relname AS table, \
             s.indexrelname AS index, pg_relation_size(s.indexrelid) AS size_bytes, \
             pg_size_pretty(pg_relation_size(s.indexrelid)) AS size, s.idx_scan \
             FROM pg_stat_user_indexes s JOIN pg_index x ON x.indexrelid = s.indexrelid \
             WHERE s.idx_scan = 0 AND NOT x.indisunique AND NOT x.indisprimary \
             ORDER BY size_bytes DESC, schema, index"
            .to_string(),
        ExtrasReport::InvalidIndexes => format!(
            "SELECT n.nspname AS schema, c.relname AS table, i.relname AS index \
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT x.indisvalid AND {USER_SCHEMAS} ORDER BY schema, index"
        ),
        ExtrasReport::CacheHit => "SELECT 'table' AS kind, \
             coalesce(sum(heap_blks_hit), 0) AS hits, coalesce(sum(heap_blks_read), 0) AS reads \
             FROM pg_statio_user_tables \
             UNION ALL SELECT 'index', coalesce(sum(idx_blks_hit), 0), coalesce(sum(idx_blks_read), 0) \
             FROM pg_statio_user_indexes"
            .to_string(),
        ExtrasReport::Sequences => "SELECT schemaname AS schema, sequencename AS sequence, \
             coalesce(last_value, start_value) AS last_value, max_value, \
             round(100.0 * (coalesce(last_value, start_value) - min_value + 1) / (max_value - min_value + 1), 2) AS used_percent \
             FROM pg_sequences WHERE increment_by > 0 \
             ORDER BY used_percent DESC, schema, sequence"
            .to_string(),
        ExtrasReport::Wraparound => "SELECT datname AS database, age(datfrozenxid) AS xid_age, \
             round(100.0 * age(datfrozenxid) / 2147483647, 2) AS used_percent \
             FROM pg_database WHERE datallowconn ORDER BY xid_age DESC"
            .to_string(),
        ExtrasReport::Slots => "SELECT slot_name AS slot, slot_type AS type, active, \
             CASE WHEN pg_is_in_recovery() THEN NULL \
               ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END AS retained_bytes, \
             wal_status \
             FROM pg_replication_slots ORDER BY retained_bytes DESC NULLS LAST, slot"
            .to_string(),
    }
}

/// Runs `sql` (one statement) and returns its rows as text.
async fn table(client: &Client, sql: &str) -> Result<ExtrasTable, PgError> {
    let messages = client
        .simple_query(&format!(
            "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; {sql}"
        ))
        .await
        .map_err(PgError::sql("reading a report"))?;
    let mut out = ExtrasTable::default();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(columns) => {
                out.columns = columns.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if out.columns.is_empty() {
                    out.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                out.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Creates `pg_stat_statements` in the database when it lacks it and the
/// server is writable (a follower has its leader's).
pub async fn create_statements_extension(client: &Client) -> Result<(), PgError> {
    if crate::sql::in_recovery(client).await? {
        return Ok(());
    }
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .map_err(PgError::sql("creating extension pg_stat_statements"))
}

impl Cluster {
    /// Runs `report` in `database`.
    pub async fn extras(
        &self,
        database: &str,
        report: ExtrasReport,
    ) -> Result<ExtrasTable, PgError> {
        let client = self.connect(database).await?;
        if report == ExtrasReport::Outliers {
            // Databases created before pgfollow loaded it get it now.
            create_statements_extension(&client).await?;
        }
        table(&client, &report_sql(report)).await
    }
}
