//! ISO 8601 durations as Service Bus writes them (`PT1M`, `P1DT2H`, `PT0.5S`, and
//! `TimeSpan.MaxValue` as `P10675199DT2H48M5.4775807S`), parsed exactly with integer
//! arithmetic: fractions are kept to 10^-18 ms while the parts are summed, and the total is
//! truncated to whole milliseconds once. A year counts 365 days, a month 30.

/// Milliseconds in a day.
const MS_PER_DAY: i128 = 86_400_000;
/// Fraction digits kept (beyond them a digit is worth less than 10^-18 of a unit).
const FRACTION_DIGITS: u32 = 18;
/// One millisecond in the units the parts are summed in.
const SCALE: i128 = 10_i128.pow(FRACTION_DIGITS);

/// Parse an ISO 8601 duration into milliseconds; `None` if it is not one or does not fit.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: i128 = 0;
    let mut seen = false;
    add_parts(
        date,
        &[
            ('Y', 365 * MS_PER_DAY),
            ('M', 30 * MS_PER_DAY),
            ('W', 7 * MS_PER_DAY),
            ('D', MS_PER_DAY),
        ],
        &mut total,
        &mut seen,
    )?;
    if let Some(t) = time {
        add_parts(
            t,
            &[('H', 3_600_000), ('M', 60_000), ('S', 1_000)],
            &mut total,
            &mut seen,
        )?;
    }
    if !seen {
        return None;
    }
    i64::try_from(total / SCALE).ok()
}

/// Add each `<number><unit>` of `part` to `total` (in [`SCALE`] units).
fn add_parts(part: &str, units: &[(char, i128)], total: &mut i128, seen: &mut bool) -> Option<()> {
    let mut rest = part;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(end);
        let mut chars = tail.chars();
        let unit = chars.next()?;
        let ms = units.iter().find(|(u, _)| *u == unit)?.1;
        *total = total.checked_add(scaled(number, ms)?)?;
        *seen = true;
        rest = chars.as_str();
    }
    Some(())
}

/// `number` (digits with at most one `.`) times `ms`, in [`SCALE`] units.
fn scaled(number: &str, ms: i128) -> Option<i128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let kept = fraction.get(..fraction.len().min(FRACTION_DIGITS as usize))?;
    let mut fraction: i128 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    for _ in kept.len()..FRACTION_DIGITS as usize {
        fraction *= 10;
    }
    whole
        .checked_mul(ms)?
        .checked_mul(SCALE)?
        .checked_add(fraction.checked_mul(ms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_iso8601_ms("PT1M"), Some(60_000));
        assert_eq!(parse_iso8601_ms("PT30S"), Some(30_000));
        assert_eq!(parse_iso8601_ms("P1DT1H"), Some(90_000_000));
        assert_eq!(parse_iso8601_ms("PT0.5S"), Some(500));
        assert_eq!(parse_iso8601_ms("P1W"), Some(7 * 86_400_000));
        assert_eq!(parse_iso8601_ms("P1Y2M"), Some(425 * 86_400_000));
        assert_eq!(parse_iso8601_ms("PT.25S"), Some(250));
        assert_eq!(parse_iso8601_ms("PT0.001S"), Some(1));
        assert_eq!(parse_iso8601_ms("PT0.0009S"), Some(0));
        // Fractions are exact: 0.1 + 0.2 seconds is 300 ms, not 299.
        assert_eq!(parse_iso8601_ms("PT0.1M0.2S"), Some(6_200));
        assert_eq!(parse_iso8601_ms("PT1.0000000000000000000009S"), Some(1_000));
        for bad in [
            "1M", "P", "PT", "PTxS", "PT1", "PT1X", "PT1..2S", "PT.S", "P1S", "PT1D",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn timespan_max_value() {
        // TimeSpan.MaxValue: 922,337,203,685,477.5807 ms, truncated.
        assert_eq!(
            parse_iso8601_ms("P10675199DT2H48M5.4775807S"),
            Some(922_337_203_685_477)
        );
        assert_eq!(parse_iso8601_ms("P99999999999999999999D"), None);
        assert_eq!(parse_iso8601_ms("P106751991167301D"), None);
    }
}
