//! The read endpoint: `DATABASE_FOLLOWER_URL` spreads read-only connections
//! over the app's available followers, takes out one that falls past
//! `--max-lag` (its replay paused while the leader commits) and puts it
//! back once it has caught up; with no follower serving it refuses
//! connections at once with a clear error, or with `--fallback-to-leader`
//! sends them to the leader. Real clients: tokio-postgres and psql.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;

/// Connections opened one after another through the read endpoint.
const CONNECTIONS: usize = 40;

/// What `CONNECTIONS` fresh connections through `url` landed on: server
/// port → (connections, how many were in recovery).
fn landings(url: &str) -> Result<BTreeMap<i32, (usize, usize)>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut seen: BTreeMap<i32, (usize, usize)> = BTreeMap::new();
        for _ in 0..CONNECTIONS {
            let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
            let (c, conn) = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(conn);
            let row = tokio::time::timeout(
                Duration::from_secs(5),
                c.query_one("select pg_is_in_recovery(), inet_server_port()", &[]),
            )
            .await
            .map_err(|_| "query timed out".to_string())?
            .map_err(|e| e.to_string())?;
            let (recovery, port): (bool, i32) = (row.get(0), row.get(1));
            let e = seen.entry(port).or_default();
            e.0 += 1;
            e.1 += usize::from(recovery);
            drop(c);
            let _ = task.await;
        }
        Ok(seen)
    })
}

/// The port a database listens on, asked straight through its colour URL.
fn server_port(s: &Server, color: &str) -> i32 {
    let url = config_get(s, "sushi", &format!("PGFOLLOW_POSTGRESQL_{color}_URL"));
    psql_url(&url, "select inet_server_port()")
        .ok()
        .stdout
        .trim()
        .parse()
        .unwrap()
}

fn info_of(s: &Server, color: &str) -> serde_json::Value {
    s.cli(&["pg:info", color, "--app", "sushi", "--json"])
        .ok()
        .json()
}

fn serves(s: &Server, color: &str) -> bool {
    info_of(s, color)["serves_reads"]["serves"] == true
}

/// Commits `n` transactions on the leader, one by one.
fn commit_on_leader(s: &Server, n: u32) {
    psql(
        s,
        "sushi",
        "WHITE",
        &format!(
            "do $$ begin for i in 1..{n} loop insert into t values (i); commit; end loop; end $$"
        ),
    );
}

/// App `sushi` with a standard-0 leader WHITE (a table `t`) and two
/// available followers: their colours.
fn leader_with_two_followers(s: &Server) -> (String, String) {
    app_with_database(s, "sushi", "standard-0");
    add_follower(s, "sushi", "standard-0", "WHITE");
    add_follower(s, "sushi", "standard-0", "WHITE");
    s.cli(&["pg:wait", "--app", "sushi", "--timeout", "180"])
        .ok();
    psql(s, "sushi", "WHITE", "create table t (id int)");
    let followers: Vec<String> = info_of(s, "WHITE")["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(followers.len(), 2, "{followers:?}");
    (followers[0].clone(), followers[1].clone())
}

#[test]
fn read_endpoint_spreads_reads_takes_out_a_lagging_follower_and_refuses_with_none() {
    let s = server();
    let (a, b) = leader_with_two_followers(&s);
    let (port_a, port_b) = (server_port(&s, &a), server_port(&s, &b));

    // Bad input: one clear line, non-zero exit.
    let bad = s
        .cli(&["pg:endpoint:read", "--app", "sushi", "--max-lag", "banana"])
        .failed();
    assert!(
        bad.stderr.contains("\"banana\" is not a lag limit: give a number of commits (`1000`) or of seconds (`30s`)"),
        "{}",
        bad.stderr
    );
    let set = s
        .cli(&["pg:endpoint:read", "--app", "sushi", "--max-lag", "5"])
        .ok();
    assert!(
        set.stdout
            .starts_with("Setting the read endpoint of sushi... done\nMax Lag:  5 commits\n"),
        "{}",
        set.stdout
    );

    // Both followers serve; fresh connections land on both, read-only.
    eventually(
        Duration::from_secs(30),
        "both followers serve reads",
        || serves(&s, &a) && serves(&s, &b),
    );
    let url = config_get(&s, "sushi", "DATABASE_FOLLOWER_URL");
    assert!(url.starts_with("postgres://"), "{url}");
    let config = s.cli(&["config", "--app", "sushi"]).ok().stdout;
    assert!(config.contains("DATABASE_FOLLOWER_URL:"), "{config}");
    let seen = landings(&url).unwrap();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        {
            let mut v = vec![port_a, port_b];
            v.sort();
            v
        },
        "{seen:?}"
    );
    assert!(
        seen.values().all(|(n, r)| n == r),
        "all in recovery: {seen:?}"
    );
    assert_eq!(
        psql_url(&url, "select pg_is_in_recovery()")
            .ok()
            .stdout
            .trim(),
        "t"
    );
    let text = s.cli(&["pg:info", "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains(&format!(
            "\nRead Pool:   PGFOLLOW_POSTGRESQL_{a}, PGFOLLOW_POSTGRESQL_{b}\n"
        )),
        "{text}"
    );
    assert!(text.contains("\nRead Pool:   Yes\n"), "{text}");

    // A's replay paused while the leader commits: taken out within bounded
    // time, reads go to B only.
    superuser_sql(&s, "sushi", &a, "select pg_wal_replay_pause()");
    let paused = Instant::now();
    commit_on_leader(&s, 20);
    eventually(
        Duration::from_secs(15),
        "the lagging follower is taken out",
        || !serves(&s, &a),
    );
    let out_after = paused.elapsed();
    assert!(serves(&s, &b));
    let why = info_of(&s, &a)["serves_reads"]["why"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("commits behind, limit 5"), "{why}");
    let text = s.cli(&["pg:info", &a, "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains(&format!("\nRead Pool:   No ({why})\n")),
        "{text}"
    );
    // The slot that routed to A is retargeted within the next tick.
    eventually(Duration::from_secs(5), "reads land on B only", || {
        landings(&url).is_ok_and(|seen| seen.keys().eq([port_b].iter()))
    });
    println!("taken out {} ms after the pause", out_after.as_millis());

    // Caught up again: back in, both serve.
    superuser_sql(&s, "sushi", &a, "select pg_wal_replay_resume()");
    eventually(Duration::from_secs(15), "the follower is put back", || {
        serves(&s, &a)
    });
    eventually(Duration::from_secs(5), "reads land on both again", || {
        landings(&url).is_ok_and(|seen| seen.len() == 2)
    });

    // Neither serves: connections are refused at once with a clear error.
    superuser_sql(&s, "sushi", &a, "select pg_wal_replay_pause()");
    superuser_sql(&s, "sushi", &b, "select pg_wal_replay_pause()");
    commit_on_leader(&s, 20);
    eventually(Duration::from_secs(15), "no follower serves", || {
        !serves(&s, &a) && !serves(&s, &b)
    });
    let mut refused = None;
    eventually(Duration::from_secs(5), "the read endpoint refuses", || {
        let started = Instant::now();
        let out = psql_url(&url, "select 1");
        let failed = !out.success();
        refused = Some((out.stderr, started.elapsed()));
        failed
    });
    let (stderr, took) = refused.unwrap();
    assert!(stderr.contains("is disabled"), "{stderr}");
    assert!(took < Duration::from_secs(3), "refused in {took:?}");
    println!("refused in {} ms: {}", took.as_millis(), stderr.trim());
    let text = s.cli(&["pg:info", "WHITE", "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains("\nRead Pool:   none (DATABASE_FOLLOWER_URL refuses connections)\n"),
        "{text}"
    );

    // Asked to: reads fall back to the leader.
    let set = s
        .cli(&["pg:endpoint:read", "--app", "sushi", "--fallback-to-leader"])
        .ok();
    assert!(
        set.stdout
            .contains("Fallback: to the leader when no follower serves"),
        "{}",
        set.stdout
    );
    eventually(Duration::from_secs(10), "reads land on the leader", || {
        psql_url(&url, "select pg_is_in_recovery()").stdout.trim() == "f"
    });
    let shown = s.cli(&["pg:endpoint:read", "--app", "sushi"]).ok().stdout;
    assert!(
        shown.contains("Serving:  the leader (no follower serves)"),
        "{shown}"
    );

    // Both resumed: reads leave the leader again.
    superuser_sql(&s, "sushi", &a, "select pg_wal_replay_resume()");
    superuser_sql(&s, "sushi", &b, "select pg_wal_replay_resume()");
    eventually(Duration::from_secs(15), "both serve again", || {
        serves(&s, &a) && serves(&s, &b)
    });
    eventually(
        Duration::from_secs(5),
        "reads land on followers only",
        || landings(&url).is_ok_and(|seen| seen.len() == 2 && seen.values().all(|(n, r)| n == r)),
    );
}

#[test]
fn followers_keep_their_read_verdict_while_the_leader_does_not_answer() {
    let s = server();
    let (a, b) = leader_with_two_followers(&s);
    let port_a = server_port(&s, &a);
    s.cli(&["pg:endpoint:read", "--app", "sushi", "--max-lag", "5"])
        .ok();
    eventually(
        Duration::from_secs(30),
        "both followers serve reads",
        || serves(&s, &a) && serves(&s, &b),
    );
    let url = config_get(&s, "sushi", "DATABASE_FOLLOWER_URL");

    // B falls behind and is out; A serves.
    superuser_sql(&s, "sushi", &b, "select pg_wal_replay_pause()");
    commit_on_leader(&s, 20);
    eventually(Duration::from_secs(15), "B is taken out", || {
        !serves(&s, &b)
    });
    eventually(Duration::from_secs(5), "reads land on A only", || {
        landings(&url).is_ok_and(|seen| seen.keys().eq([port_a].iter()))
    });

    // The leader answers nothing (postmaster and backends stopped): Behind
    // By cannot be measured, A keeps serving and says why, B stays out.
    let postmaster = postmaster_of(&cluster_dir_of(&s, "sushi", "WHITE"));
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster));
    let leader = Frozen::stop(pids);
    let silent = |color: &str| {
        info_of(&s, color)["serves_reads"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("its leader does not answer"))
    };
    eventually(
        Duration::from_secs(30),
        "the read endpoint sees the leader silent",
        || silent(&a) && silent(&b),
    );
    assert!(serves(&s, &a), "{}", info_of(&s, &a));
    assert!(!serves(&s, &b), "{}", info_of(&s, &b));
    let text = s.cli(&["pg:info", &a, "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains("\nRead Pool:   Yes (Behind By unknown, its leader does not answer: "),
        "{text}"
    );
    println!("pg:info of A while the leader is stopped:\n{text}");
    let text = s.cli(&["pg:info", &b, "--app", "sushi"]).ok().stdout;
    println!("pg:info of B while the leader is stopped:\n{text}");
    let seen = landings(&url).unwrap();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![port_a]);
    assert!(seen.values().all(|(n, r)| n == r), "{seen:?}");

    // The leader answers again: measured as before, A serves with no note.
    drop(leader);
    eventually(Duration::from_secs(30), "A is measured again", || {
        !silent(&a) && serves(&s, &a)
    });
    superuser_sql(&s, "sushi", &b, "select pg_wal_replay_resume()");
    eventually(Duration::from_secs(15), "B is back", || serves(&s, &b));
}
