//! Logical followers: the steps that make one (an empty cluster of its own
//! major, the leader's schema, a subscription), and what a changeover to
//! one must refuse because logical replication cannot carry it. Pure: the
//! facts come from the agents.

use pgfollow_types::agent::LogicalFacts;
use pgfollow_types::model::{DatabaseRecord, OperationRecord};

use crate::decide::{decision, leader_is_usable, preamble, Action, Decision, Observed};

/// Provision of a logical follower of `leader`: initdb, start, roles and
/// database, the leader's schema, the subscription, caught up.
pub(crate) fn decide_logical_follower(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    let cluster = match preamble(db, op, observed, "provision") {
        Ok(c) => c,
        Err(d) => return d,
    };
    let Some(l) = leader.filter(|l| l.is_live()) else {
        return decision(
            db,
            Action::Fail("its leader was destroyed before the follower was ready".into()),
            "its leader is gone; giving up",
        );
    };
    if !cluster.initialized {
        return decision(
            db,
            Action::Initialize,
            format!(
                "a logical follower of {}: initializing an empty PostgreSQL {}",
                l.color, db.pg_major
            ),
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "initialized but not running; starting it",
        );
    }
    if !op.has_done(Action::Bootstrap.step()) {
        return decision(db, Action::Bootstrap, "creating its roles and database");
    }
    let needs_leader =
        !op.has_done(Action::CopySchema.step()) || !op.has_done(Action::Subscribe.step());
    if needs_leader && !leader_is_usable(Some(l)) {
        return decision(
            db,
            Action::Wait,
            format!("waiting for its leader {} to be available", l.color),
        );
    }
    if !op.has_done(Action::CopySchema.step()) {
        return decision(
            db,
            Action::CopySchema,
            format!("copying {}'s schema with pg_dump --schema-only", l.color),
        );
    }
    if !op.has_done(Action::Subscribe.step()) {
        return decision(
            db,
            Action::Subscribe,
            format!(
                "subscribing to a publication of every table on {} (PostgreSQL {} → {})",
                l.color, l.pg_major, db.pg_major
            ),
        );
    }
    decision(
        db,
        Action::CheckCaughtUp,
        format!(
            "subscribed to {}; checking whether every table is copied and it has caught up",
            l.color
        ),
    )
}

/// What logical replication cannot carry, one line per problem, from the
/// leader's facts and the follower's (asked with its subscription). Empty:
/// a changeover may go ahead.
pub fn logical_problems(
    leader: &LogicalFacts,
    follower: &LogicalFacts,
    leader_color: &str,
    follower_color: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in &leader.no_identity {
        out.push(format!(
            "table {t} has no primary key or replica identity: its UPDATEs and DELETEs cannot be replicated (add a primary key, or `ALTER TABLE {t} REPLICA IDENTITY FULL`)"
        ));
    }
    if leader.large_objects > 0 {
        out.push(format!(
            "{leader_color} has {} large object(s) (pg_largeobject_metadata): logical replication does not carry them (store them in bytea columns, or move with pg:upgrade)",
            leader.large_objects
        ));
    }
    let only_in = |a: &LogicalFacts, b: &LogicalFacts| -> Vec<String> {
        a.schema
            .iter()
            .filter(|l| b.schema.binary_search(l).is_err())
            .cloned()
            .collect()
    };
    for item in only_in(leader, follower) {
        out.push(format!(
            "{item} is on {leader_color} but not on {follower_color}: the schema changed while following (logical replication carries no DDL; make the same change on {follower_color}, or make a new follower)"
        ));
    }
    for item in only_in(follower, leader) {
        out.push(format!(
            "{item} is on {follower_color} but not on {leader_color}: the schema changed while following (logical replication carries no DDL)"
        ));
    }
    if !follower.subscribed {
        out.push(format!(
            "{follower_color} has no subscription to {leader_color}: it is not following"
        ));
    } else {
        for t in &follower.not_ready {
            out.push(format!(
                "table {t} is not replicated to {follower_color} yet (its first copy is not finished, or it was made after following began)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::tests::{db, op};
    use pgfollow_types::agent::ClusterStatus;
    use pgfollow_types::api::DatabaseState;
    use pgfollow_types::model::{Desired, OperationKind};

    fn facts(schema: &[&str]) -> LogicalFacts {
        let mut schema: Vec<String> = schema.iter().map(|s| s.to_string()).collect();
        schema.sort();
        LogicalFacts {
            schema,
            subscribed: true,
            ..LogicalFacts::default()
        }
    }

    #[test]
    fn what_logical_replication_cannot_carry_is_refused_one_line_each() {
        let same = ["table public.t", "column public.t.id bigint not null"];
        let mut no_pk = facts(&same);
        no_pk.no_identity = vec!["public.log".into()];
        let mut lobs = facts(&same);
        lobs.large_objects = 2;
        let added = facts(&[&same[..], &["column public.t.note text"]].concat());
        let mut unsubscribed = facts(&same);
        unsubscribed.subscribed = false;
        let mut copying = facts(&same);
        copying.not_ready = vec!["public.t".into()];
        let rows: Vec<(&str, LogicalFacts, LogicalFacts, Vec<&str>)> = vec![
            ("all well", facts(&same), facts(&same), vec![]),
            (
                "no primary key",
                no_pk,
                facts(&same),
                vec!["table public.log has no primary key"],
            ),
            (
                "large objects",
                lobs,
                facts(&same),
                vec!["WHITE has 2 large object(s)"],
            ),
            (
                "a column added on the leader",
                added.clone(),
                facts(&same),
                vec!["column public.t.note text is on WHITE but not on CHARCOAL"],
            ),
            (
                "a column only on the follower",
                facts(&same),
                added,
                vec!["column public.t.note text is on CHARCOAL but not on WHITE"],
            ),
            (
                "no subscription",
                facts(&same),
                unsubscribed,
                vec!["CHARCOAL has no subscription"],
            ),
            (
                "still copying",
                facts(&same),
                copying,
                vec!["table public.t is not replicated"],
            ),
        ];
        for (name, leader, follower, want) in rows {
            let got = logical_problems(&leader, &follower, "WHITE", "CHARCOAL");
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(g.starts_with(w), "{name}: {g:?} should start with {w:?}");
            }
        }
    }

    #[test]
    fn a_logical_follower_is_made_empty_then_given_the_schema_then_subscribed() {
        let mut f = db(DatabaseState::Preparing, Desired::Running);
        f.following = Some("leader".into());
        f.logical = true;
        f.pg_major = 18;
        let mut l = db(DatabaseState::Available, Desired::Running);
        l.id = "leader".into();
        let status = |initialized, running| {
            Observed::Cluster(ClusterStatus {
                id: f.id.clone(),
                initialized,
                running,
                pid: None,
            })
        };
        use Action::*;
        let rows: Vec<(&[&str], Observed, Action)> = vec![
            (&[], status(false, false), Initialize),
            (&["initialize"], status(true, false), Start),
            (&["initialize", "start"], status(true, true), Bootstrap),
            (&["bootstrap"], status(true, true), CopySchema),
            (&["bootstrap", "copy-schema"], status(true, true), Subscribe),
            (
                &["bootstrap", "copy-schema", "subscribe"],
                status(true, true),
                CheckCaughtUp,
            ),
        ];
        for (done, observed, want) in rows {
            let o = op(OperationKind::Provision, done, 0);
            let got = decide_logical_follower(&f, &o, &observed, Some(&l));
            assert_eq!(got.action, want, "{done:?}: {}", got.sentence);
        }
        // A leader that is not available holds the schema copy up.
        let mut busy = l.clone();
        busy.state = DatabaseState::Preparing;
        let o = op(OperationKind::Provision, &["bootstrap"], 0);
        let got = decide_logical_follower(&f, &o, &status(true, true), Some(&busy));
        assert_eq!(got.action, Wait);
        // No leader: it fails (its files are removed).
        let got = decide_logical_follower(&f, &o, &status(true, true), None);
        assert!(matches!(got.action, Fail(_)));
    }
}
