//! The pure money core on the request path: pricing, reservation, settlement, postings.
//! `cargo bench -p sluice-core`
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_core::{
    Allowances, BtcUsd, ModelRates, Msat, Posting, TokenUsage, TrustRules, UsdMicros, charge_for,
    decide_for, grant, reserve, settle,
};
use std::hint::black_box;

fn rates() -> ModelRates {
    ModelRates {
        input_per_mtok: UsdMicros::parse("3").unwrap(),
        output_per_mtok: UsdMicros::parse("15").unwrap(),
        infra_monthly: UsdMicros::parse("100").unwrap(),
        expected_monthly_requests: 1000,
        margin_bps: 2500,
    }
}

fn bench(c: &mut Criterion) {
    let r = rates();
    let btc = BtcUsd::new(UsdMicros::parse("97123.45").unwrap()).unwrap();
    c.bench_function("charge_for", |b| {
        b.iter(|| {
            charge_for(
                black_box(&r),
                black_box(TokenUsage {
                    input: 1234,
                    output: 567,
                }),
                black_box(btc),
            )
        })
    });
    c.bench_function("reserve", |b| {
        b.iter(|| {
            reserve(
                black_box(&r),
                black_box(btc),
                black_box(1234),
                black_box(4096),
            )
        })
    });
    c.bench_function("settle+postings", |b| {
        b.iter(|| {
            let hold = Msat::from_msat(black_box(123_456));
            let s = settle(hold, Msat::from_msat(black_box(100_000)));
            Posting::settle(
                "ses_0123456789abcdef01234567",
                "req_0123456789abcdef01234567",
                hold,
                s,
            )
            .unwrap()
        })
    });
    let allowances = Allowances::default();
    let trust = TrustRules::default();
    c.bench_function("free_tier_decide", |b| {
        b.iter(|| {
            let score = trust.decayed(black_box(12_000), black_box(0), black_box(45 * 86_400_000));
            decide_for(
                trust.tier_of(score, black_box(20)),
                black_box(&allowances),
                Msat::from_msat(black_box(30_000)),
                Msat::from_msat(black_box(5_000_000)),
                Msat::from_msat(black_box(28_000)),
            )
        })
    });
    c.bench_function("grant+posting", |b| {
        b.iter(|| {
            let g = grant(
                Msat::from_msat(black_box(28_000)),
                Msat::from_msat(black_box(18_000)),
                Msat::from_msat(black_box(5_000_000)),
                Some(Msat::from_msat(black_box(20_000))),
            );
            Posting::grant("req_0123456789abcdef01234567", g).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
