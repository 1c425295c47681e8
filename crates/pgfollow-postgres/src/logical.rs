//! Logical replication, from both ends: a publication FOR ALL TABLES on the
//! leader, a subscription on the follower (which may run a newer major),
//! what a changeover to such a follower must check first
//! ([`Cluster::logical_facts`]) and the sequences it carries over.
//! Every statement runs as the superuser over the cluster's own socket.
//! Publication, subscription and slot share one name, checked like a slot
//! name, so it can be written into SQL as it is.

use pgfollow_types::agent::{LogicalFacts, SequenceValue, SubscriptionSpec};
use tokio_postgres::Client;

use crate::cluster::Cluster;
use crate::conf;
use crate::error::PgError;

/// Schemas that belong to PostgreSQL, not to the app.
const USER_RELATION: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                     AND d.objid = c.oid AND d.deptype = 'e')";

fn check_name(name: &str) -> Result<(), PgError> {
    match conf::slot_name_problem(name) {
        Some(why) => Err(PgError::InvalidSpec(format!(
            "replication name {name:?} {why}"
        ))),
        None => Ok(()),
    }
}

/// A quoted SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn strings(client: &Client, sql: &str, what: &'static str) -> Result<Vec<String>, PgError> {
    let rows = client.query(sql, &[]).await.map_err(PgError::sql(what))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(PgError::sql(what)))
        .collect()
}

impl Cluster {
    /// What logical replication of `database` depends on (see
    /// [`LogicalFacts`]); with `subscription`, also which tables it does
    /// not carry yet.
    pub async fn logical_facts(
        &self,
        database: &str,
        subscription: Option<&str>,
    ) -> Result<LogicalFacts, PgError> {
        let client = self.connect(database).await?;
        let schema = strings(
            &client,
            &format!(
                "SELECT line FROM ( \
                   SELECT format('%s %I.%I', CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, \
                                 n.nspname, c.relname) AS line \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p', 'S') AND {USER_RELATION} \
                   UNION ALL \
                   SELECT format('column %I.%I.%I %s%s', n.nspname, c.relname, a.attname, \
                                 format_type(a.atttypid, a.atttypmod), \
                                 CASE WHEN a.attnotnull THEN ' not null' ELSE '' END) \
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
                     AND {USER_RELATION}) s ORDER BY line COLLATE \"C\""
            ),
            "reading the schema",
        )
        .await?;
        let no_identity = strings(
            &client,
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND {USER_RELATION} AND ( \
                   c.relreplident = 'n' \
                   OR (c.relreplident = 'd' AND NOT EXISTS \
                       (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
                   OR (c.relreplident = 'i' AND NOT EXISTS \
                       (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))) \
                 ORDER BY 1"
            ),
            "looking for tables without a replica identity",
        )
        .await?;
        let large_objects: i64 = client
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(PgError::sql("counting large objects"))?;
        let mut facts = LogicalFacts {
            schema,
            no_identity,
            large_objects: large_objects.max(0) as u64,
            ..LogicalFacts::default()
        };
        if let Some(sub) = subscription {
            check_name(sub)?;
            facts.subscribed = client
                .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&sub])
                .await
                .map_err(PgError::sql("looking up the subscription"))?
                .is_some();
            facts.not_ready = strings(
                &client,
                &format!(
                    "SELECT format('%I.%I', n.nspname, c.relname) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind = 'r' AND {USER_RELATION} AND NOT EXISTS ( \
                       SELECT 1 FROM pg_subscription_rel r \
                       JOIN pg_subscription s ON s.oid = r.srsubid \
                       WHERE s.subname = {} AND r.srrelid = c.oid AND r.srsubstate = 'r') \
                     ORDER BY 1",
                    literal(sub)
                ),
                "reading which tables the subscription carries",
            )
            .await?;
        }
        Ok(facts)
    }

    /// Leader side, idempotent: publication `name` of every table; role
    /// `reader` may connect to `database` and read every table (the first
    /// copy of each table is a `COPY` as that role).
    pub async fn publish(&self, database: &str, name: &str, reader: &str) -> Result<(), PgError> {
        check_name(name)?;
        let client = self.connect(database).await?;
        client
            .batch_execute(&format!(
                "GRANT CONNECT ON DATABASE {} TO {reader}; GRANT pg_read_all_data TO {reader}",
                ident(database),
                reader = ident(reader)
            ))
            .await
            .map_err(PgError::sql("letting the replication role read the tables"))?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(PgError::sql("looking up the publication"))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE PUBLICATION {name} FOR ALL TABLES"))
                .await
                .map_err(PgError::sql("creating the publication"))?;
            tracing::info!(root = %self.root().display(), name, "created publication");
        }
        Ok(())
    }

    /// Leader side, idempotent: drops publication `name`.
    pub async fn unpublish(&self, database: &str, name: &str) -> Result<(), PgError> {
        check_name(name)?;
        let client = self.connect(database).await?;
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {name}"))
            .await
            .map_err(PgError::sql("dropping the publication"))
    }

    /// Follower side, idempotent: subscribes `database` to `sub` (the
    /// slot is created on the leader; every table's rows are copied, then
    /// changes stream). The subscription's own `synchronous_commit` stays
    /// `off` (PostgreSQL's default for it): with `on`, its one apply worker
    /// waited for a flush per commit and fell about a second behind four
    /// writers here. What it has applied is the walsender's `write_lsn`;
    /// [`Cluster::unsubscribe`]'s commit makes it durable.
    pub async fn subscribe(&self, database: &str, sub: &SubscriptionSpec) -> Result<(), PgError> {
        let name = &sub.name;
        check_name(name)?;
        let client = self.connect(database).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[name])
            .await
            .map_err(PgError::sql("looking up the subscription"))?
            .is_some();
        if exists {
            return Ok(());
        }
        let conninfo = [
            ("host", sub.host.as_str()),
            ("port", &sub.port.to_string()),
            ("dbname", &sub.database),
            ("user", &sub.user),
            ("password", &sub.password),
            ("sslmode", conf::UPSTREAM_SSLMODE),
            ("application_name", name),
            (
                "connect_timeout",
                &conf::UPSTREAM_CONNECT_TIMEOUT_SECS.to_string(),
            ),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", conf::conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ");
        client
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {name} CONNECTION {} PUBLICATION {name} \
                 WITH (slot_name = {name}, create_slot = true, copy_data = true)",
                literal(&conninfo)
            ))
            .await
            .map_err(PgError::sql("creating the subscription"))?;
        tracing::info!(root = %self.root().display(), name, "created subscription");
        Ok(())
    }

    /// Follower side, idempotent: the subscription stops and is dropped,
    /// without touching the leader (its slot is dropped from there). The
    /// drop commits synchronously (this session's `synchronous_commit` is
    /// `on`), which flushes the WAL of every change applied before it.
    pub async fn unsubscribe(&self, database: &str, name: &str) -> Result<(), PgError> {
        check_name(name)?;
        let client = self.connect(database).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
            .await
            .map_err(PgError::sql("looking up the subscription"))?
            .is_some();
        if exists {
            client
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {name} DISABLE; \
                     ALTER SUBSCRIPTION {name} SET (slot_name = NONE); \
                     DROP SUBSCRIPTION {name}"
                ))
                .await
                .map_err(PgError::sql("dropping the subscription"))?;
            tracing::info!(root = %self.root().display(), name, "dropped subscription");
        }
        Ok(())
    }

    /// Every used sequence of `database` and its last value (with a cache,
    /// possibly past the last one handed out, never before it).
    pub async fn sequences(&self, database: &str) -> Result<Vec<SequenceValue>, PgError> {
        let client = self.connect(database).await?;
        let rows = client
            .query(
                "SELECT format('%I.%I', schemaname, sequencename), last_value \
                 FROM pg_sequences WHERE last_value IS NOT NULL ORDER BY 1",
                &[],
            )
            .await
            .map_err(PgError::sql("reading the sequences"))?;
        rows.iter()
            .map(|r| {
                Ok(SequenceValue {
                    name: r.try_get(0).map_err(PgError::sql("reading a sequence"))?,
                    last_value: r.try_get(1).map_err(PgError::sql("reading a sequence"))?,
                })
            })
            .collect()
    }

    /// `setval` of every sequence in `values`, in one transaction.
    pub async fn set_sequences(
        &self,
        database: &str,
        values: &[SequenceValue],
    ) -> Result<(), PgError> {
        let mut client = self.connect(database).await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::sql("starting to set the sequences"))?;
        for v in values {
            tx.query_one(
                "SELECT setval($1::text::regclass, $2, true)",
                &[&v.name, &v.last_value],
            )
            .await
            .map_err(PgError::sql("setting a sequence"))?;
        }
        tx.commit()
            .await
            .map_err(PgError::sql("setting the sequences"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("a'b"), "'a''b'");
    }

    #[test]
    fn only_plain_names_reach_sql() {
        assert!(check_name("pgfollow_db_000002_ab12").is_ok());
        assert!(check_name("x; DROP TABLE t").is_err());
    }
}
