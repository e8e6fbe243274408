//! The random parts of the workload: think times, arrival gaps, the day/night shape, and mail
//! of realistic sizes (log-normal, some with an attachment).

use base64::Engine as _;
use rand::Rng;

/// Words the generated text is made of (text compresses like text, not like noise).
pub const WORDS: &[&str] = &[
    "quarterly",
    "report",
    "meeting",
    "lunch",
    "project",
    "update",
    "invoice",
    "travel",
    "schedule",
    "review",
    "budget",
    "draft",
    "notes",
    "photos",
    "weekend",
    "plan",
    "launch",
    "contract",
    "question",
    "reminder",
    "the",
    "and",
    "we",
    "will",
    "send",
    "you",
    "tomorrow",
    "please",
    "thanks",
    "call",
    "about",
    "new",
    "team",
    "office",
    "family",
    "friday",
];

/// An exponential draw with the given mean (inverse transform).
pub fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    -u.ln() * mean
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A log-normal draw with the given mean and shape `sigma`.
pub fn log_normal(rng: &mut impl Rng, mean: f64, sigma: f64) -> f64 {
    let mu = mean.ln() - sigma * sigma / 2.0;
    (mu + sigma * normal(rng)).exp()
}

/// The load level at `t_secs` into the run, as a fraction of the peak: 1 without a day/night
/// period, else a sine between 2/3 (night) and 1 (peak), starting at the peak.
pub fn level(t_secs: f64, period_secs: Option<f64>) -> f64 {
    match period_secs {
        Some(p) if p > 0.0 => {
            let phase = (2.0 * std::f64::consts::PI * t_secs / p).cos();
            2.0 / 3.0 + (1.0 / 3.0) * (0.5 + 0.5 * phase)
        }
        _ => 1.0,
    }
}

/// How message sizes are drawn.
#[derive(Debug, Clone, Copy)]
pub struct SizeModel {
    /// Mean message size in bytes.
    pub mean: f64,
    /// Shape of the log-normal.
    pub sigma: f64,
    /// Messages larger than this carry an attachment for the part above it.
    pub attach_over: usize,
    /// No message is larger (smtp-in's limit, and about 1 MB of attachment).
    pub max: usize,
}

impl SizeModel {
    pub fn new(mean: f64, max: usize) -> SizeModel {
        SizeModel {
            mean,
            sigma: 1.2,
            attach_over: 20_000,
            max,
        }
    }

    pub fn draw(&self, rng: &mut impl Rng) -> usize {
        (log_normal(rng, self.mean, self.sigma) as usize).clamp(600, self.max.max(600))
    }
}

/// Text of about `n` bytes, in lines of words.
pub fn text(rng: &mut impl Rng, n: usize) -> String {
    let mut out = String::with_capacity(n + 80);
    let mut line = 0;
    while out.len() < n {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        out.push_str(w);
        line += w.len() + 1;
        if line > 70 {
            out.push_str("\r\n");
            line = 0;
        } else {
            out.push(' ');
        }
    }
    out.push_str("\r\n");
    out
}

/// A subject line of a few words.
pub fn subject(rng: &mut impl Rng) -> String {
    let n = rng.random_range(2..6);
    (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// An RFC 5322 message of about `size` bytes from `from` to `to`: plain text, or for sizes above
/// the model's threshold a text part and a binary attachment (random bytes, base64) making up
/// the rest.
pub fn message(
    rng: &mut impl Rng,
    from: &str,
    to: &str,
    size: usize,
    model: &SizeModel,
) -> Vec<u8> {
    let id: u64 = rng.random();
    let head = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nDate: Mon, 22 Nov 1999 10:00:00 +0000\r\n\
         Message-ID: <load-{id:016x}@loadgen.test>\r\nMIME-Version: 1.0\r\n",
        subject(rng)
    );
    if size <= model.attach_over {
        let body = text(rng, size.saturating_sub(head.len() + 60));
        return format!("{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").into_bytes();
    }
    let text_len = rng.random_range(500..4000);
    // base64 grows the data by 4/3 and adds a line break every 76 characters.
    let raw_len = (size.saturating_sub(head.len() + text_len + 400)) * 3 / 4;
    let mut raw = vec![0u8; raw_len];
    rng.fill(&mut raw[..]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    let mut b64 = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        b64.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        b64.push_str("\r\n");
    }
    let boundary = format!("b{id:016x}");
    format!(
        "{head}Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"scan-{id:x}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}--{boundary}--\r\n",
        text(rng, text_len)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_have_the_asked_means() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 200_000;
        let e: f64 = (0..n).map(|_| exponential(&mut rng, 2.0)).sum::<f64>() / n as f64;
        assert!((e - 2.0).abs() < 0.05, "exponential mean {e}");
        let l: f64 = (0..n)
            .map(|_| log_normal(&mut rng, 30_000.0, 1.2))
            .sum::<f64>()
            / n as f64;
        assert!((l - 30_000.0).abs() < 1500.0, "log-normal mean {l}");
    }

    #[test]
    fn day_and_night_stay_between_two_thirds_and_one() {
        assert_eq!(level(5.0, None), 1.0);
        assert!((level(0.0, Some(60.0)) - 1.0).abs() < 1e-9);
        assert!((level(30.0, Some(60.0)) - 2.0 / 3.0).abs() < 1e-9);
        for t in 0..200 {
            let l = level(t as f64 * 0.7, Some(60.0));
            assert!((2.0 / 3.0 - 1e-9..=1.0 + 1e-9).contains(&l));
        }
    }

    #[test]
    fn messages_come_near_their_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let model = SizeModel::new(30_000.0, 1_000_000);
        for size in [700, 5_000, 19_000, 25_000, 300_000, 1_000_000] {
            let m = message(&mut rng, "a@x.test", "b@megamail.test", size, &model);
            let got = m.len() as f64;
            assert!(
                (got - size as f64).abs() < size as f64 * 0.1 + 200.0,
                "{size}: {got}"
            );
            let text = String::from_utf8(m).unwrap();
            assert!(text.contains("\r\n\r\n"));
            assert_eq!(size > model.attach_over, text.contains("attachment;"));
            assert!(text.lines().all(|l| l.len() < 1000));
        }
        for _ in 0..1000 {
            let s = model.draw(&mut rng);
            assert!((600..=1_000_000).contains(&s));
        }
    }
}
