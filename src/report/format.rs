//! How amounts and durations are written for people: `$1,234.56` (integer
//! cents, never a float) and `1.2 s` / `3 min 05 s`.

use crate::money::Money;

/// `$1,234.56`; negative amounts as `-$1,234.56`.
pub fn format_money(amount: Money) -> String {
    let cents = amount.cents();
    let sign = if cents < 0 { "-" } else { "" };
    let magnitude = cents.unsigned_abs();
    let dollars = group_thousands(magnitude / 100);
    format!("{sign}${dollars}.{:02}", magnitude % 100)
}

/// A signed difference: `+$5.00`, `-$5.00`, or `$0.00`.
pub fn format_signed_money(amount: Money) -> String {
    if amount.is_positive() {
        format!("+{}", format_money(amount))
    } else {
        format_money(amount)
    }
}

pub use crate::money::group_thousands;

/// A count with thousands separators.
pub fn format_count(value: u64) -> String {
    group_thousands(value)
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn format_duration_ms(elapsed_ms: u64) -> String {
    const SECOND_MS: u64 = 1_000;
    const MINUTE_MS: u64 = 60 * SECOND_MS;
    const HOUR_MS: u64 = 60 * MINUTE_MS;
    if elapsed_ms < SECOND_MS {
        format!("{elapsed_ms} ms")
    } else if elapsed_ms < MINUTE_MS {
        let tenths = elapsed_ms / 100;
        format!("{}.{} s", tenths / 10, tenths % 10)
    } else if elapsed_ms < HOUR_MS {
        let seconds = elapsed_ms / SECOND_MS;
        format!("{} min {:02} s", seconds / 60, seconds % 60)
    } else {
        let minutes = elapsed_ms / MINUTE_MS;
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    }
}

/// `1 item` / `3 items`.
pub fn plural(count: u64, singular: &str, plural: &str) -> String {
    if count == 1 {
        format!("1 {singular}")
    } else {
        format!("{} {plural}", format_count(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(cents: i64) -> String {
        format_money(Money::from_cents(cents))
    }

    #[test]
    fn money_has_dollar_sign_separators_and_two_places() {
        assert_eq!(money(0), "$0.00");
        assert_eq!(money(5), "$0.05");
        assert_eq!(money(123_456), "$1,234.56");
        assert_eq!(money(100_000_000), "$1,000,000.00");
        assert_eq!(money(-99_999), "-$999.99");
        assert_eq!(format_signed_money(Money::from_cents(500)), "+$5.00");
        assert_eq!(format_signed_money(Money::from_cents(-500)), "-$5.00");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_ms(850), "850 ms");
        assert_eq!(format_duration_ms(12_345), "12.3 s");
        assert_eq!(format_duration_ms(245_000), "4 min 05 s");
        assert_eq!(format_duration_ms(3_720_000), "1 h 02 min");
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(plural(1, "item", "items"), "1 item");
        assert_eq!(plural(2500, "item", "items"), "2,500 items");
    }
}
