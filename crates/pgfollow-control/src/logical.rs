//! Logical followers, the control plane's side: the publication and
//! subscription of a follower (through both agents), the facts a
//! changeover checks, and the hand-over that ends following (sequences
//! carried over, subscription dropped). The planner's `logical.rs` decides;
//! this acts.

use pgfollow_types::agent::{LogicalFacts, SubscriptionSpec};
use pgfollow_types::backup::DumpTarget;
use pgfollow_types::model::{DatabaseRecord, State};

use crate::error::ApiErr;
use crate::hosts::Hosts;
use crate::provision::{cluster_spec, host_address};

/// The subscription, publication and slot of logical follower `db`: one
/// name, the slot's.
pub fn replication_name(db: &DatabaseRecord) -> String {
    db.slot_name()
}

/// The follower's step `copy-schema`: the leader's schema, dumped by the
/// follower's agent with its own (newer) pg_dump as the leader's owner.
pub async fn copy_schema(
    hosts: &Hosts,
    state: &State,
    db: &DatabaseRecord,
    leader: &DatabaseRecord,
) -> Result<(), ApiErr> {
    let from = DumpTarget {
        host: host_address(state, &leader.host),
        port: leader.port,
        database: leader.database.clone(),
        user: leader.owner.name.clone(),
        password: leader.owner.password.clone(),
    };
    hosts
        .agent(&db.host)?
        .copy_schema(&cluster_spec(state, db), &from)
        .await?;
    Ok(())
}

/// The follower's step `subscribe`: a publication of every table on the
/// leader, then the subscription on the follower (which creates the slot).
/// A slot left by an attempt that made no subscription is dropped first.
pub async fn subscribe(
    hosts: &Hosts,
    state: &State,
    db: &DatabaseRecord,
    leader: &DatabaseRecord,
) -> Result<(), ApiErr> {
    let name = replication_name(db);
    let (agent, leader_agent) = (hosts.agent(&db.host)?, hosts.agent(&leader.host)?);
    leader_agent
        .publish(
            &leader.id,
            &leader.database,
            &name,
            &leader.replication.name,
        )
        .await?;
    let facts = agent
        .logical_facts(&db.id, &db.database, Some(&name))
        .await?;
    if !facts.subscribed {
        leader_agent.drop_slot(&leader.id, &name).await?;
    }
    let sub = SubscriptionSpec {
        name,
        host: host_address(state, &leader.host),
        port: leader.port,
        database: leader.database.clone(),
        user: leader.replication.name.clone(),
        password: leader.replication.password.clone(),
    };
    agent.subscribe(&db.id, &db.database, &sub).await?;
    Ok(())
}

/// The tables `db`'s subscription does not carry yet (empty once every
/// first copy is done).
pub async fn tables_not_ready(hosts: &Hosts, db: &DatabaseRecord) -> Result<Vec<String>, ApiErr> {
    let name = replication_name(db);
    let facts = hosts
        .agent(&db.host)?
        .logical_facts(&db.id, &db.database, Some(&name))
        .await?;
    Ok(facts.not_ready)
}

/// The leader's and the follower's facts, asked side by side.
pub async fn facts(
    hosts: &Hosts,
    db: &DatabaseRecord,
    leader: &DatabaseRecord,
) -> Result<(LogicalFacts, LogicalFacts), ApiErr> {
    let name = replication_name(db);
    let (agent, leader_agent) = (hosts.agent(&db.host)?, hosts.agent(&leader.host)?);
    let (l, f) = tokio::join!(
        leader_agent.logical_facts(&leader.id, &leader.database, None),
        agent.logical_facts(&db.id, &db.database, Some(&name)),
    );
    Ok((l?, f?))
}

/// Ends following: every sequence of the leader set to its last value on
/// the follower (the leader takes no writes by now, or its later values
/// are not the follower's business), then the subscription dropped (its
/// slot on the leader is dropped by the unfollow's `drop-slot`). Returns
/// how many sequences were carried.
pub async fn hand_over(
    hosts: &Hosts,
    db: &DatabaseRecord,
    leader: Option<&DatabaseRecord>,
) -> Result<usize, ApiErr> {
    let agent = hosts.agent(&db.host)?;
    let leader_agent = match leader.filter(|l| l.is_live()) {
        Some(l) => Some((l, hosts.agent(&l.host)?)),
        None => None,
    };
    // Side by side: neither needs the other.
    let carry = async {
        let Some((l, la)) = &leader_agent else {
            return Ok::<usize, ApiErr>(0);
        };
        let values = la.sequences(&l.id, &l.database).await?;
        let carried = values.len();
        agent.set_sequences(&db.id, &db.database, values).await?;
        Ok(carried)
    };
    let name = replication_name(db);
    let (carried, dropped) = tokio::join!(carry, agent.unsubscribe(&db.id, &db.database, &name));
    dropped?;
    carried
}

/// After the slot: the leader's publication for `db` goes too (while it
/// is there, the leader refuses UPDATE and DELETE on tables without a
/// replica identity).
pub async fn unpublish(
    hosts: &Hosts,
    db: &DatabaseRecord,
    leader: &DatabaseRecord,
) -> Result<(), ApiErr> {
    hosts
        .agent(&leader.host)?
        .unpublish(&leader.id, &leader.database, &replication_name(db))
        .await?;
    Ok(())
}
