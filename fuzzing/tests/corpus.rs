//! Every target over its committed corpus (`fuzzing/corpus/<target>/`: inputs found by
//! cargo-fuzz, crashes once fixed), then a seeded mutation smoke of each: a quick,
//! stable-toolchain run in the normal test command. The coverage-guided runs are
//! `scripts/fuzz.sh` (nightly).

use std::path::PathBuf;

use petrel_fuzzing::TARGETS;

/// Mutated inputs per target in the smoke.
const SMOKE_INPUTS: usize = 20_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One input derived from `seed`: bytes flipped, inserted, deleted, spliced, or fresh.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = if seeds.is_empty() || rng.below(8) == 0 {
        (0..rng.below(300)).map(|_| rng.next() as u8).collect()
    } else {
        seeds[rng.below(seeds.len())].clone()
    };
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 => v.insert(at, rng.next() as u8),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 if at < v.len() => v[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            _ => {
                let other = &seeds
                    .get(rng.below(seeds.len().max(1)))
                    .cloned()
                    .unwrap_or_default();
                let from = rng.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().take(16).copied());
            }
        }
    }
    v
}

#[test]
fn every_target_survives_its_corpus_and_a_mutation_smoke() {
    let mut report = Vec::new();
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let seeds = corpus(name);
        assert!(
            !seeds.is_empty(),
            "fuzzing/corpus/{name}/ is empty: run scripts/fuzz.sh {name} to seed it"
        );
        for input in &seeds {
            target(input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        for _ in 0..SMOKE_INPUTS {
            target(&mutate(&mut rng, &seeds));
        }
        report.push(format!(
            "{name}: {} corpus + {SMOKE_INPUTS} mutated",
            seeds.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
}
