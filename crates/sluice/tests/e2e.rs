//! End-to-end tests of the `sluice` binary as a user runs it: real processes,
//! real databases, the dev wallet, a fake OpenAI upstream on a real port and
//! the bundled local model.
#![allow(
    clippy::disallowed_methods,
    reason = "fakes run on bare tasks and fixtures read the host's clock"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_gateway::testing::{FakeBehaviour, spawn_fake_openai};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn pg_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A `sluice serve` process.
struct Gateway {
    child: Child,
    base: String,
    /// Every log line so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    fn start(config: &Path) -> Gateway {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("SLUICE_LOG_FORMAT", "json")
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Read the log until the listen line, then keep draining it so the process never blocks.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if !sent
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "sluice gateway listening"
                {
                    let _ = tx.send(
                        v["fields"]["listen"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sluice serve did not start listening");
        Gateway {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// The whole log so far, one string.
    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL: no graceful shutdown
        let _ = self.child.wait();
    }

    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        panic!("sluice serve did not stop on SIGTERM");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, db_url: &str, upstream: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("sluice.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
{extra}
[database]
url = "{db_url}"
[lightning]
backend = "dev"
[oracle]
fixed_btc_usd = 100000
[sessions]
min_deposit_sats = 10
min_balance_sats = 1
[[models]]
name = "fake-model"
kind = "openai"
base_url = "{upstream}"
input_usd_per_mtok = 100.0
output_usd_per_mtok = 200.0
default_max_tokens = 100
"#
        ),
    )
    .unwrap();
    p
}

async fn new_funded_session(http: &reqwest::Client, base: &str, sats: u64) -> (String, String) {
    let v: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"amount_sats": sats}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, mac) = (
        v["session_id"].as_str().unwrap().to_owned(),
        v["macaroon"].as_str().unwrap().to_owned(),
    );
    let r = http
        .post(format!("{base}/v1/dev/pay"))
        .json(&json!({"bolt11": v["invoice"]["bolt11"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    (id, mac)
}

async fn session(http: &reqwest::Client, base: &str, id: &str, mac: &str) -> Value {
    http.get(format!("{base}/v1/sessions/{id}"))
        .bearer_auth(mac)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn check_ledger(config: &Path) {
    let out = Command::new(BIN)
        .args(["check-ledger", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-ledger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK:"));
}

#[tokio::test]
async fn two_gateways_on_one_postgres_serve_one_session_without_overspending() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = spawn_fake_openai(FakeBehaviour {
        response_delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await
    .unwrap();
    let (pg, schema) = sluice_store::postgres::PgStore::connect_isolated(&pg_url())
        .await
        .expect("PostgreSQL is needed: set SLUICE_TEST_PG_URL or run scripts/test.sh");
    let db_url = format!("{}?options=-c%20search_path%3D{schema}", pg_url());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let http = reqwest::Client::new();

    // 100 sats; each request holds 20,900 msat: at most 4 can be in flight at once.
    let (id, mac) = new_funded_session(&http, &a.base, 100).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let (http, mac) = (http.clone(), mac.clone());
        calls.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(mac)
                .json(&json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let cost = r.headers().get("x-sluice-cost-msat").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (status, cost)
        }));
    }
    let mut ok = 0u64;
    let mut spent = 0u64;
    for c in calls {
        let (status, cost) = c.await.unwrap();
        match status {
            StatusCode::OK => {
                ok += 1;
                spent += cost.unwrap();
            }
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=4).contains(&ok),
        "{ok} requests held at once against a balance that covers 4"
    );
    // Both processes see the same balance: deposit minus exactly what was charged.
    for base in [&a.base, &b.base] {
        let s = session(&http, base, &id, &mac).await;
        assert_eq!(s["balance_msat"].as_u64().unwrap(), 100_000 - spent);
        assert_eq!(s["held_msat"], 0);
    }
    // And both keep serving it.
    for base in [&a.base, &b.base] {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&mac)
            .json(&json!({"model": "fake-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    a.stop().await;
    b.stop().await;
    check_ledger(&config);
    pg.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_gateway_killed_mid_request_is_reconciled_at_the_next_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = spawn_fake_openai(FakeBehaviour {
        reply: "word ".repeat(100),
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let config = write_config(
        dir.path(),
        &db_url,
        &upstream.base_url,
        "instance_stale_secs = 1",
    );
    let a = Gateway::start(&config);
    let http = reqwest::Client::new();
    let (id, mac) = new_funded_session(&http, &a.base, 1000).await;

    let mut r = http
        .post(format!("{}/v1/chat/completions", a.base))
        .bearer_auth(&mac)
        .json(&json!({"model": "fake-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.chunk().await.unwrap().expect("a first chunk");
    assert!(
        session(&http, &a.base, &id, &mac).await["held_msat"]
            .as_u64()
            .unwrap()
            > 0
    );
    a.kill(); // mid-stream, hold open

    let b = Gateway::start(&config);
    let mut s = Value::Null;
    for _ in 0..100 {
        s = session(&http, &b.base, &id, &mac).await;
        if s["held_msat"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s["held_msat"], 0,
        "the dead gateway's hold was not released: {s}"
    );
    assert_eq!(
        s["balance_msat"], 1_000_000,
        "an abandoned request is not charged"
    );
    b.stop().await;
    check_ledger(&config);
}

#[tokio::test]
async fn wallet_pay_prints_the_preimage_of_a_dev_invoice() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("w.db").display());
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let a = Gateway::start(&config);
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{}/v1/sessions", a.base))
        .json(&json!({"amount_sats": 50}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bolt11 = v["invoice"]["bolt11"].as_str().unwrap().to_owned();
    assert!(
        bolt11.starts_with("lnbcrt"),
        "dev invoices are regtest: {bolt11}"
    );
    let out = tokio::task::spawn_blocking({
        let base = a.base.clone();
        move || {
            Command::new(BIN)
                .args(["wallet", "pay", &bolt11, "--gateway", &base])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preimage = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&preimage)),
        v["invoice"]["payment_hash"].as_str().unwrap()
    );
    let s = session(
        &http,
        &a.base,
        v["session_id"].as_str().unwrap(),
        v["macaroon"].as_str().unwrap(),
    )
    .await;
    assert_eq!(s["state"], "active");
    // Paying again is refused with a clear message.
    let again = Command::new(BIN)
        .args([
            "wallet",
            "pay",
            v["invoice"]["bolt11"].as_str().unwrap(),
            "--gateway",
            &a.base,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already paid"));

    // The refund of the closed session, claimed with an invoice of the payer's
    // own dev wallet (`sluice wallet invoice`), arrives (`sluice wallet status`).
    let (id, mac) = (
        v["session_id"].as_str().unwrap(),
        v["macaroon"].as_str().unwrap(),
    );
    let closed: Value = http
        .post(format!("{}/v1/sessions/{id}/close", a.base))
        .bearer_auth(mac)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let payout = closed["refund"]["payout_sats"].as_u64().unwrap();
    let wallet = |args: Vec<String>| {
        let base = a.base.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("wallet")
                .args(args)
                .args(["--gateway", &base])
                .output()
                .unwrap()
        })
    };
    let out = wallet(vec!["invoice".into(), payout.to_string()])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invoice = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let r = http
        .post(format!("{}/v1/sessions/{id}/refund", a.base))
        .bearer_auth(mac)
        .json(&json!({"invoice": invoice}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let paid: Value = r.json().await.unwrap();
    let out = wallet(vec![
        "status".into(),
        paid["payment_hash"].as_str().unwrap().to_owned(),
    ])
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "paid");
    a.stop().await;
}

#[cfg(feature = "local")]
#[tokio::test]
async fn the_demo_streams_a_real_answer_from_the_local_model_and_prints_a_receipt() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["demo", "--prompt", "What is the capital of France?"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stdout.contains("Receipt"), "{stdout}");
    assert!(stdout.contains("lnbcrt"), "{stdout}");
    // The receipt's figures are real numbers, not placeholders.
    let cost_line = stdout.lines().find(|l| l.contains("cost (at BTC")).unwrap();
    let cost: u64 = cost_line
        .split_whitespace()
        .rev()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(cost >= 1000, "{cost_line}");
}

/// LNbits' admin API, for creating and funding wallets.
struct LnbitsAdmin {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl LnbitsAdmin {
    fn from_env() -> LnbitsAdmin {
        let var = |n: &str| {
            std::env::var(n).unwrap_or_else(|_| {
                panic!("{n} is not set: run scripts/lnbits.sh start (scripts/test.sh does)")
            })
        };
        LnbitsAdmin {
            url: var("SLUICE_TEST_LNBITS_URL"),
            token: var("SLUICE_TEST_LNBITS_ADMIN_TOKEN"),
            http: reqwest::Client::new(),
        }
    }

    /// A new wallet: (id, invoice key, admin key).
    async fn wallet(&self, name: &str) -> (String, String, String) {
        let v: Value = self
            .http
            .post(format!("{}/api/v1/account", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let f = |k: &str| v[k].as_str().unwrap().to_owned();
        (f("id"), f("inkey"), f("adminkey"))
    }

    async fn fund(&self, wallet_id: &str, sats: u64) {
        let r = self
            .http
            .put(format!("{}/users/api/v1/balance", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"id": wallet_id, "amount": sats}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

/// Run one of the third-party npm clients in `scripts/l402-client` with `env`;
/// the JSON line it prints.
async fn run_npm_client(script: &'static str, env: &[(&'static str, String)]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/l402-client");
    let env = env.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .envs(env)
            .output()
            .expect("node is needed for this test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test]
async fn a_third_party_l402_client_pays_and_retries_against_lnbits() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/l402-client");
    assert!(
        client_dir
            .join("node_modules/@getalby/lightning-tools")
            .exists(),
        "the L402 client is not installed: run `npm ci` in scripts/l402-client (scripts/test.sh does)"
    );
    let lnbits = LnbitsAdmin::from_env();
    let (_, receiver_inkey, _) = lnbits.wallet("sluice").await;
    let (payer_id, _, payer_admin) = lnbits.wallet("l402-client").await;
    lnbits.fund(&payer_id, 10_000).await;

    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("l402.db").display());
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml = toml.replace(
        "backend = \"dev\"",
        &format!("backend = \"lnbits\"\nurl = \"{}\"\ninvoice_key = \"{receiver_inkey}\"\npoll_interval_secs = 1", lnbits.url),
    );
    std::fs::write(&config, toml).unwrap();
    let gw = Gateway::start(&config);

    let v = run_npm_client(
        "pay-and-fetch.mjs",
        &[
            ("SLUICE_URL", gw.base.clone()),
            ("LNBITS_URL", lnbits.url.clone()),
            ("LNBITS_ADMIN_KEY", payer_admin),
        ],
    )
    .await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["invoices_paid"], 1);
    assert_eq!(v["answer"], "The capital of France is Paris .");
    assert!(v["cost_msat"].as_u64().unwrap() > 0);
    gw.stop().await;
    check_ledger(&config);
}

#[tokio::test]
async fn openais_sdk_pays_from_a_session_and_the_openapi_document_validates() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/l402-client");
    assert!(
        client_dir.join("node_modules/openai").exists(),
        "the OpenAI SDK is not installed: run `npm ci` in scripts/l402-client (scripts/test.sh does)"
    );
    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("sdk.db").display());
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let gw = Gateway::start(&config);
    let http = reqwest::Client::new();
    let (id, mac) = new_funded_session(&http, &gw.base, 1000).await;
    let v = run_npm_client(
        "openai-sdk.mjs",
        &[
            ("SLUICE_URL", gw.base.clone()),
            ("SLUICE_MACAROON", mac.clone()),
        ],
    )
    .await;
    assert_eq!(v["models"], json!(["fake-model"]), "{v}");
    assert_eq!(v["answer"], "The capital of France is Paris .");
    assert_eq!(v["streamed"], "The capital of France is Paris .");
    let cost = v["usage"]["cost_msat"].as_u64().unwrap();
    assert!(cost > 0);
    assert_eq!(v["cost_header"], cost.to_string());
    assert_eq!(v["receipt"]["cost_msat"], cost);
    assert_eq!(
        v["stream_receipt"]["cost_msat"],
        v["stream_usage"]["cost_msat"]
    );
    assert_eq!(v["refused"]["status"], 401, "{v}");
    assert_eq!(v["openapi_version"], "3.1.0");
    assert_eq!(v["openapi_valid"], true, "{}", v["openapi_errors"]);
    // Both answers were charged to the session, and nothing else.
    let s = session(&http, &gw.base, &id, &mac).await;
    let both = cost + v["stream_usage"]["cost_msat"].as_u64().unwrap();
    assert_eq!(s["spent_msat"], both);
    assert_eq!(s["balance_msat"], 1_000_000 - both);
    gw.stop().await;
    check_ledger(&config);
}

#[tokio::test]
async fn a_nostr_client_logs_in_and_signs_requests_with_nostr_tools() {
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/l402-client");
    assert!(
        client_dir.join("node_modules/nostr-tools").exists(),
        "nostr-tools is not installed: run `npm ci` in scripts/l402-client (scripts/test.sh does)"
    );
    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("nostr.db").display());
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let gw = Gateway::start(&config);
    let v = run_npm_client("nostr-login.mjs", &[("SLUICE_URL", gw.base.clone())]).await;
    let pubkey = v["pubkey"].as_str().unwrap();
    // Challenge login with an event signed by nostr-tools.
    assert_eq!(v["verify_status"], 200, "{v}");
    assert_eq!(v["verified_pubkey"], pubkey);
    assert_eq!(v["tier"], "new");
    assert_eq!(v["replay_status"], 401, "a used challenge is refused");
    assert_eq!(v["me_by_token"], pubkey);
    // NIP-98 headers made by nostr-tools, with and without a payload.
    assert_eq!(v["nip98_status"], 200, "{v}");
    assert_eq!(v["me_by_nip98"], pubkey);
    assert_eq!(
        v["nip98_replay_status"], 401,
        "a used NIP-98 event is refused"
    );
    assert_eq!(v["estimate_status"], 200, "{v}");
    assert_eq!(v["estimate_free_tier"]["decision"], "gate");
    assert_eq!(v["estimate_free_tier"]["tier"], "new");
    gw.stop().await;
    check_ledger(&config);
}

/// Run the sluice binary off the async runtime: (success, stdout, stderr).
async fn sluice_cmd(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN).args(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_identity_commands_make_a_key_log_in_and_show_its_standing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = spawn_fake_openai(FakeBehaviour::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("id.db").display());
    let config = write_config(dir.path(), &db_url, &upstream.base_url, "");
    let gw = Gateway::start(&config);
    let key = dir.path().join("nostr.key");
    let key = key.to_str().unwrap();
    let (ok, out, err) = sluice_cmd(&["identity", "keygen", "--out", key]).await;
    assert!(ok, "{err}");
    assert!(out.contains("npub1"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secret key is readable by its owner only"
        );
    }
    // Never overwrites a key.
    let (ok, _, err) = sluice_cmd(&["identity", "keygen", "--out", key]).await;
    assert!(!ok);
    assert!(err.contains("must not exist"), "{err}");

    let (ok, out, err) =
        sluice_cmd(&["identity", "login", "--key", key, "--gateway", &gw.base]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tier"], "new");
    let token = v["token"].as_str().unwrap().to_owned();
    let pubkey = v["pubkey"].as_str().unwrap().to_owned();

    let (ok, out, err) = sluice_cmd(&["identity", "me", "--key", key, "--gateway", &gw.base]).await;
    assert!(ok, "{err}");
    let me: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["pubkey"], pubkey);
    assert_eq!(me["tier"], "new");
    // The token works as a header too.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/identity/me", gw.base))
        .header("X-Nostr-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A key that is not one is refused clearly.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "zz").unwrap();
    let (ok, _, err) = sluice_cmd(&["identity", "me", "--key", bad.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("not 64 hex"), "{err}");
    gw.stop().await;
}

/// Job ids are the capability for a job's refund and were logged at info (and
/// in every request's span, as the path). No capability appears in the log,
/// nor prompts; an upstream's error body does (for the operator), though it
/// never reaches the client.
#[tokio::test]
async fn the_log_has_no_capability_or_prompt_but_has_the_upstreams_errors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let judge = spawn_fake_openai(FakeBehaviour {
        reply: r#"{"accepted": true, "reason": "ok"}"#.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("log.db").display());
    let config = write_config(dir.path(), &db_url, &judge.base_url, "");
    let gw = Gateway::start(&config);
    let http = reqwest::Client::new();
    let prompt = "Tell me about the secret-prompt-7f3a of the job";
    let v: Value = http
        .post(format!("{}/v1/jobs", gw.base))
        .json(&json!({"request": prompt}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = v["job_id"].as_str().unwrap().to_owned();
    let pay = |bolt11: String| {
        http.post(format!("{}/v1/dev/pay", gw.base))
            .json(&json!({"bolt11": bolt11}))
            .send()
    };
    pay(v["eval_invoice"]["bolt11"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    let mut state = Value::Null;
    for _ in 0..40 {
        state = http
            .get(format!("{}/v1/jobs/{job}?wait=2", gw.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["state"] == "awaiting_work_payment" {
            pay(state["work_invoice"]["bolt11"].as_str().unwrap().to_owned())
                .await
                .unwrap();
        }
        if state["state"] == "complete" {
            break;
        }
    }
    assert_eq!(state["state"], "complete", "{state}");
    let log = gw.log_text();
    assert!(log.contains("job finished"), "the job's life is logged");
    assert!(!log.contains(&job), "a job id (a capability) is in the log");
    assert!(
        !log.contains("secret-prompt-7f3a"),
        "a prompt is in the log"
    );
    gw.stop().await;

    // An upstream error: its body in the log, never in the answer.
    let failing = spawn_fake_openai(FakeBehaviour {
        fail_status: Some(500),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("err.db").display());
    let config = write_config(dir.path(), &db_url, &failing.base_url, "");
    let gw = Gateway::start(&config);
    let (_, mac) = new_funded_session(&http, &gw.base, 100).await;
    let r = http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&mac)
        .json(&json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(!r.text().await.unwrap().contains("fake failure"));
    let mut logged = false;
    for _ in 0..20 {
        if gw.log_text().contains("fake failure") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "the upstream's error body is not in the log");
    gw.stop().await;
}
