//! Logical followers through the agent: the publication on a leader, the
//! schema copy and subscription on a follower (which may run a newer
//! major), the facts a changeover checks, and sequences carried over
//! (`pgfollow-postgres/src/logical.rs` does the SQL).

use pgfollow_postgres::dump::{self, Target};
use pgfollow_types::agent::{ClusterSpec, LogicalFacts, SequenceValue, SubscriptionSpec};

use crate::agent::{Agent, AgentError};

impl Agent {
    pub async fn logical_facts(
        &self,
        id: &str,
        database: &str,
        subscription: Option<&str>,
    ) -> Result<LogicalFacts, AgentError> {
        Ok(self
            .cluster(id)?
            .logical_facts(database, subscription)
            .await?)
    }

    pub async fn publish(
        &self,
        id: &str,
        database: &str,
        name: &str,
        reader: &str,
    ) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.publish(database, name, reader).await?)
    }

    pub async fn unpublish(&self, id: &str, database: &str, name: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.unpublish(database, name).await?)
    }

    /// The schema of `from` (`pg_dump --schema-only` by the follower's own
    /// major, which reads older servers), restored into `spec`'s database
    /// as its owner in one transaction. The dump's file is removed after.
    pub async fn copy_schema(&self, spec: &ClusterSpec, from: &Target) -> Result<(), AgentError> {
        let major = match spec.pg_major {
            Some(m) => m,
            None => self.cluster_for(spec)?.binaries().major,
        };
        let bin = self.binaries_for_dump(major)?;
        let dir = self.backups_dir();
        crate::backups::make_private_dir(&dir)?;
        let file = dir.join(format!("schema-{}.dump", spec.id));
        let into = Target {
            host: spec.listen_address.clone(),
            port: spec.port,
            database: spec.database.clone(),
            user: spec.owner.name.clone(),
            password: spec.owner.password.clone(),
        };
        let user = self.os_user();
        let result = async {
            dump::dump_schema(&bin, &user, from, &file).await?;
            dump::restore(&bin, &user, &into, &file, |_, _| {}).await
        }
        .await;
        let _ = std::fs::remove_file(&file);
        Ok(result?)
    }

    pub async fn subscribe(
        &self,
        id: &str,
        database: &str,
        sub: &SubscriptionSpec,
    ) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.subscribe(database, sub).await?)
    }

    pub async fn unsubscribe(
        &self,
        id: &str,
        database: &str,
        name: &str,
    ) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.unsubscribe(database, name).await?)
    }

    pub async fn sequences(
        &self,
        id: &str,
        database: &str,
    ) -> Result<Vec<SequenceValue>, AgentError> {
        Ok(self.cluster(id)?.sequences(database).await?)
    }

    pub async fn set_sequences(
        &self,
        id: &str,
        database: &str,
        values: &[SequenceValue],
    ) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.set_sequences(database, values).await?)
    }
}
