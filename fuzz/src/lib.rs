//! A hostile-input sweep on stable Rust: every decoder that reads bytes from outside (XFS and
//! index frames and records, SMTP dialogues, login and API forms and JSON, session tokens and
//! cookies, MIME, message HTML) is fed random inputs and mutations of valid ones — bits flipped,
//! bytes inserted, deleted, duplicated or cut, lengths that lie — and must answer each with a
//! value or an error, never a panic. Deterministic for a seed, so a failure can be replayed.
//!
//! A [`Target`] names a decoder, gives valid seed inputs and runs one input; [`sweep`] runs a
//! target and reports every input that panicked (in hex).

use std::panic::{self, AssertUnwindSafe};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub mod targets;

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Decode one input; any outcome but a panic is a pass.
    pub run: fn(&[u8]),
}

/// An input that panicked and what the panic said.
#[derive(Debug, Clone)]
pub struct Failure {
    pub input: Vec<u8>,
    pub message: String,
}

/// What a sweep of one target found.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub failures: Vec<Failure>,
}

/// Bytes that sit on the decoders' edges: separators of SMTP, HTTP forms, JSON, MIME and HTML,
/// and the bincode varint markers (251–254 announce a 2-, 4-, 8- or 16-byte integer).
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, 0xfe, 0xfb, 0xfc, 0xfd, b'\r', b'\n', b'.', b'<', b'>', b'@', b':',
    b'=', b'&', b'%', b'+', b'"', b'\\', b'{', b'}', b'[', b']', b';', b'-', b' ', b'\t',
];

/// Integers that make lengths lie: zero, one, the edges of each width, and huge claims.
const LENGTHS: &[u64] = &[
    0,
    1,
    0x7f,
    0xfa,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    u64::MAX >> 2,
    u64::MAX,
];

/// One mutation of `seed`, drawing from `pool` for splices.
pub fn mutate(rng: &mut StdRng, seed: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.random_range(0..6u32);
    for _ in 0..rounds {
        let len = v.len();
        match rng.random_range(0..11u32) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8u32);
            }
            // A random byte.
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = rng.random();
            }
            // An edge byte.
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            // Insert a few bytes.
            3 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8usize);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        if rng.random_bool(0.5) {
                            INTERESTING[rng.random_range(0..INTERESTING.len())]
                        } else {
                            rng.random()
                        }
                    })
                    .collect();
                v.splice(i..i, bytes);
            }
            // Delete a range.
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            // Duplicate a range.
            5 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let piece = v[i..i + n].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, piece);
            }
            // Truncate.
            6 if len > 0 => v.truncate(rng.random_range(0..len)),
            // Overwrite with a lying length: a varint marker and a big value, or raw bytes.
            7 => {
                let n = LENGTHS[rng.random_range(0..LENGTHS.len())];
                let i = rng.random_range(0..=len);
                let bytes: Vec<u8> = match rng.random_range(0..3u32) {
                    0 => {
                        let mut b = vec![0xfd];
                        b.extend_from_slice(&n.to_le_bytes());
                        b
                    }
                    1 => (n as u32).to_be_bytes().to_vec(),
                    _ => n.to_string().into_bytes(),
                };
                let end = (i + bytes.len()).min(len);
                v.splice(i..end, bytes);
            }
            // Splice in part of another seed.
            8 if !pool.is_empty() => {
                let other = &pool[rng.random_range(0..pool.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len());
                    let at = rng.random_range(0..=v.len());
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            // Swap two bytes.
            9 if len > 1 => {
                let (i, j) = (rng.random_range(0..len), rng.random_range(0..len));
                v.swap(i, j);
            }
            // Repeat the tail: long lines, deep nesting.
            10 if len > 0 => {
                let i = rng.random_range(0..len);
                let piece = v[i..].to_vec();
                for _ in 0..rng.random_range(1..16u32) {
                    v.extend_from_slice(&piece);
                }
                v.truncate(1 << 16);
            }
            _ => {}
        }
    }
    v
}

/// An input for a target: mostly a mutated seed, sometimes a seed as it is or random bytes.
fn next_input(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let roll = rng.random_range(0..100u32);
    if roll < 5 || seeds.is_empty() {
        let n = rng.random_range(0..256usize);
        (0..n).map(|_| rng.random()).collect()
    } else {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        if roll < 8 {
            seed.clone()
        } else {
            mutate(rng, seed, seeds)
        }
    }
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Run `target` on `iterations` inputs drawn from `seed`. Panics are caught and reported, not
/// printed as they happen (the hook is silenced for the sweep).
pub fn sweep(target: &Target, iterations: u64, seed: u64) -> Report {
    let seeds = (target.seeds)();
    // The target's name picks its own stream, so targets do not all see the same draws.
    let salt = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    let mut report = Report::default();
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    for _ in 0..iterations {
        let input = next_input(&mut rng, &seeds);
        report.inputs += 1;
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            report.failures.push(Failure {
                message: panic_text(payload.as_ref()),
                input,
            });
        }
    }
    panic::set_hook(hook);
    report
}

/// Every target, in a fixed order.
pub fn all() -> Vec<Target> {
    targets::all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_vary() {
        let pool = vec![b"hello world".to_vec(), b"MAIL FROM:<a@b>".to_vec()];
        let a: Vec<_> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..50).map(|_| mutate(&mut r, &pool[0], &pool)).collect()
        };
        let b: Vec<_> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..50).map(|_| mutate(&mut r, &pool[0], &pool)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().filter(|m| *m != &pool[0]).count() > 40);
    }

    #[test]
    fn a_panicking_decoder_is_caught_and_reported() {
        let t = Target {
            name: "panics-on-x",
            seeds: || vec![b"abc".to_vec()],
            run: |input| assert!(!input.contains(&b'x'), "found an x"),
        };
        let r = sweep(&t, 3000, 1);
        assert_eq!(r.inputs, 3000);
        assert!(!r.failures.is_empty());
        assert!(r.failures.iter().all(|f| f.input.contains(&b'x')));
        assert_eq!(r.failures[0].message, "found an x");
    }
}
