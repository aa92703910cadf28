//! The service without HTTP, on a manual clock: a session-paid chat request,
//! a two-phase job and a free-tier answer through `Sluice`, and the ledger
//! balances after them. The upstream is scripted in-process (the point is the
//! service's accounting, not a model; the HTTP tests run real servers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::{Value, json};
use sluice_core::{JobState, Msat, TokenUsage, charge_for_settlement};
use sluice_env::{ManualClock, SeededIds};
use sluice_lightning::Lightning;
use sluice_service::{
    Config, ErrorKind, Sluice,
    builder::Env,
    chat::{ChatOutcome, ChatRequest},
    config::{ModelConfig, ModelKind},
    request::ChatBody,
    upstream::{ChatCall, ChunkStream, Completion, Upstream, UpstreamError},
};

/// Answers every call at once: a verdict for the jobs' evaluation prompt,
/// "four" for anything else, without a usage report (the service counts).
struct ScriptedUpstream;

#[async_trait]
impl Upstream for ScriptedUpstream {
    async fn complete(&self, call: ChatCall) -> Result<Completion, UpstreamError> {
        let judging = call
            .messages
            .iter()
            .any(|(role, text)| role == "system" && text.contains("You decide whether"));
        let text = if judging {
            r#"{"accepted": true, "reason": "a plain question"}"#
        } else {
            "four"
        };
        Ok(Completion {
            response: json!({
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": 1,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }),
            usage: None,
            text: text.into(),
            generated: text.into(),
            finish_reason: Some("stop".into()),
        })
    }

    async fn stream(&self, _call: ChatCall) -> Result<ChunkStream, UpstreamError> {
        Err(UpstreamError::Protocol(
            "this scripted upstream does not stream".into(),
        ))
    }
}

fn config(db: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.database.url = format!("sqlite://{}", db.display());
    cfg.oracle.fixed_btc_usd = Some(100_000.0);
    cfg.sessions.min_deposit_sats = 10;
    cfg.sessions.min_balance_sats = 1;
    cfg.models = vec![ModelConfig {
        name: "m".into(),
        kind: ModelKind::Local,
        base_url: None,
        api_key: None,
        upstream_model: None,
        path: None,
        // 10 and 20 msat a token: every answer here costs the 1-sat minimum.
        input_usd_per_mtok: 10.0,
        output_usd_per_mtok: 20.0,
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
    }];
    cfg.jobs.eval_model = Some("m".into());
    cfg.jobs.work_model = Some("m".into());
    cfg.sessions.ttl_secs = 7 * 86_400;
    cfg.free_tier.enabled = true;
    cfg.free_tier.pool_seed_sats = 1_000;
    // Established after paying 2 sats on 2 days: then 2 free sats a day.
    cfg.trust.established = 2;
    cfg.trust.established_days = 2;
    cfg.trust.min_tier_cost_days = 1;
    cfg.free_tier.allowance_established_sats = 2;
    cfg
}

/// Pay `bolt11` from the customer's side of the dev network, and let the
/// service see it settled (a lookup, as its poller does).
async fn pay(sluice: &Arc<Sluice>, bolt11: &str) {
    let wallet = sluice.dev_wallet.as_ref().expect("the dev wallet");
    wallet
        .counterparty()
        .pay_invoice(bolt11, Msat::ZERO)
        .await
        .expect("a dev payment");
    sluice_service::payments::poll_pending(sluice).await;
    sluice_service::jobs::poll_pending(sluice).await;
}

fn ask(text: &str) -> ChatBody {
    ChatBody::parse(
        json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": text}]}),
    )
    .expect("a valid request")
}

/// What `answer` cost by its own usage report, at the fixed price.
fn cost_of(sluice: &Sluice, answer: &Value) -> Msat {
    let usage = TokenUsage {
        input: answer["usage"]["prompt_tokens"].as_u64().unwrap(),
        output: answer["usage"]["completion_tokens"].as_u64().unwrap(),
    };
    let btc = sluice_core::BtcUsd::new(sluice_core::UsdMicros(100_000_000_000)).unwrap();
    charge_for_settlement(&sluice.models["m"].rates, usage, btc)
}

#[tokio::test]
async fn a_paid_chat_a_job_and_a_free_answer_balance_on_a_manual_clock_with_a_scripted_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_800_000_000_000));
    let upstreams: BTreeMap<String, Arc<dyn Upstream>> = [(
        "m".to_owned(),
        Arc::new(ScriptedUpstream) as Arc<dyn Upstream>,
    )]
    .into();
    let sluice = Arc::new(
        Sluice::builder(&config(&dir.path().join("s.db")))
            .upstreams(upstreams)
            .env(Env {
                clock: clock.clone(),
                ids: Arc::new(SeededIds::new(7)),
            })
            .build()
            .await
            .unwrap(),
    );
    let running = sluice.start().await;

    // An identity's session: opened, paid, spent from on two days.
    let pubkey = "ab".repeat(32);
    let session = sluice
        .open_session(1_000, Some(pubkey.clone()))
        .await
        .unwrap();
    pay(&sluice, &session.invoice.bolt11).await;
    let payer = sluice
        .verify_session(&session.macaroon, sluice.clock.now_secs())
        .unwrap();
    let paid = |body| ChatRequest {
        body,
        payer: Some(payer.clone().into()),
        pubkey: Some(pubkey.clone()),
        anonymous: String::new(),
    };
    let mut spent = Msat::ZERO;
    for day in 0..2 {
        if day > 0 {
            clock.advance(Duration::from_secs(86_400));
        }
        let ChatOutcome::Complete(answer) = sluice.chat(paid(ask("What is 2 + 2?"))).await.unwrap()
        else {
            panic!("a complete answer");
        };
        assert_eq!(answer.settled.charged, cost_of(&sluice, &answer.response));
        assert_eq!(answer.settled.charged, sluice_core::MIN_CHARGE);
        assert_eq!(answer.response["sluice"]["cost_msat"], 1_000);
        spent = spent.checked_add(answer.settled.charged).unwrap();
    }
    let (row, _) = sluice.session(&session.id).await.unwrap();
    assert_eq!(
        row.balance,
        Msat::from_msat(1_000_000).checked_sub(spent).unwrap()
    );

    // A job: evaluation paid, accepted, work paid, done, the overpayment owed back.
    let job = sluice
        .create_job(Some("What is 2 + 2?".into()), None)
        .await
        .unwrap();
    pay(&sluice, &job.eval_invoice.bolt11).await;
    let quoted = wait_for(&sluice, &job.id, JobState::AwaitingWorkPayment).await;
    let work = quoted.work_invoice.expect("a work invoice");
    pay(&sluice, &work.bolt11).await;
    let done = wait_for(&sluice, &job.id, JobState::Complete).await;
    assert_eq!(done.result.as_deref(), Some("four"));
    assert!(
        done.work_charged.expect("charged") < work.amount,
        "the work cost less than it was quoted"
    );
    assert!(done.refund_id.is_some(), "what was overpaid is owed back");

    // Paying on two days made the identity established: an answer the
    // pool pays for, with no credential at all.
    let ChatOutcome::Complete(free) = sluice
        .chat(ChatRequest {
            body: ask("And 3 + 3?"),
            payer: None,
            pubkey: Some(pubkey.clone()),
            anonymous: String::new(),
        })
        .await
        .unwrap()
    else {
        panic!("a free answer");
    };
    assert_eq!(free.response["free_tier"], Value::from("free"));
    assert_eq!(free.settled.charged, Msat::ZERO);
    assert_eq!(free.settled.absorbed, cost_of(&sluice, &free.response));

    // Virtual time: a week later the session has expired, and says so.
    clock.advance(Duration::from_secs(8 * 86_400));
    let err = sluice
        .chat(ChatRequest {
            body: ask("Still there?"),
            payer: Some(payer.clone().into()),
            pubkey: None,
            anonymous: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::PaymentRequired, "session_expired")
    );

    running.shutdown(Duration::from_secs(5)).await;
    let report = sluice.store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
}

async fn wait_for(sluice: &Arc<Sluice>, id: &str, state: JobState) -> sluice_store::JobRow {
    for _ in 0..50 {
        let job = sluice.job(id, Some(1)).await.unwrap();
        if job.state == state {
            return job;
        }
    }
    panic!("job {id} never reached {}", state.as_str());
}

/// Job and L402 token ids are capabilities: a seeded id generator (the
/// simulator's) is refused with any backend that moves real money.
#[tokio::test]
async fn seeded_ids_are_refused_where_real_money_moves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("s.db"));
    cfg.lightning.backend = sluice_service::config::LightningBackend::Lnbits;
    let err = Sluice::builder(&cfg)
        .env(Env {
            clock: Arc::new(ManualClock::at(0)),
            ids: Arc::new(SeededIds::new(1)),
        })
        .build()
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("seeded"), "{err}");
}
