//! `GET /openapi.json` documents the API the router serves: every mounted
//! route is in the document, with exactly the methods it answers, and
//! every documented route is mounted.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use super::helpers::{Db, TestApp};

/// The API as its clients use it (with the dev wallet and the demo on).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/demo"),
    ("GET", "/v1/dev/invoices/{hash}"),
    ("GET", "/v1/identity/me"),
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/models"),
    ("GET", "/v1/pool"),
    ("GET", "/v1/sessions/{id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/dev/invoice"),
    ("POST", "/v1/dev/pay"),
    ("POST", "/v1/estimate"),
    ("POST", "/v1/identity/challenge"),
    ("POST", "/v1/identity/verify"),
    ("POST", "/v1/identity/vouch"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/{id}/refund"),
    ("POST", "/v1/l402/refund"),
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/{id}/close"),
    ("POST", "/v1/sessions/{id}/refund"),
    ("POST", "/v1/sessions/{id}/topup"),
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Whether an answer is the router's own: no route (404 "no such endpoint")
/// or not this method (405).
async fn unrouted(r: reqwest::Response) -> Option<&'static str> {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    match (
        status,
        body["error"]["code"].as_str(),
        body["error"]["message"].as_str(),
    ) {
        (404, Some("not_found"), Some("no such endpoint")) => Some("no route"),
        (405, Some("method_not_allowed"), _) => Some("method not allowed"),
        _ => None,
    }
}

#[tokio::test]
async fn every_mounted_route_is_documented_and_every_documented_route_is_mounted() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.public_rate_per_minute = 10_000;
        c.identity.nip98_per_minute = 10_000;
    })
    .await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            let item = item.as_object().unwrap();
            METHODS
                .iter()
                .filter(|m| item.contains_key(&m.to_lowercase()))
                .map(|m| ((*m).to_owned(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, expected, "the document lists the API's routes");

    // Every documented path answers its documented methods and only those.
    for path in paths.keys() {
        let concrete = path.replace("{hash}", &"0".repeat(64)).replace("{id}", "x");
        for m in METHODS {
            let req = app.http.request(
                Method::from_bytes(m.as_bytes()).unwrap(),
                app.url(&concrete),
            );
            let req = if *m == "GET" {
                req
            } else {
                req.json(&serde_json::json!({}))
            };
            let answer = unrouted(req.send().await.unwrap()).await;
            if documented.contains(&((*m).to_owned(), path.clone())) {
                assert_eq!(answer, None, "{m} {path} is documented, so it is mounted");
            } else {
                assert_eq!(
                    answer,
                    Some("method not allowed"),
                    "{m} {path} is not documented, so it is not mounted"
                );
            }
        }
    }
    // A path that is not documented is not served.
    for p in [
        "/v1/sessions/x/spend",
        "/v1/admin",
        "/openapi.yaml",
        "/v1/completions",
    ] {
        let r = app.http.get(app.url(p)).send().await.unwrap();
        assert_eq!(unrouted(r).await, Some("no route"), "{p}");
    }

    // Operation ids are unique (client generators name methods by them).
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "{ids:?}");
    assert_eq!(ids.len(), ROUTES.len());

    // Every body the document names is defined, and the credentials are described.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let text = doc.to_string();
    for name in text.split("#/components/schemas/").skip(1) {
        let name = name.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "schema {name} is defined");
    }
    for s in ["session", "l402", "nip98", "nostr_token"] {
        assert!(doc["components"]["securitySchemes"][s].is_object(), "{s}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_document_leaves_out_what_the_gateway_does_not_serve() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.demo.enabled = false;
    })
    .await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(
        doc["paths"]["/v1/demo"].is_null(),
        "the demo is off, so not documented"
    );
    assert!(
        doc["paths"]["/v1/lightning/lnbits/webhook"].is_null(),
        "no LNbits backend"
    );
    let r = app.http.get(app.url("/v1/demo")).send().await.unwrap();
    assert_eq!(unrouted(r).await, Some("no route"));
    app.stop().await;
}
