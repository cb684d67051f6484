//! The one fuzz driver every crate's `fuzz` test module uses (the others include this file
//! with `#[path]`, so there is a single copy and no extra crate to build).
//!
//! proptest runs on the stable toolchain inside `cargo test`, but it counts cases, and a long
//! fuzzing run is asked for in time: this runs rounds of cases until `TIDEWATER_FUZZ_SECONDS`
//! are spent (a short default keeps the test command quick), each round on a fresh seed that a
//! failure prints, so the failing round replays. Nothing is persisted: a failure found becomes
//! a named regression test, not a file.

use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// Per target when `TIDEWATER_FUZZ_SECONDS` is unset: the fuzz targets of all crates together
/// must add only seconds to the test command.
const SHORT: Duration = Duration::from_millis(1000);

/// How long one round should take: short enough that the deadline is kept to within it,
/// long enough that starting a round costs nothing.
const ROUND: Duration = Duration::from_millis(250);

/// Runs `test` on values of `strategy` until the time budget is spent; panics with the
/// smallest failing input proptest finds, and how to replay it.
pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = env("TIDEWATER_FUZZ_SECONDS")
        .map(|s| Duration::from_secs_f64(s.parse().expect("TIDEWATER_FUZZ_SECONDS: seconds")))
        .unwrap_or(SHORT);
    let replay = env("TIDEWATER_FUZZ_SEED").map(|s| s.parse::<u64>().expect("a u64 seed"));
    let replay_cases = env("TIDEWATER_FUZZ_CASES").map(|s| s.parse::<u32>().expect("a count"));
    let mut seeds = SplitMix(replay.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }));
    let start = Instant::now();
    let deadline = start + budget;
    let slowest = std::cell::Cell::new(Duration::ZERO);
    // A reference, so every round's runner takes the same closure.
    let timed = &|value: S::Value| {
        let t = Instant::now();
        let result = test(value);
        slowest.set(slowest.get().max(t.elapsed()));
        result
    };
    let (mut cases, mut round_cases) = (0u64, replay_cases.unwrap_or(16));
    loop {
        // A replayed seed is used as is, so the failing round is the first one again.
        let seed = if cases == 0 && replay.is_some() {
            seeds.0
        } else {
            seeds.next()
        };
        let mut runner = TestRunner::new(Config {
            cases: round_cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            // Shrinking is what turns a failure into a regression test, but it must end.
            max_shrink_time: 60_000,
            ..Config::default()
        });
        let round = Instant::now();
        if let Err(e) = runner.run(&strategy, timed) {
            let replay = format!("TIDEWATER_FUZZ_SEED={seed} TIDEWATER_FUZZ_CASES={round_cases}");
            panic!("fuzz {name}: {e}\nreplay: {replay}");
        }
        cases += u64::from(round_cases);
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let per_case = round.elapsed().as_secs_f64() / f64::from(round_cases);
        let fit = ROUND.min(deadline - now).as_secs_f64() / per_case.max(1e-9);
        round_cases = (fit as u32).clamp(1, 100_000);
    }
    let secs = start.elapsed().as_secs_f64();
    // The script greps this line; in the test command it shows only with --nocapture.
    eprintln!(
        "fuzz {name}: {cases} cases in {secs:.1} s ({:.0}/s), slowest case {} ms",
        cases as f64 / secs,
        slowest.get().as_millis()
    );
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// Seeds for successive rounds from one starting value.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
