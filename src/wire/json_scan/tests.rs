//! Tests of the number scanner: bit-identical to `str::parse::<f64>` on edge cases,
//! Binance-shaped and arbitrary decimals; the eight-byte digit tricks against a loop.

use super::number::{accumulate_digits, eight_digits_value, leading_digit_count};
use super::parse_decimal;
use proptest::prelude::*;

/// Whether [`parse_decimal`] gives exactly the bits `str::parse::<f64>` gives.
pub(crate) fn same_as_std(text: &str) -> bool {
    parse_decimal(text).map(f64::to_bits) == text.parse::<f64>().ok().map(f64::to_bits)
}

#[test]
fn decimal_edge_cases_match_std() {
    for text in [
        "0",
        "-0",
        "-0.0",
        "0.1",
        "57520.11000000",
        "0.00000001",
        "9007199254740992",
        "9007199254740993",
        "9007199254740993.0",
        "18446744073709551615",
        "18446744073709551616",
        "1234567890123456789",
        "12345678901234567890",
        "0.0000000000000000000000001",
        "1.7976931348623157e308",
        "1e400",
        "4.9e-324",
        "1E5",
        "1e+5",
        "2.5e-3",
        "00012.50",
        "83091.60",
        "13.551",
    ] {
        assert!(same_as_std(text), "{text}");
    }
    for bad in [
        "", "-", ".5", "5.", "1e", "1e+", "nan", "inf", "+1", "1,5", " 1", "1 ", "--1",
    ] {
        assert_eq!(parse_decimal(bad), None, "{bad:?}");
    }
}

fn naive_digits(text: &[u8]) -> u64 {
    text.iter().fold(0, |acc, b| acc * 10 + u64::from(b - b'0'))
}

#[test]
fn eight_digit_chunks_read_like_a_digit_loop() {
    for text in ["00000000", "99999999", "12345678", "10000001", "00000009"] {
        let w = u64::from_le_bytes(text.as_bytes().try_into().unwrap());
        assert_eq!(leading_digit_count(w), 8);
        assert_eq!(
            eight_digits_value(w - 0x3030_3030_3030_3030),
            naive_digits(text.as_bytes())
        );
    }
}

proptest! {
    #[test]
    fn leading_digit_count_is_exact(bytes in any::<[u8; 8]>()) {
        let expected = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        prop_assert_eq!(leading_digit_count(u64::from_le_bytes(bytes)), expected);
    }

    #[test]
    fn digit_runs_accumulate_like_a_digit_loop(text in "[0-9]{0,30}[.a\\x00-]?[0-9]{0,5}") {
        let run = text.bytes().take_while(u8::is_ascii_digit).count();
        let (acc, end) = accumulate_digits(text.as_bytes(), 0, 0);
        prop_assert_eq!(end, run);
        if run <= 19 {
            prop_assert_eq!(acc, naive_digits(&text.as_bytes()[..run]));
        }
    }

    /// Binance's shapes: an integer part of 1–9 digits and 0–8 fraction digits
    /// (spot pads to 8, futures uses the tick size), including zeros and
    /// `0.00000001`-style values, positive and negative.
    #[test]
    fn binance_shaped_decimals_are_bit_identical_to_std(
        int in "0|[1-9][0-9]{0,8}",
        frac in prop::option::of("[0-9]{1,8}"),
        negative in any::<bool>(),
    ) {
        let text = format!(
            "{}{int}{}",
            if negative { "-" } else { "" },
            frac.map(|f| format!(".{f}")).unwrap_or_default()
        );
        prop_assert!(same_as_std(&text), "{}", text);
    }

    #[test]
    fn long_and_odd_decimals_are_bit_identical_to_std(
        text in "-?[0-9]{1,34}(\\.[0-9]{1,34})?"
    ) {
        prop_assert!(same_as_std(&text), "{}", text);
    }
}

proptest! {
    #[test]
    fn decimal_fast_path_is_bit_identical_to_std(
        text in "-?[0-9]{1,24}(\\.[0-9]{1,26})?([eE][+-]?[0-9]{1,3})?"
    ) {
        prop_assert!(same_as_std(&text), "{}", text);
    }

    #[test]
    fn formatted_prices_are_bit_identical_to_std(x in 0f64..1e9, places in 0usize..13) {
        let text = format!("{x:.places$}");
        prop_assert!(same_as_std(&text), "{}", text);
    }
}
