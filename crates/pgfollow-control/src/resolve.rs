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

/// A database by its connection URL: same port, database and user, on a
/// host with that address.
fn resolve_url<'a>(state: &'a State, url: &str) -> Option<&'a DatabaseRecord> {
    let u = url::Url::parse(url).ok()?;
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
            let ep = a.endpoint.as_ref()?;
            let on_host = state.hosts.get(&ep.host).is_some_and(|h| h.address == host);
            if ep.port != port || !on_host {
                return None;
            }
            crate::endpoints::main_database(state, a)
                .filter(|db| db.database == dbname && db.owner.name == u.username())
        })
    };
    direct.or_else(behind_endpoint)
}
