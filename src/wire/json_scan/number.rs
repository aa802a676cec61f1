//! JSON numbers: text already checked against the grammar to `f64` (correctly
//! rounded, bit-identical to `str::parse`), `i64` and `u64`; and the eight-bytes-
//! at-a-time digit scanning the scanner and the parser share.
//!
//! Owns: digits to values. Never checks JSON grammar (the scanner does) and never
//! allocates.

/// Exact powers of ten representable in f64 (10^22 is the largest).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?` to the correctly rounded f64 —
/// bit-identical to `str::parse::<f64>` (property-tested below, and on every price
/// of the recorded captures).
///
/// Fast path (Clinger): when all digits fit a mantissa `m <= 2^53` and there are at
/// most 22 fraction digits, `m` and `10^k` are exact f64s and one IEEE division is
/// correctly rounded, so `m / 10^k` is the correctly rounded value. That covers
/// every Binance price and volume; anything else goes to `str::parse`.
#[inline]
pub fn parse_decimal(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    let int_start = usize::from(negative);
    let (mut mantissa, mut i) = accumulate_digits(bytes, int_start, 0);
    let int_digits = i - int_start;
    if int_digits == 0 {
        return None;
    }
    let mut frac_digits = 0usize;
    if bytes.get(i) == Some(&b'.') {
        let frac_start = i + 1;
        (mantissa, i) = accumulate_digits(bytes, frac_start, mantissa);
        frac_digits = i - frac_start;
        if frac_digits == 0 {
            return None;
        }
    }
    if i != bytes.len() {
        // An exponent (or trailing junk): the general path decides.
        return parse_decimal_bytewise(text);
    }
    // 19 digits always fit a u64, so the wrapping arithmetic did not wrap.
    if int_digits + frac_digits > 19 || mantissa > (1u64 << 53) || frac_digits >= POW10.len() {
        return text.parse().ok();
    }
    let magnitude = mantissa as f64 / POW10[frac_digits];
    Some(if negative { -magnitude } else { magnitude })
}

/// `10^n` for the digit counts of one eight-byte chunk.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Appends the run of ASCII digits at `bytes[i..]` to `acc` (wrapping past 19
/// digits; callers count them) and returns it with the index after the run.
/// Eight digits at a time while eight bytes remain, then a byte at a time.
#[inline(always)]
pub(super) fn accumulate_digits(bytes: &[u8], mut i: usize, mut acc: u64) -> (u64, usize) {
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let w = u64::from_le_bytes(chunk);
        let n = leading_digit_count(w);
        if n == 0 {
            return (acc, i);
        }
        // Keep the `n` digits (the low bytes: the text's order), as the high end of
        // an eight-digit number whose low bytes are leading zeros.
        let digits = (w.wrapping_sub(0x3030_3030_3030_3030)) << (8 * (8 - n));
        acc = acc
            .wrapping_mul(POW10_U64[n])
            .wrapping_add(eight_digits_value(digits));
        i += n;
        if n < 8 {
            return (acc, i);
        }
    }
    while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        acc = acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        i += 1;
    }
    (acc, i)
}

/// How many of the eight bytes of `w`, from the lowest (the first in the text),
/// are ASCII digits before the first non-digit.
#[inline(always)]
pub(super) fn leading_digit_count(w: u64) -> usize {
    // x = byte ^ '0' is 0..=9 exactly for digits. `x + 0x76` reaches the high bit
    // for x >= 10; a carry out of a byte only happens for x >= 0x8a, a non-digit
    // already marked, so bytes below the first non-digit are judged exactly.
    let x = w ^ 0x3030_3030_3030_3030;
    let non_digit = (x.wrapping_add(0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
    (non_digit.trailing_zeros() / 8) as usize
}

/// The value of eight decimal digits 0..=9, one per byte, the lowest byte the most
/// significant (as read from text): three multiplications instead of eight.
#[inline(always)]
pub(super) fn eight_digits_value(d: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    // Each byte pair becomes a two-digit number in the pair's low byte.
    let pairs = d.wrapping_mul(10).wrapping_add(d >> 8);
    ((pairs & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

/// [`parse_decimal`] a byte at a time, for exponents.
fn parse_decimal_bytewise(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;

    let int_start = i;
    while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
        i += 1;
    }
    if i == int_start {
        return None;
    }
    let mut frac_digits = 0usize;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            digits += 1;
            i += 1;
        }
        frac_digits = i - frac_start;
        if frac_digits == 0 {
            return None;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start || i != bytes.len() {
            return None;
        }
        return text.parse().ok();
    }
    if i != bytes.len() {
        return None;
    }
    // 19 digits always fit a u64, so the wrapping arithmetic above did not wrap.
    if digits > 19 || mantissa > (1u64 << 53) || frac_digits >= POW10.len() {
        return text.parse().ok();
    }
    let magnitude = mantissa as f64 / POW10[frac_digits];
    Some(if negative { -magnitude } else { magnitude })
}

/// A JSON integer (already grammar-checked) as i64; `None` if fractional or too big.
pub(crate) fn parse_i64(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = parse_u64(digits)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    if text.len() <= 19 {
        // Nineteen digits cannot overflow a u64: no checked arithmetic needed.
        return text.bytes().try_fold(0u64, |acc, b| {
            let digit = b.wrapping_sub(b'0');
            (digit < 10).then(|| acc * 10 + u64::from(digit))
        });
    }
    text.bytes().try_fold(0u64, |acc, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Index of the first non-digit at or after `i` (or `bytes.len()`), eight bytes
/// at a time: timestamps and trade ids are 9–13 digits.
#[inline(always)]
pub(super) fn skip_digits(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let n = leading_digit_count(u64::from_le_bytes(chunk));
        i += n;
        if n < 8 {
            return i;
        }
    }
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}
