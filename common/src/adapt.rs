//! The compression that fits a link (`compression = "auto"`, the default): store on a link
//! faster than compression, compress harder on a slow one. Pure: the daemon measures each
//! finished transfer (plain and wire bytes, time spent compressing, time the link took) and
//! hands the numbers in; this decides what the next transfer to that receiver uses.
//!
//! The model is the sender's pipeline: read, compress and send overlap, so a file takes as
//! long as its slowest stage. Per plain byte, a codec costs `max(1 / speed, 1 / (ratio x link))`
//! (compression speed in plain bytes/s, the link in wire bytes/s); storing costs `1 / link`.
//! Each codec's speed and ratio are the last measured ones (smoothed), or, before it was ever
//! used, the measured ones of the nearest used codec scaled by zstd's usual factors ([`PRIOR`]).
//! A codec replaces the current one only when it is predicted [`HYSTERESIS`] faster, so noise
//! does not flip the level from file to file.

use std::time::Duration;

/// What one transfer is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// The plain bytes (`Encoding::Plain` on the wire).
    Store,
    /// One zstd frame at this level (negative levels are zstd's fast ones).
    Zstd(i32),
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Store => f.write_str("store (no compression)"),
            Codec::Zstd(l) => write!(f, "zstd level {l}"),
        }
    }
}

/// The codecs "auto" chooses from, fastest first, with zstd's usual speed and ratio relative
/// to level 1 (its own benchmarks on mixed data, and on pgbench WAL here: level 1 already
/// shrinks it about 12x at several hundred MB/s per core). Used only until a codec is measured.
pub const PRIOR: &[(Codec, f64, f64)] = &[
    (Codec::Zstd(-7), 2.0, 0.6),
    (Codec::Zstd(-3), 1.4, 0.8),
    (Codec::Zstd(1), 1.0, 1.0),
    (Codec::Zstd(3), 0.6, 1.1),
    (Codec::Zstd(6), 0.3, 1.15),
];
/// A new codec must be predicted this much faster (fraction of the current one's time).
pub const HYSTERESIS: f64 = 0.15;
/// Weight of the newest measurement in the smoothed values.
const SMOOTHING: f64 = 0.4;
/// Transfers smaller than this say little about speeds (fixed costs dominate): not used.
pub const MIN_SAMPLE_BYTES: u64 = 1 << 20;

/// One finished transfer, as measured by the sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub codec: Codec,
    /// Bytes of the file.
    pub plain: u64,
    /// Bytes of its encoding on the wire.
    pub wire: u64,
    /// Time spent in the encoder (zero when stored).
    pub compress: Duration,
    /// Time the link was the bottleneck: from the first wire byte until the receiver had all
    /// of them, less the time the sending task waited for the encoder.
    pub link: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Measured {
    /// Plain bytes per second through the encoder.
    speed: f64,
    /// Plain bytes per wire byte.
    ratio: f64,
}

/// What is known about one receiver's link and the codecs tried on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapt {
    current: Codec,
    /// Wire bytes per second the link carried, smoothed.
    link: Option<f64>,
    measured: Vec<(Codec, Measured)>,
}

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o + SMOOTHING * (new - o),
        None => new,
    }
}

impl Adapt {
    /// Start with `first` (the configured `compression_level`) until something is measured.
    pub fn new(first: Codec) -> Self {
        Adapt {
            current: first,
            link: None,
            measured: Vec::new(),
        }
    }

    /// The codec for the next transfer.
    pub fn codec(&self) -> Codec {
        self.current
    }

    /// The smoothed link speed in wire bytes per second, once measured.
    pub fn link_speed(&self) -> Option<f64> {
        self.link
    }

    /// Take in one transfer's numbers; the new codec when the decision changed.
    pub fn observe(&mut self, s: Sample) -> Option<Codec> {
        if s.plain < MIN_SAMPLE_BYTES || s.wire == 0 {
            return None;
        }
        let link_secs = s.link.as_secs_f64().max(1e-6);
        self.link = Some(smooth(self.link, s.wire as f64 / link_secs));
        if let Codec::Zstd(_) = s.codec {
            let speed = s.plain as f64 / s.compress.as_secs_f64().max(1e-6);
            let ratio = s.plain as f64 / s.wire as f64;
            match self.measured.iter_mut().find(|(c, _)| *c == s.codec) {
                Some((_, m)) => {
                    m.speed = smooth(Some(m.speed), speed);
                    m.ratio = smooth(Some(m.ratio), ratio);
                }
                None => self.measured.push((s.codec, Measured { speed, ratio })),
            }
        }
        let next = self.decide();
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }

    /// Speed and ratio of `codec`: measured, or scaled from a measured one by [`PRIOR`].
    fn estimate(&self, codec: Codec) -> Option<Measured> {
        if let Some((_, m)) = self.measured.iter().find(|(c, _)| *c == codec) {
            return Some(*m);
        }
        let factors = |c: Codec| {
            PRIOR
                .iter()
                .find(|(p, ..)| *p == c)
                .map(|(_, s, r)| (*s, *r))
        };
        let (fs, fr) = factors(codec)?;
        // The measured codec closest in the ladder is the best base for the factors.
        let level = |c: Codec| match c {
            Codec::Zstd(l) => l,
            Codec::Store => i32::MIN,
        };
        let (base, m) = self
            .measured
            .iter()
            .filter(|(c, _)| factors(*c).is_some())
            .min_by_key(|(c, _)| (level(*c) - level(codec)).unsigned_abs())?;
        let (bs, br) = factors(*base).expect("filtered");
        Some(Measured {
            speed: m.speed * fs / bs,
            ratio: (m.ratio * fr / br).max(1.0),
        })
    }

    /// Predicted seconds per plain byte with `codec` on this link.
    fn cost(&self, codec: Codec, link: f64) -> Option<f64> {
        match codec {
            Codec::Store => Some(1.0 / link),
            Codec::Zstd(_) => {
                let m = self.estimate(codec)?;
                Some((1.0 / m.speed).max(1.0 / (m.ratio * link)))
            }
        }
    }

    fn decide(&self) -> Codec {
        let Some(link) = self.link else {
            return self.current;
        };
        let Some(now) = self.cost(self.current, link) else {
            return self.current;
        };
        let candidates = std::iter::once(Codec::Store).chain(PRIOR.iter().map(|(c, ..)| *c));
        let best = candidates
            .filter_map(|c| self.cost(c, link).map(|t| (c, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((c, t)) if t < now * (1.0 - HYSTERESIS) => c,
            _ => self.current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;
    const SEG: u64 = 16 << 20;

    /// A transfer of one 16 MiB segment with `codec` at `speed` plain B/s and `ratio`, over
    /// a link of `link` wire B/s, timed as the sender measures it.
    fn sample(codec: Codec, speed: f64, ratio: f64, link: f64) -> Sample {
        let (plain, wire) = match codec {
            Codec::Store => (SEG, SEG),
            Codec::Zstd(_) => (SEG, (SEG as f64 / ratio) as u64),
        };
        Sample {
            codec,
            plain,
            wire,
            compress: match codec {
                Codec::Store => Duration::ZERO,
                Codec::Zstd(_) => Duration::from_secs_f64(plain as f64 / speed),
            },
            link: Duration::from_secs_f64(wire as f64 / link),
        }
    }

    #[test]
    fn a_link_faster_than_compression_stores() {
        // Loopback: the link carries 2 GB/s, zstd-1 compresses 400 MB/s at 12x.
        let mut a = Adapt::new(Codec::Zstd(1));
        let changed = a.observe(sample(Codec::Zstd(1), 400.0 * MB, 12.0, 2000.0 * MB));
        assert_eq!(changed, Some(Codec::Store));
        // Storing, the link stays fast: no change.
        assert_eq!(a.observe(sample(Codec::Store, 0.0, 1.0, 2000.0 * MB)), None);
        assert_eq!(a.codec(), Codec::Store);
    }

    #[test]
    fn a_100_mbit_link_keeps_compressing_at_level_1_or_higher() {
        let link = 12.5 * MB;
        let mut a = Adapt::new(Codec::Zstd(1));
        a.observe(sample(Codec::Zstd(1), 400.0 * MB, 12.0, link));
        let Codec::Zstd(level) = a.codec() else {
            panic!("stores on 100 Mbit/s: {a:?}");
        };
        assert!(level >= 1, "{level}");
        // Whatever it moved to, more samples on the same link keep it compressing.
        for _ in 0..5 {
            let c = a.codec();
            a.observe(sample(c, 400.0 * MB * 0.6, 13.0, link));
            assert!(matches!(a.codec(), Codec::Zstd(l) if l >= 1), "{a:?}");
        }
    }

    #[test]
    fn a_link_between_picks_a_fast_level_and_returns_when_the_link_slows() {
        // 10 Gbit/s-ish link (1.1 GB/s) with zstd-1 at 500 MB/s and 12x: compression is the
        // bottleneck, a faster level (or storing) wins.
        let mut a = Adapt::new(Codec::Zstd(1));
        a.observe(sample(Codec::Zstd(1), 500.0 * MB, 12.0, 1100.0 * MB));
        assert_eq!(a.codec(), Codec::Store, "{a:?}");
        // The link drops to 50 MB/s (measured while storing): compress again.
        for _ in 0..4 {
            a.observe(sample(Codec::Store, 0.0, 1.0, 50.0 * MB));
        }
        assert!(matches!(a.codec(), Codec::Zstd(_)), "{a:?}");
    }

    #[test]
    fn a_slow_cpu_on_a_fast_link_uses_a_negative_level_before_storing() {
        // The link carries 300 MB/s of wire bytes; zstd-1 does 150 MB/s at 10x. Storing costs
        // 1/300; -7 (prior: 300 MB/s, 6x) costs max(1/300, 1/1800) = 1/300 too; -3 (210 MB/s)
        // costs 1/210. Storing or -7 tie; both beat level 1 (1/150) by far.
        let mut a = Adapt::new(Codec::Zstd(1));
        a.observe(sample(Codec::Zstd(1), 150.0 * MB, 10.0, 300.0 * MB));
        assert!(matches!(a.codec(), Codec::Store | Codec::Zstd(-7)), "{a:?}");
    }

    #[test]
    fn noise_does_not_flip_the_codec() {
        // Compression and the link about even: within the hysteresis, stay.
        let mut a = Adapt::new(Codec::Zstd(1));
        for link in [40.0, 45.0, 38.0, 42.0] {
            a.observe(sample(Codec::Zstd(1), 400.0 * MB, 12.0, link * MB));
        }
        // 1/400 MB vs 1/(12 * 40) MB: level 1 costs max(2.5, 2.08) ns/B, level 3 max(4.2, 1.9)
        // ns/B, storing 25 ns/B: level 1 stays.
        assert_eq!(a.codec(), Codec::Zstd(1));
    }

    #[test]
    fn small_transfers_and_empty_ones_are_not_measured() {
        let mut a = Adapt::new(Codec::Zstd(1));
        let mut s = sample(Codec::Zstd(1), 400.0 * MB, 12.0, 2000.0 * MB);
        s.plain = 8192;
        assert_eq!(a.observe(s), None);
        assert_eq!(a.link_speed(), None);
        s.plain = SEG;
        s.wire = 0;
        assert_eq!(a.observe(s), None);
        assert_eq!(a.codec(), Codec::Zstd(1));
    }
}
