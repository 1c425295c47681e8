//! Finding the app and the database a request names, in every form a user
//! may write them.

use pgfollow_types::dbref::{DatabaseRef, LocalName};
use pgfollow_types::model::{AppRecord, DatabaseRecord, Desired, State};

use crate::error::ApiErr;

pub fn find_app<'a>(state: &'a State, app: &str) -> Result<&'a AppRecord, ApiErr> {
    state.apps.get(app).ok_or_else(|| {
        ApiErr::not_found(format!(
            "no app named {app:?}; see `pgfollow apps`, or create it with `pgfollow apps:create {app}`"
        ))
    })
}

fn live(db: &DatabaseRecord) -> bool {
    db.desired == Desired::Running && !db.hidden
}

/// The database `reference` names, seen from `app`.
pub fn resolve_db<'a>(
    state: &'a State,
    app: &str,
    reference: &str,
) -> Result<&'a DatabaseRecord, ApiErr> {
    let parsed = DatabaseRef::parse(reference).map_err(|e| ApiErr::bad_request(e.to_string()))?;
    match parsed {
        DatabaseRef::Local(name) => {
            let a = find_app(state, app)?;
            resolve_local(state, a, &name).ok_or_else(|| missing(reference, app))
        }
        DatabaseRef::OtherApp { app: other, name } => {
            let a = find_app(state, &other)?;
            resolve_local(state, a, &name).ok_or_else(|| missing(reference, &other))
        }
        DatabaseRef::Url(url) => resolve_url(state, &url).ok_or_else(|| {
            ApiErr::not_found(
                "that URL is not the URL of a pgfollow database; copy it from `pgfollow config` or `pgfollow pg:credentials:url`",
            )
        }),
    }
}

fn missing(reference: &str, app: &str) -> ApiErr {
    ApiErr::not_found(format!(
        "app {app} has no database {reference}; see `pgfollow addons --app {app}`"
    ))
}

fn resolve_local<'a>(
    state: &'a State,
    app: &AppRecord,
    name: &LocalName,
) -> Option<&'a DatabaseRecord> {
    match name {
        LocalName::Attachment(att) => app
            .attachments
            .get(att)
            .and_then(|id| state.databases.get(id))
            .filter(|db| live(db)),
        LocalName::Addon(addon) => state
            .databases
            .values()
            .filter(|db| live(db) && db.name == *addon)
            .find(|db| db.app == app.name || app.attachments.values().any(|id| *id == db.id)),
    }
}

/// `url` with only the first of its hosts (libpq's multi-host form).
fn first_host_only(url: &str) -> String {
    let Some((scheme_user, rest)) = url.split_once('@') else {
        return url.to_string();
    };
    let (hosts, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let first = hosts.split(',').next().unwrap_or(hosts);
    format!("{scheme_user}@{first}{tail}")
}

/// A database by its connection URL: same port, database and user, on a
/// host with that address.
/// `DATABASE_URL` lists several endpoints (`@h1:p1,h2:p2/`): any names
/// the app's database, so the first is read.
fn resolve_url<'a>(state: &'a State, url: &str) -> Option<&'a DatabaseRecord> {
    let u = url::Url::parse(&first_host_only(url)).ok()?;
    let port = u.port()?;
    let dbname = u.path().trim_start_matches('/');
    let host = u.host_str()?;
    let direct = state.databases.values().find(|db| {
        live(db)
            && db.port == port
            && db.database == dbname
            && db.owner.name == u.username()
            && state.hosts.get(&db.host).is_some_and(|h| h.address == host)
    });
    // An app's DATABASE_URL names its endpoint: the database behind it.
    let behind_endpoint = || {
        state.apps.values().find_map(|a| {
            let on_endpoint = a.endpoints.iter().any(|ep| {
                ep.port == port && state.hosts.get(&ep.host).is_some_and(|h| h.address == host)
            });
            if !on_endpoint {
                return None;
            }
            crate::endpoints::main_database(state, a)
                .filter(|db| db.database == dbname && db.owner.name == u.username())
        })
    };
    direct.or_else(behind_endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_is_read_by_its_first_host() {
        let cases = [
            (
                "postgres://u:p@h1:1,h2:2/db?x=y",
                "postgres://u:p@h1:1/db?x=y",
            ),
            ("postgres://u:p@h1:1/db", "postgres://u:p@h1:1/db"),
            ("postgres://u:p@h1:1,h2:2", "postgres://u:p@h1:1"),
            ("postgres://h1/db", "postgres://h1/db"),
        ];
        for (url, want) in cases {
            assert_eq!(first_host_only(url), want, "{url}");
        }
    }
}
