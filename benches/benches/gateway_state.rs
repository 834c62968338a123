//! Criterion benches of the gateway's in-memory hot path: the key cache lookup (with few and
//! many keys cached) and a reservation followed by its settlement.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use domain::Money;
use domain::services::Fit;
use gateway::auth::{Cached, KeyCache, KeyEntry};
use gateway::budget::KeyBudget;

fn entry(i: u64) -> ([u8; 32], KeyEntry) {
    let token = format!("kc_{i:048x}");
    let key = db::keys::ApiKey {
        id: uuid::Uuid::from_u128(u128::from(i) + 1),
        org_id: uuid::Uuid::nil(),
        membership_id: uuid::Uuid::nil(),
        member_email: "bench@example.com".into(),
        master_key_id: uuid::Uuid::nil(),
        service: "openrouter".into(),
        name: "bench".into(),
        prefix: token[..11].to_string(),
        cap: Money::from_usd(100),
        spent: Money::ZERO,
        model_scope: vec![],
        renew_monthly: false,
        period_start: time::macros::date!(2026 - 11 - 01),
        paused_reason: None,
        expires_at: None,
        created_at: time::OffsetDateTime::UNIX_EPOCH,
        closed_at: None,
        close_reason: None,
        changed_at: time::OffsetDateTime::UNIX_EPOCH,
        rate_limit_rpm: None,
    };
    (domain::token::hash_token(&token), KeyEntry::from_row(&key))
}

fn cache_of(n_keys: u64) -> (KeyCache, Vec<[u8; 32]>) {
    let cache = KeyCache::new(Duration::from_secs(10));
    let mut hashes = Vec::new();
    for i in 0..n_keys {
        let (hash, entry) = entry(i);
        cache.insert(hash, entry);
        hashes.push(hash);
    }
    (cache, hashes)
}

/// Hash a token and find its key, rotating over every cached key, so that with 100,000 keys the
/// lookups miss the CPU caches as they would under real traffic.
fn cache_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_cache_lookup");
    for n_keys in [10u64, 100_000] {
        let (cache, _hashes) = cache_of(n_keys);
        let tokens: Vec<String> = (0..n_keys).map(|i| format!("kc_{i:048x}")).collect();
        let mut next = 0usize;
        group.bench_function(format!("hash_and_lookup_{n_keys}_keys"), |b| {
            b.iter(|| {
                next = (next + 7919) % tokens.len();
                let hash = domain::token::hash_token(black_box(&tokens[next]));
                matches!(cache.get(&hash), Cached::Known(_))
            })
        });
    }
    group.finish();
}

fn reserve_and_settle(c: &mut Criterion) {
    let budget = KeyBudget::new(Money::from_usd(1_000_000), Money::ZERO);
    // The gateway reserves within the lease Postgres granted it.
    budget.grow(Money::from_usd(1_000_000));
    let reserve = Money::from_nanos(200_000);
    c.bench_function("reserve_then_settle", |b| {
        b.iter(|| {
            let fit = budget.reserve(|remaining| {
                if reserve <= remaining {
                    Fit::AsRequested { reserve }
                } else {
                    Fit::Refuse {
                        need_at_least: reserve,
                    }
                }
            });
            budget.settle(reserve, black_box(Money::from_nanos(123_456)));
            fit
        })
    });
}

criterion_group!(benches, cache_lookup, reserve_and_settle);
criterion_main!(benches);
