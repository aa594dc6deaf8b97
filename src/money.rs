//! Exact money: a `Money` amount is a `rust_decimal::Decimal` with exactly two
//! places, stored as integer cents in the database and as a decimal string on
//! the wire. No float ever touches an amount.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest absolute amount the engine accepts for one record: ten million
/// dollars. Anything larger is a data error, not a school fee.
pub const AMOUNT_ABS_MAX_CENTS: i64 = 1_000_000_000;

/// Why a value could not become a `Money`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount {0:?} is not a decimal number")]
    NotADecimal(String),
    #[error("amount {0} has more than two decimal places")]
    TooManyPlaces(String),
    #[error("amount {0} is outside the accepted range of ±10,000,000.00")]
    OutOfRange(String),
}

/// An exact amount of dollars with two decimal places.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Builds an amount from integer cents (the database representation).
    pub fn from_cents(cents: i64) -> Money {
        Money(Decimal::new(cents, 2))
    }

    /// Integer cents, for the database. Exact because every `Money` has
    /// at most two places.
    pub fn cents(self) -> i64 {
        if self.0.scale() == 2 {
            if let Ok(cents) = i64::try_from(self.0.mantissa()) {
                return cents;
            }
        }
        let scaled = self.0 * Decimal::ONE_HUNDRED;
        i64::try_from(scaled.trunc()).expect("Money is bounded by AMOUNT_ABS_MAX_CENTS")
    }

    /// Validates a decimal from outside (API, CSV, CLI): at most two places,
    /// within the accepted range.
    pub fn try_from_decimal(value: Decimal) -> Result<Money, MoneyError> {
        let normalized = value.normalize();
        if normalized.scale() > 2 {
            return Err(MoneyError::TooManyPlaces(value.to_string()));
        }
        let limit = Decimal::new(AMOUNT_ABS_MAX_CENTS, 2);
        if normalized.abs() > limit {
            return Err(MoneyError::OutOfRange(value.to_string()));
        }
        let mut exact = normalized;
        exact.rescale(2);
        Ok(Money(exact))
    }

    /// Parses a decimal string such as `"12.50"` strictly: no exponent, no
    /// thousands separators, at most two places.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        if let Some(money) = Money::parse_plain(text) {
            return Ok(money);
        }
        let trimmed = text.trim();
        let well_formed = !trimmed.is_empty()
            && trimmed
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && c == '-'));
        if !well_formed {
            return Err(MoneyError::NotADecimal(text.to_string()));
        }
        let value =
            Decimal::from_str(trimmed).map_err(|_| MoneyError::NotADecimal(text.to_string()))?;
        Money::try_from_decimal(value)
    }

    /// The common wire form (`-?D{1,8}(.D{1,2})?`, within range) straight
    /// to cents; `None` sends anything else through the full parser, which
    /// gives the same value or the error.
    fn parse_plain(text: &str) -> Option<Money> {
        let bytes = text.as_bytes();
        let (negative, unsigned) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, bytes),
        };
        let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
            Some(dot) => (&unsigned[..dot], &unsigned[dot + 1..]),
            None => (unsigned, &[][..]),
        };
        let has_dot = whole.len() < unsigned.len();
        if whole.is_empty()
            || whole.len() > 8
            || fraction.len() > 2
            || (has_dot && fraction.is_empty())
        {
            return None;
        }
        let mut cents: i64 = 0;
        for &digit in whole.iter().chain(fraction) {
            if !digit.is_ascii_digit() {
                return None;
            }
            cents = cents * 10 + i64::from(digit - b'0');
        }
        for _ in fraction.len()..2 {
            cents *= 10;
        }
        if cents > AMOUNT_ABS_MAX_CENTS || (negative && cents == 0) {
            return None;
        }
        Some(Money::from_cents(if negative { -cents } else { cents }))
    }

    /// Parses a sum of many records (a district's total), which may exceed
    /// the per-record bound; still at most two places and within ±i64 cents.
    pub fn parse_total(text: &str) -> Result<Money, MoneyError> {
        let value = Decimal::from_str(text.trim())
            .map_err(|_| MoneyError::NotADecimal(text.to_string()))?
            .normalize();
        if value.scale() > 2 {
            return Err(MoneyError::TooManyPlaces(text.to_string()));
        }
        if (value * Decimal::ONE_HUNDRED)
            .trunc()
            .to_string()
            .parse::<i64>()
            .is_err()
        {
            return Err(MoneyError::OutOfRange(text.to_string()));
        }
        let mut exact = value;
        exact.rescale(2);
        Ok(Money(exact))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    pub fn is_positive(self) -> bool {
        self.0.is_sign_positive() && !self.0.is_zero()
    }

    pub fn abs(self) -> Money {
        Money(self.0.abs())
    }

    pub fn max(self, other: Money) -> Money {
        if self >= other {
            self
        } else {
            other
        }
    }

    pub fn min(self, other: Money) -> Money {
        if self <= other {
            self
        } else {
            other
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0;
        shown.rescale(2);
        write!(f, "{shown}")
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0 - rhs.0)
    }
}

impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        self.0 += rhs.0;
    }
}

impl SubAssign for Money {
    fn sub_assign(&mut self, rhs: Money) {
        self.0 -= rhs.0;
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Money> for Money {
    fn sum<I: Iterator<Item = &'a Money>>(iter: I) -> Money {
        iter.copied().sum()
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_zero() && self.0.is_sign_negative() {
            return serializer.collect_str(self); // "-0.00", as `Display` shows it
        }
        // The `Display` text, written from the cents without the formatter.
        let cents = self.cents();
        let mut buffer = [0u8; 24];
        let mut at = buffer.len();
        let mut rest = cents.unsigned_abs();
        for place in 0.. {
            at -= 1;
            buffer[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if place == 1 {
                at -= 1;
                buffer[at] = b'.';
            }
            if place >= 2 && rest == 0 {
                break;
            }
        }
        if cents < 0 {
            at -= 1;
            buffer[at] = b'-';
        }
        let text = std::str::from_utf8(&buffer[at..]).expect("ASCII digits");
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As `String::deserialize` would accept, without copying the text.
        deserializer.deserialize_string(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl serde::de::Visitor<'_> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Money, E> {
        Money::parse(text).map_err(E::custom)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Money, E> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.visit_str(text),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(bytes), &self)),
        }
    }
}

/// Serde for totals over many records (`#[serde(with = "crate::money::total")]`):
/// the same decimal string, without the per-record bound.
pub mod total {
    use super::Money;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Money, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let text = String::deserialize(deserializer)?;
        Money::parse_total(&text).map_err(serde::de::Error::custom)
    }
}

/// `1234567` → `1,234,567` (dollars in reports, counts in progress lines).
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn totals_may_exceed_the_record_bound() {
        assert!(Money::parse("11049753.80").is_err());
        assert_eq!(
            Money::parse_total("11049753.80").unwrap().cents(),
            1_104_975_380
        );
        assert!(Money::parse_total("1.001").is_err());
        assert!(Money::parse_total("99999999999999999999.00").is_err());
    }

    #[test]
    fn parses_and_displays_two_places() {
        assert_eq!(Money::parse("12.5").unwrap().to_string(), "12.50");
        assert_eq!(Money::parse("-0.01").unwrap().cents(), -1);
        assert_eq!(Money::parse("7").unwrap().to_string(), "7.00");
        assert_eq!(Money::parse("3.100").unwrap().cents(), 310);
    }

    #[test]
    fn rejects_bad_amounts() {
        assert!(matches!(
            Money::parse("1.005"),
            Err(MoneyError::TooManyPlaces(_))
        ));
        assert!(matches!(
            Money::parse("1e3"),
            Err(MoneyError::NotADecimal(_))
        ));
        assert!(matches!(
            Money::parse("1,000.00"),
            Err(MoneyError::NotADecimal(_))
        ));
        assert!(matches!(Money::parse(""), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(
            Money::parse("NaN"),
            Err(MoneyError::NotADecimal(_))
        ));
        assert!(matches!(
            Money::parse("10000000.01"),
            Err(MoneyError::OutOfRange(_))
        ));
    }

    #[test]
    fn serialized_text_edges() {
        for (cents, text) in [
            (0, "0.00"),
            (5, "0.05"),
            (-5, "-0.05"),
            (100, "1.00"),
            (-123_456, "-1234.56"),
        ] {
            assert_eq!(
                serde_json::to_string(&Money::from_cents(cents)).unwrap(),
                format!("\"{text}\"")
            );
        }
        let negative_zero = Money(-Decimal::new(0, 2));
        assert_eq!(
            serde_json::to_string(&negative_zero).unwrap(),
            format!("\"{negative_zero}\"")
        );
        assert!(serde_json::from_str::<Money>("5")
            .unwrap_err()
            .to_string()
            .contains("expected a string"));
    }

    #[test]
    fn serde_uses_decimal_strings() {
        let m = Money::from_cents(1999);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"19.99\"");
        let back: Money = serde_json::from_str("\"19.99\"").unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Money>("\"19.999\"").is_err());
    }

    proptest! {
        #[test]
        fn cents_round_trip(cents in -AMOUNT_ABS_MAX_CENTS..=AMOUNT_ABS_MAX_CENTS) {
            let m = Money::from_cents(cents);
            prop_assert_eq!(m.cents(), cents);
            prop_assert_eq!(Money::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn plain_parse_agrees_with_decimal_parse(text in "-?[0-9]{0,9}(\\.[0-9]{0,3})?") {
            let fast = Money::parse_plain(&text);
            let slow = Decimal::from_str(text.trim())
                .map_err(|_| ())
                .and_then(|d| Money::try_from_decimal(d).map_err(|_| ()));
            if let Some(fast) = fast {
                prop_assert_eq!(Ok(fast), slow);
                prop_assert_eq!(fast.to_string(), slow.unwrap().to_string());
            }
        }

        #[test]
        fn serialized_text_is_the_display_text(cents in proptest::num::i64::ANY) {
            let m = Money(Decimal::new(cents, 2));
            prop_assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
            prop_assert_eq!(m.cents(), cents);
        }

        #[test]
        fn addition_is_exact(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000) {
            prop_assert_eq!((Money::from_cents(a) + Money::from_cents(b)).cents(), a + b);
        }
    }
}
