//! The date formats the metadata services use.
//!
//! - RFC 3339 (`2020-04-24T17:11:44Z`): AWS spot `instance-action.time` and rebalance
//!   `noticeTime` (AWS doc "Spot Instance interruption notices",
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
//! - RFC 1123 / HTTP-date (`Mon, 19 Sep 2016 18:29:47 GMT`): Azure Scheduled Events `NotBefore`
//!   (<https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events>).
//! - The same without the weekday (`21 Jan 2019 09:00:43 GMT`): AWS scheduled events `NotBefore`
//!   and `NotAfter` (AWS doc "Scheduled events for your instances",
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instances-status-check_sched.html>;
//!   the example in aws-node-termination-handler `pkg/ec2metadata/ec2metadata.go`).
//!
//! The calendar arithmetic is left to `humantime`: both parsers rewrite their input into an
//! RFC 3339 UTC stamp and let `humantime` validate it (month lengths, leap years, ranges).

use std::time::{Duration, SystemTime};

/// RFC 3339, UTC (`Z`) or with a numeric offset; fractional seconds allowed.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() < 10 {
        return None;
    }
    if let Some(base) = s.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(&format!("{base}Z")).ok();
    }
    // A trailing `+HH:MM` / `-HH:MM` offset (only after the time part, so a date's own `-` is safe).
    let cut = s.len().saturating_sub(6);
    let (base, offset) = (s.get(..cut).unwrap_or(""), s.get(cut..).unwrap_or(""));
    let bytes = offset.as_bytes();
    let sign = match bytes.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => 0,
    };
    if sign != 0 && base.contains(['T', 't', ' ']) && bytes.len() == 6 && bytes[3] == b':' {
        let hours: i64 = offset.get(1..3)?.parse().ok()?;
        let minutes: i64 = offset.get(4..6)?.parse().ok()?;
        let local = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
        return shift(local, -sign * (hours * 3600 + minutes * 60));
    }
    // No zone at all: the services always mean UTC.
    humantime::parse_rfc3339_weak(s).ok()
}

/// `Mon, 19 Sep 2016 18:29:47 GMT` (weekday optional, and not checked against the date),
/// zone `GMT`, `UTC`, `UT`, `Z` or `±HHMM`.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let rest = match s.split_once(',') {
        Some((weekday, rest)) if weekday.trim().chars().all(|c| c.is_ascii_alphabetic()) => rest,
        Some(_) => return None,
        None => s,
    };
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let (day, month, year, time, zone) = match parts.as_slice() {
        [d, m, y, t] => (*d, *m, *y, *t, "GMT"),
        [d, m, y, t, z] => (*d, *m, *y, *t, *z),
        _ => return None,
    };
    if day.is_empty() || day.len() > 2 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = month_number(month)?;
    if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tb = time.as_bytes();
    let time_ok = tb.len() == 8
        && tb[2] == b':'
        && tb[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| tb[i].is_ascii_digit());
    if !time_ok {
        return None;
    }
    let offset_s = zone_offset(zone)?;
    let stamp = format!("{year}-{month:02}-{day:02}T{time}Z");
    let local = humantime::parse_rfc3339(&stamp).ok()?;
    shift(local, -offset_s)
}

/// Either format, RFC 3339 first.
pub(crate) fn parse_any(s: &str) -> Option<SystemTime> {
    parse_rfc3339(s).or_else(|| parse_http_date(s))
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .and_then(|i| u32::try_from(i + 1).ok())
}

fn zone_offset(zone: &str) -> Option<i64> {
    match zone.to_ascii_uppercase().as_str() {
        "GMT" | "UTC" | "UT" | "Z" => Some(0),
        _ => {
            let b = zone.as_bytes();
            if b.len() != 5 || !b[1..].iter().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let sign = match b[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = zone.get(1..3)?.parse().ok()?;
            let minutes: i64 = zone.get(3..5)?.parse().ok()?;
            Some(sign * (hours * 3600 + minutes * 60))
        }
    }
}

fn shift(t: SystemTime, seconds: i64) -> Option<SystemTime> {
    let by = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        t.checked_add(by)
    } else {
        t.checked_sub(by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_forms() {
        // 2020-04-24T17:11:44Z = 1587748304
        assert_eq!(
            parse_rfc3339("2020-04-24T17:11:44Z"),
            Some(at(1_587_748_304))
        );
        assert_eq!(
            parse_rfc3339(" 2020-04-24T17:11:44Z\n"),
            Some(at(1_587_748_304))
        );
        assert_eq!(
            parse_rfc3339("2020-04-24T17:11:44.5Z"),
            Some(at(1_587_748_304) + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2020-04-24T19:11:44+02:00"),
            Some(at(1_587_748_304))
        );
        assert_eq!(
            parse_rfc3339("2020-04-24T16:11:44-01:00"),
            Some(at(1_587_748_304))
        );
        assert_eq!(
            parse_rfc3339("2020-04-24T17:11:44"),
            Some(at(1_587_748_304))
        );
        assert_eq!(parse_rfc3339(""), None);
        assert_eq!(parse_rfc3339("soon"), None);
        assert_eq!(parse_rfc3339("2020-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2020-04-24T17:11:44+0x:00"), None);
    }

    #[test]
    fn http_dates() {
        // Mon, 19 Sep 2016 18:29:47 GMT = 1474309787
        assert_eq!(
            parse_http_date("Mon, 19 Sep 2016 18:29:47 GMT"),
            Some(at(1_474_309_787))
        );
        // AWS scheduled-event form, no weekday: 21 Jan 2019 09:00:43 GMT = 1548061243
        assert_eq!(
            parse_http_date("21 Jan 2019 09:00:43 GMT"),
            Some(at(1_548_061_243))
        );
        assert_eq!(
            parse_http_date("1 Jan 2019 00:00:00 UTC"),
            Some(at(1_546_300_800))
        );
        assert_eq!(
            parse_http_date("1 jan 2019 01:00:00 +0100"),
            Some(at(1_546_300_800))
        );
        assert_eq!(
            parse_http_date("29 Feb 2024 00:00:00 GMT"),
            Some(at(1_709_164_800))
        );
        assert_eq!(parse_http_date("29 Feb 2023 00:00:00 GMT"), None);
        assert_eq!(parse_http_date(""), None);
        assert_eq!(parse_http_date("Mon, 19 Sept 2016 18:29:47 GMT"), None);
        assert_eq!(parse_http_date("Mon, 19 Sep 2016 18:29 GMT"), None);
        assert_eq!(parse_http_date("Mon, 19 Sep 2016 18:29:47 CEST"), None);
        assert_eq!(parse_http_date("2016-09-19T18:29:47Z"), None);
    }

    #[test]
    fn either() {
        assert_eq!(parse_any("2016-09-19T18:29:47Z"), Some(at(1_474_309_787)));
        assert_eq!(
            parse_any("Mon, 19 Sep 2016 18:29:47 GMT"),
            Some(at(1_474_309_787))
        );
        assert_eq!(parse_any("\u{0}\u{ff}"), None);
    }
}
