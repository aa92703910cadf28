//! Spawning a gateway for a test.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sluice_gateway::{
    AppState, Config,
    config::{ModelConfig, ModelKind},
    testing::{FakeBehaviour, FakeUpstream, spawn_fake_openai},
};
use sluice_store::Store;
use tokio_util::sync::CancellationToken;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    /// A SQLite file that outlives the app (to restart a gateway on it).
    SqliteAt(&'static str),
    Postgres,
}

pub fn pg_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct TestApp {
    pub base: String,
    pub http: Client,
    pub state: AppState,
    /// The gateway's clock: it moves only when a test advances it.
    pub clock: Arc<sluice_env::ManualClock>,
    pub upstream: FakeUpstream,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    pg: Option<sluice_store::postgres::PgStore>,
}

/// A model priced so that figures are easy to check: 100 msat per input token
/// and 200 msat per output token at BTC = 100,000 USD.
pub fn fake_model(base_url: &str) -> ModelConfig {
    ModelConfig {
        name: "fake-model".into(),
        kind: ModelKind::Openai,
        base_url: Some(base_url.into()),
        api_key: None,
        upstream_model: Some("upstream-name".into()),
        path: None,
        input_usd_per_mtok: 100.0,
        output_usd_per_mtok: 200.0,
        infra_monthly_usd: None,
        expected_monthly_requests: None,
        margin_pct: None,
        default_max_tokens: 100,
        max_output_tokens: 1000,
        context_length: 0,
        tokenizer: Default::default(),
        timeout_secs: 5,
        idle_timeout_secs: 2,
        max_duration_secs: 30,
        output_limit_field: Default::default(),
    }
}

pub fn test_config(upstream_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.oracle.fixed_btc_usd = Some(100_000.0);
    cfg.sessions.min_deposit_sats = 10;
    cfg.sessions.max_deposit_sats = 100_000;
    cfg.sessions.min_balance_sats = 1;
    cfg.server.max_body_bytes = 64 * 1024;
    cfg.models = vec![fake_model(upstream_url)];
    cfg
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        Self::spawn_with(db, FakeBehaviour::default(), |_| {}).await
    }

    pub async fn spawn_with(
        db: Db,
        behaviour: FakeBehaviour,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        Self::spawn_wrapped(db, behaviour, tweak, |l| l).await
    }

    /// Like [`TestApp::spawn_with`], with the Lightning backend wrapped (to inject faults).
    pub async fn spawn_wrapped(
        db: Db,
        behaviour: FakeBehaviour,
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn sluice_lightning::Lightning>) -> Arc<dyn sluice_lightning::Lightning>,
    ) -> TestApp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let upstream = spawn_fake_openai(behaviour).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut cfg = test_config(&upstream.base_url);
        cfg.server.public_url = Some(base.clone());
        tweak(&mut cfg);
        let (store, pg): (Arc<dyn Store>, _) = match db {
            Db::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("t.db").display());
                (sluice_store::connect(&url).await.unwrap(), None)
            }
            Db::SqliteAt(path) => (
                sluice_store::connect(&format!("sqlite://{path}"))
                    .await
                    .unwrap(),
                None,
            ),
            Db::Postgres => {
                let (s, _) = sluice_store::postgres::PgStore::connect_isolated(&pg_url())
                    .await
                    .expect("PostgreSQL is needed for this test: set SLUICE_TEST_PG_URL or run scripts/test.sh");
                (Arc::new(s.clone()), Some(s))
            }
        };
        let clock = Arc::new(sluice_env::ManualClock::starting_now());
        let env = sluice_gateway::Env {
            clock: clock.clone(),
            ids: Arc::new(sluice_env::OsIds),
        };
        let mut state = sluice_gateway::build_state_with(&cfg, store, BTreeMap::new(), env)
            .await
            .unwrap();
        let wrapped = wrap(state.sluice.lightning.clone());
        Arc::get_mut(&mut state.sluice)
            .expect("no one shares a service just built")
            .lightning = wrapped;
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let server = tokio_util::task::TaskTracker::new().spawn(sluice_gateway::serve(
            listener,
            state.clone(),
            cfg.server.max_body_bytes,
            async move { s2.cancelled().await },
        ));
        TestApp {
            base,
            http: Client::new(),
            state,
            clock,
            upstream,
            stop,
            server: Some(server),
            _dir: dir,
            pg,
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
        if let Some(pg) = self.pg.take() {
            pg.cleanup().await.unwrap();
        }
    }

    /// Time passes for this live gateway: its clock moves by `by`, and it
    /// sends the heartbeat its loop would have sent meanwhile.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.state
            .sluice
            .store
            .heartbeat(&self.state.sluice.instance_id, self.state.sluice.now_ms())
            .await
            .unwrap();
    }

    /// Begin shutting down, as SIGTERM does, without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Run SQL on the SQLite file of a `Db::Sqlite` app behind the store's
    /// back, on a connection of its own (to inject faults).
    pub async fn sqlite_exec(&self, sql: &str) {
        let url = format!("sqlite://{}", self._dir.path().join("t.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Response {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// Create a session (awaiting payment): (id, macaroon, bolt11).
    pub async fn new_session(&self, sats: u64) -> (String, String, String) {
        let r = self
            .post("/v1/sessions", json!({"amount_sats": sats}), None)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        (
            v["session_id"].as_str().unwrap().into(),
            v["macaroon"].as_str().unwrap().into(),
            v["invoice"]["bolt11"].as_str().unwrap().into(),
        )
    }

    /// An invoice of the payer's own dev wallet (its customer side) for
    /// `sats`, to claim a refund with: (bolt11, payment hash).
    pub async fn customer_invoice(&self, sats: u64) -> (String, String) {
        let r = self
            .post("/v1/dev/invoice", json!({"amount_sats": sats}), None)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        (
            v["bolt11"].as_str().unwrap().into(),
            v["payment_hash"].as_str().unwrap().into(),
        )
    }

    /// Whether the payer's dev invoice `hash` was paid (a refund reached them).
    pub async fn customer_paid(&self, hash: &str) -> bool {
        let v: Value = self
            .get(&format!("/v1/dev/invoices/{hash}"), None)
            .await
            .json()
            .await
            .unwrap();
        v["state"] == "paid"
    }

    pub async fn pay(&self, bolt11: &str) -> Value {
        let r = self
            .post("/v1/dev/pay", json!({"bolt11": bolt11}), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// A funded session: (id, macaroon).
    pub async fn funded_session(&self, sats: u64) -> (String, String) {
        let (id, mac, bolt11) = self.new_session(sats).await;
        self.pay(&bolt11).await;
        let s = self.session(&id, &mac).await;
        assert_eq!(s["state"], "active", "{s}");
        (id, mac)
    }

    pub async fn session(&self, id: &str, mac: &str) -> Value {
        let r = self.get(&format!("/v1/sessions/{id}"), Some(mac)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn chat(&self, mac: &str, body: Value) -> Response {
        self.post("/v1/chat/completions", body, Some(mac)).await
    }

    pub async fn assert_ledger_consistent(&self) -> sluice_store::LedgerReport {
        let r = self.state.sluice.store.check_ledger().await.unwrap();
        assert!(r.is_consistent(), "ledger inconsistent: {r:?}");
        r
    }

    /// Long-poll a job until it reaches `state` (bounded); its JSON then.
    pub async fn wait_for_job(&self, id: &str, state: &str) -> Value {
        for _ in 0..30 {
            let v: Value = self
                .get(&format!("/v1/jobs/{id}?wait=5"), None)
                .await
                .json()
                .await
                .unwrap();
            if v["state"] == state {
                return v;
            }
        }
        panic!("job {id} never reached {state}");
    }

    /// Poll until `f` holds (bounded), for effects of background tasks.
    pub async fn eventually<F, Fut>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..100 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for: {what}");
    }
}

impl TestApp {
    /// Challenge login: the identity token of `keys`.
    pub async fn login(&self, keys: &sluice_proto::nostr::Keys) -> String {
        let r = self.post("/v1/identity/challenge", json!({}), None).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let c: Value = r.json().await.unwrap();
        let nonce = c["nonce"].as_str().unwrap();
        let ev = sign_login(keys, nonce);
        let r = self
            .post("/v1/identity/verify", json!({ "event": ev }), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// POST with an optional session macaroon and an optional identity token.
    pub async fn post_as(
        &self,
        path: &str,
        body: Value,
        mac: Option<&str>,
        nostr_token: Option<&str>,
    ) -> Response {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(t) = mac {
            r = r.bearer_auth(t);
        }
        if let Some(t) = nostr_token {
            r = r.header("X-Nostr-Token", t);
        }
        r.send().await.unwrap()
    }

    /// GET with an identity token.
    pub async fn get_as(&self, path: &str, nostr_token: &str) -> Response {
        self.http
            .get(self.url(path))
            .header("X-Nostr-Token", nostr_token)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/identity/me` of a token.
    pub async fn me(&self, nostr_token: &str) -> Value {
        let r = self.get_as("/v1/identity/me", nostr_token).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// `GET /v1/pool`.
    pub async fn pool(&self) -> Value {
        let r = self.get("/v1/pool", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

/// A signed login event for a challenge nonce, as a NIP-07 extension makes it.
pub fn sign_login(keys: &sluice_proto::nostr::Keys, nonce: &str) -> sluice_proto::nostr::Event {
    sluice_proto::nostr::Event::sign(
        keys,
        now_secs(),
        sluice_proto::nostr::LOGIN_KIND,
        vec![vec!["challenge".into(), nonce.into()]],
        String::new(),
    )
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

pub async fn error_code(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}
