//! TCP options of SYN segments (MSS, window scale, SACK permitted, timestamps) and MSS clamping.
//!
//! The walker reads bytes through a closure, so the data path can hand it a bounds-checked view
//! of packet memory while host tests hand it a slice. It is bounded (at most 40 option bytes,
//! one step per byte), as the verifier demands.

use crate::conntrack::NO_WSCALE;

/// Bytes of options a TCP header can carry (data offset 15 words minus the fixed 5).
pub const MAX_LEN: usize = 40;

pub mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WSCALE: u8 = 3;
    pub const SACK_OK: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
}

/// Options (a NOP counts as one) the walk looks at; later ones are ignored. Real stacks send at
/// most 8 (macOS: MSS, NOP, WS, NOP, NOP, TS, SACK_OK, EOL). The bound keeps the verifier's
/// work in check.
pub const MAX_STEPS: usize = 8;

/// Marks an option that was not found.
pub const ABSENT: u8 = 0xff;

/// What the options of one segment say, with where the rewritable values sit (offsets from the
/// start of the options).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Offset of the MSS value, `ABSENT` without one.
    pub mss_at: u8,
    pub mss: u16,
    /// Window scale shift, `NO_WSCALE` without one.
    pub wscale: u8,
    pub sack_ok: bool,
    /// Offset of the timestamp value (TSecr follows 4 bytes later), `ABSENT` without one.
    pub ts_at: u8,
    pub ts_val: u32,
    pub ts_ecr: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mss_at: ABSENT,
            mss: 0,
            wscale: NO_WSCALE,
            sack_ok: false,
            ts_at: ABSENT,
            ts_val: 0,
            ts_ecr: 0,
        }
    }
}

/// What a byte reader returns for an offset it cannot read (past the packet's end).
pub const OUT_OF_BOUNDS: u16 = 0x100;

/// Where the values of the options the data path uses sit (offsets from the start of the
/// options), `ABSENT` when missing. The walk only records offsets: in the data path these land
/// in a map value, which the verifier does not track, so the walk's paths do not multiply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub mss: u8,
    pub wscale: u8,
    pub sack_ok: u8,
    pub ts: u8,
    /// The first SACK block (cookie flows translate them), and how many blocks follow.
    pub sack: u8,
    pub sack_blocks: u8,
    pub _pad: [u8; 2],
}

impl Default for Offsets {
    fn default() -> Self {
        Offsets {
            mss: ABSENT,
            wscale: ABSENT,
            sack_ok: ABSENT,
            ts: ABSENT,
            sack: ABSENT,
            sack_blocks: 0,
            _pad: [0; 2],
        }
    }
}

/// Bytes of one SACK block (left and right edge).
pub const SACK_BLOCK: usize = 8;

/// Walks `len` bytes of options; `read(i)` gives byte `i` or `OUT_OF_BOUNDS`. Records where
/// each known option's value starts. Malformed options (a length below 2 or past the end) end
/// the walk; what was found before stays.
#[inline(always)]
pub fn walk(len: usize, read: impl Fn(usize) -> u16, at: &mut Offsets) {
    let len = if len > MAX_LEN { MAX_LEN } else { len };
    let mut i = 0usize;
    for _ in 0..MAX_STEPS {
        if i >= len {
            break;
        }
        let k = read(i);
        if k == kind::EOL as u16 || k & OUT_OF_BOUNDS != 0 {
            break;
        }
        if k == kind::NOP as u16 {
            i += 1;
            continue;
        }
        if i + 1 >= len {
            break;
        }
        let l = read(i + 1) as usize;
        if !(2..=MAX_LEN).contains(&l) || i + l > len {
            break;
        }
        let value = (i + 2) as u8;
        match (k as u8, l) {
            (kind::MSS, 4) => at.mss = value,
            (kind::WSCALE, 3) => at.wscale = value,
            (kind::SACK_OK, 2) => at.sack_ok = value,
            (kind::TIMESTAMPS, 10) => at.ts = value,
            (kind::SACK, 10 | 18 | 26 | 34) => {
                at.sack = value;
                at.sack_blocks = ((l - 2) / SACK_BLOCK) as u8;
            }
            _ => {}
        }
        i += l;
    }
}

/// Big-endian value of `n` bytes at `at`, or None if any is out of bounds. No `Option<u8>` per
/// byte: a partly-undefined register of an unread byte trips the BPF verifier when spilled.
#[inline(always)]
fn be(read: &impl Fn(usize) -> u16, at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    let mut bad = 0u16;
    for k in 0..n {
        let b = read(at + k);
        bad |= b;
        v = (v << 8) | (b & 0xff) as u32;
    }
    if bad & OUT_OF_BOUNDS != 0 {
        None
    } else {
        Some(v)
    }
}

/// The options' values, read at the offsets a walk found, into `o` (which starts as default).
#[inline(always)]
pub fn read_values(read: impl Fn(usize) -> u16, at: &Offsets, o: &mut Options) {
    if at.mss != ABSENT
        && let Some(v) = be(&read, at.mss as usize, 2)
    {
        o.mss_at = at.mss;
        o.mss = v as u16;
    }
    if at.wscale != ABSENT
        && let Some(v) = be(&read, at.wscale as usize, 1)
    {
        o.wscale = v as u8;
    }
    o.sack_ok = at.sack_ok != ABSENT;
    if at.ts != ABSENT
        && let (Some(v), Some(e)) = (
            be(&read, at.ts as usize, 4),
            be(&read, at.ts as usize + 4, 4),
        )
    {
        o.ts_at = at.ts;
        o.ts_val = v;
        o.ts_ecr = e;
    }
}

/// Walks and reads in one go (host code and tests).
pub fn parse(len: usize, read: impl Fn(usize) -> u16) -> Options {
    let mut at = Offsets::default();
    walk(len, &read, &mut at);
    let mut o = Options::default();
    read_values(read, &at, &mut o);
    o
}

/// IPv4 + TCP headers without options: MSS = MTU - 40.
pub const IPV4_TCP_HEADERS: u16 = 40;

/// The MSS to write when clamping `mss` to `limit`, or None when it already fits.
#[inline(always)]
pub const fn clamp(mss: u16, limit: u16) -> Option<u16> {
    if mss > limit { Some(limit) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> impl Fn(usize) -> u16 + '_ {
        |i| bytes.get(i).map_or(OUT_OF_BOUNDS, |b| *b as u16)
    }

    fn run(opts: &[u8]) -> Options {
        parse(opts.len(), reader(opts))
    }

    #[test]
    fn linux_syn_options() {
        // mss 1460, sackOK, TS val 0x01020304 ecr 0, nop, wscale 7 (what Linux sends).
        let o = run(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        assert_eq!((o.mss_at, o.mss), (2, 1460));
        assert!(o.sack_ok);
        assert_eq!((o.ts_at, o.ts_val, o.ts_ecr), (8, 0x0102_0304, 0));
        assert_eq!(o.wscale, 7);
    }

    #[test]
    fn nops_shift_the_mss_to_an_odd_offset() {
        let o = run(&[1, 2, 4, 0x05, 0x78, 0]);
        assert_eq!((o.mss_at, o.mss), (3, 1400));
        assert_eq!(o.wscale, NO_WSCALE);
    }

    #[test]
    fn malformed_options_end_the_walk_without_reading_past_the_end() {
        // Zero length, then a length past the end, then a truncated MSS.
        assert_eq!(run(&[3, 0, 7, 2, 4, 1, 1]), Options::default());
        assert_eq!(run(&[1, 1, 2, 9, 5, 5]), Options::default());
        assert_eq!(run(&[2, 4, 5]).mss_at, ABSENT);
        // EOL stops even if bytes follow.
        assert_eq!(run(&[0, 2, 4, 5, 0xb4]), Options::default());
        // Never reads beyond `len`, even if the closure would answer.
        let bytes = [1u8, 1, 1, 2, 4, 5, 0xb4];
        let o = parse(3, reader(&bytes));
        assert_eq!(o.mss_at, ABSENT);
    }

    #[test]
    fn every_input_terminates_and_stays_in_bounds() {
        // Exhaustive over short prefixes of structurally interesting bytes.
        let alphabet = [0u8, 1, 2, 3, 4, 8, 10, 40, 255];
        let mut buf = [0u8; 4];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        buf = [a, b, c, d];
                        let o = parse(4, |i| {
                            assert!(i < 4, "read past the end at {i}");
                            reader(&buf)(i)
                        });
                        if o.mss_at != ABSENT {
                            assert!(o.mss_at as usize + 2 <= 4);
                        }
                    }
                }
            }
        }
        let _ = buf;
    }

    #[test]
    fn sack_blocks_are_found_after_timestamps() {
        // nop, nop, TS, nop, nop, SACK with two blocks (what Linux sends after a loss).
        let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18];
        opts.extend_from_slice(&[0; 16]);
        let mut at = Offsets::default();
        walk(opts.len(), reader(&opts), &mut at);
        assert_eq!((at.ts, at.sack, at.sack_blocks), (4, 16, 2));
        // A SACK option of a length that is no whole number of blocks is not one.
        let bad = [5u8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut at = Offsets::default();
        walk(bad.len(), reader(&bad), &mut at);
        assert_eq!(at.sack, ABSENT);
    }

    #[test]
    fn clamping() {
        assert_eq!(clamp(1460, 1360), Some(1360));
        assert_eq!(clamp(1300, 1360), None);
        assert_eq!(clamp(1360, 1360), None);
    }
}
