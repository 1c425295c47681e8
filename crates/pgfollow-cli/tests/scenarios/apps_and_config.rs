//! Apps, config vars, `run`, plans and billing.

use crate::common::*;

#[test]
fn apps_are_created_listed_and_destroyed_with_their_databases() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["apps:create", "ramen"]).ok();
    let apps = s.cli(&["apps", "--json"]).ok().json();
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ramen", "sushi"]);
    assert!(s.cli(&["apps"]).ok().stdout.contains("sushi"));

    add_database(&s, "sushi", "hobby-dev");
    assert_eq!(cluster_dirs(&s).len(), 1);

    // Destroying needs the name typed back.
    let out = s.cli(&["apps:destroy", "sushi"]).failed();
    assert!(out.stderr.contains("--confirm sushi"), "{}", out.stderr);
    let out = s
        .cli(&["apps:destroy", "sushi", "--confirm", "ramen"])
        .failed();
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    assert_eq!(
        s.cli(&["apps", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    s.cli(&["apps:destroy", "sushi", "--confirm", "sushi"]).ok();
    let apps = s.cli(&["apps", "--json"]).ok().json();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    eventually(
        std::time::Duration::from_secs(60),
        "the app's cluster is removed",
        || cluster_dirs(&s).is_empty(),
    );
    assert!(s.running_postmasters().is_empty());
}

#[test]
fn config_vars_and_run_give_the_app_its_database() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    s.cli(&[
        "config:set",
        "GREETING=hello world",
        "MODE=test",
        "--app",
        "sushi",
    ])
    .ok();
    assert_eq!(config_get(&s, "sushi", "GREETING"), "hello world");
    let all = s.cli(&["config", "--app", "sushi", "--json"]).ok().json();
    let vars = all["vars"].as_object().unwrap();
    for v in [
        "DATABASE_URL",
        "PGFOLLOW_POSTGRESQL_WHITE_URL",
        "GREETING",
        "MODE",
    ] {
        assert!(vars.contains_key(v), "{v} missing from {vars:?}");
    }
    // DATABASE_URL goes through the app's endpoint: same role and database
    // as the direct colour URL, another port.
    let (main, direct) = (
        vars["DATABASE_URL"].as_str().unwrap(),
        vars["PGFOLLOW_POSTGRESQL_WHITE_URL"].as_str().unwrap(),
    );
    assert_ne!(main, direct);
    let without_port = |u: &str| {
        let (head, tail) = u.rsplit_once(':').unwrap();
        (
            head.to_string(),
            tail.split_once('/').unwrap().1.to_string(),
        )
    };
    assert_eq!(without_port(main), without_port(direct));
    let text = s.cli(&["config", "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains("GREETING:") && text.contains("DATABASE_URL:"),
        "{text}"
    );

    s.cli(&["config:unset", "MODE", "--app", "sushi"]).ok();
    let out = s.cli(&["config:get", "MODE", "--app", "sushi"]).failed();
    assert!(out.stderr.contains("MODE"), "{}", out.stderr);
    // Database URLs are pgfollow's, not the user's.
    s.cli(&["config:set", "DATABASE_URL=postgres://x", "--app", "sushi"])
        .failed();

    // `run` puts the config vars in the command's environment: the command
    // reaches the database through DATABASE_URL.
    let out = s
        .cli(&[
            "run",
            "--app",
            "sushi",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; psql \"$DATABASE_URL\" -XAtc 'select 6*7'",
        ])
        .ok();
    assert_eq!(out.stdout, "hello world\n42\n");
    let out = s.cli(&["run", "--app", "sushi", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn plans_come_built_in_and_from_the_operators_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.toml");
    std::fs::write(
        &file,
        r#"
[[plan]]
name = "standard-7"
tier = "standard"
connection_limit = 77
shared_buffers_mb = 64
work_mem_mb = 4
storage_limit_gb = 70
price_per_month = 77
"#,
    )
    .unwrap();
    let s = Server::start_with(bin(), &["--plans", file.to_str().unwrap()]).unwrap();
    let plans = s.cli(&["plans", "--json"]).ok().json();
    let plans = plans.as_array().unwrap();
    for tier in ["hobby", "standard", "premium", "enterprise"] {
        assert!(plans.iter().any(|p| p["tier"] == tier), "no {tier} plan");
    }
    let custom = plans.iter().find(|p| p["name"] == "standard-7").unwrap();
    assert_eq!(custom["connection_limit"], 77);
    let text = s.cli(&["plans"]).ok().stdout;
    assert!(
        text.contains("standard-7") && text.contains("$77/mo"),
        "{text}"
    );

    // A database on the operator's plan gets the plan's settings.
    app_with_database(&s, "sushi", "standard-7");
    let info = info(&s, "sushi");
    assert_eq!(info[0]["connection_limit"], 77);
    assert_eq!(
        psql(&s, "sushi", "DATABASE_URL", "show shared_buffers").trim_end(),
        " shared_buffers \n----------------\n 64MB\n(1 row)"
    );
}

#[test]
fn billing_charges_each_database_pro_rata() {
    let s = server();
    let first = app_with_database(&s, "sushi", "standard-0");
    let second = add_database(&s, "sushi", "hobby-basic");
    std::thread::sleep(std::time::Duration::from_secs(1));
    s.cli(&[
        "addons:destroy",
        &second,
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    let bill = s.cli(&["billing", "--app", "sushi", "--json"]).ok().json();
    let lines = bill["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    let line = |name: &str| {
        lines
            .iter()
            .find(|l| l["database"] == name)
            .unwrap()
            .clone()
    };
    let (a, b) = (line(&first), line(&second));
    assert_eq!(a["price_per_month"], 50);
    assert!(a["ended_at"].is_null());
    assert!(
        !b["ended_at"].is_null(),
        "a destroyed database stops costing"
    );
    let cost = a["cost_usd"].as_f64().unwrap();
    let seconds = a["seconds"].as_f64().unwrap();
    assert!(seconds >= 1.0);
    assert!(
        (cost - 50.0 * seconds / (30.0 * 86400.0)).abs() < 1e-6,
        "{a}"
    );
    let total = bill["total_usd"].as_f64().unwrap();
    assert!((total - cost - b["cost_usd"].as_f64().unwrap()).abs() < 1e-9);
    let text = s.cli(&["billing", "--app", "sushi"]).ok().stdout;
    assert!(text.contains(&first) && text.contains("Total"), "{text}");
}
