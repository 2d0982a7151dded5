//! The engine against the reference model on ≥ 100,000 random (model, request) cases: cached,
//! uncached and `explain` must all agree with the reference, with zero disagreements. The seed
//! comes from `PM_DIFF_SEED` (default: fixed) and is printed on failure.

use std::sync::Arc;

use pm_core::event::Actor;
use pm_permissions::clock::ManualClock;

use crate::model_gen::*;

const MODELS: u64 = 2_500;
const REQUESTS_PER_MODEL: u64 = 48;

#[test]
fn engine_agrees_with_reference_model() {
    let seed: u64 =
        std::env::var("PM_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2024);
    let pools = Pools::new();
    let mut rng = Rng(seed);
    let mut cases = 0u64;
    let mut allowed = 0u64;
    for model_no in 0..MODELS {
        let model = random_model(&mut rng, &pools);
        let clock = Arc::new(ManualClock::at(t(0)));
        let engine = engine(&model, clock.clone());
        for req_no in 0..REQUESTS_PER_MODEL {
            let req = random_request(&mut rng, &pools);
            clock.set(t(req.now));
            let want = reference(&model, &req);
            let cached = engine.is_allowed(req.user, req.action, &req.resource);
            let uncached = engine.is_allowed_uncached(req.user, req.action, &req.resource);
            // Ask again: now from the cache for sure.
            let again = engine.is_allowed(req.user, req.action, &req.resource);
            let explained = if req_no % 8 == 0 {
                engine.explain(&Actor::User(req.user), req.action, &req.resource).allowed
            } else {
                want
            };
            assert!(
                cached == want && uncached == want && again == want && explained == want,
                "disagreement (seed {seed}, model {model_no}, request {req_no}): reference \
                 {want}, cached {cached}, uncached {uncached}, again {again}, explain \
                 {explained}\nmodel: {model:#?}\nrequest: {req:#?}"
            );
            cases += 1;
            allowed += u64::from(want);
        }
    }
    assert!(cases >= 100_000);
    // The generator must exercise both outcomes substantially.
    assert!(allowed > cases / 20 && allowed < cases * 19 / 20, "{allowed} of {cases}");
}
