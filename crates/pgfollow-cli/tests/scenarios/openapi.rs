//! The API is described by the committed `docs/openapi.json`: the document
//! a real `serve` serves at `/openapi.json` must be that file.
//! `PGFOLLOW_WRITE_OPENAPI=1` on this test rewrites the file instead.

use std::path::PathBuf;

use crate::common::*;

const REGENERATE: &str = "PGFOLLOW_WRITE_OPENAPI=1 cargo nextest run -p pgfollow-cli --test scenarios -E 'test(openapi)'";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_served_openapi_document_is_the_committed_one() {
    let s = server();
    let (status, body) = http_get(&s.url, "/openapi.json", Some(&token(&s)));
    assert_eq!(status, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).expect("the document is JSON");
    assert!(served["paths"]["/v1/apps"].is_object(), "{served}");
    let path = committed_path();
    if std::env::var_os("PGFOLLOW_WRITE_OPENAPI").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(&path, text).expect("write docs/openapi.json");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap_or_default();
    if committed != served {
        let paths = |v: &serde_json::Value| -> Vec<String> {
            v["paths"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let (now, then) = (paths(&served), paths(&committed));
        let added: Vec<_> = now.iter().filter(|p| !then.contains(p)).collect();
        let removed: Vec<_> = then.iter().filter(|p| !now.contains(p)).collect();
        panic!(
            "docs/openapi.json is not the document serve serves (paths added {added:?}, \
             removed {removed:?}; schemas or operations may differ too): regenerate it with \
             `{REGENERATE}` and commit it"
        );
    }
}
