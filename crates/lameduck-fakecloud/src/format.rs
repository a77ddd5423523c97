//! Writing dates the way each service does. `humantime` does the calendar; these only rearrange
//! its RFC 3339 output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// humantime formats years 1970–9999 only.
fn clamp(t: SystemTime) -> SystemTime {
    let max = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    t.clamp(UNIX_EPOCH, max)
}

/// `2020-04-24T17:11:44Z` (AWS spot `time`, rebalance `noticeTime`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(clamp(t)).to_string()
}

struct Parts {
    year: String,
    month: &'static str,
    day: String,
    time: String,
    weekday: &'static str,
}

fn parts(t: SystemTime) -> Parts {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let t = clamp(t);
    let stamp = rfc3339(t); // YYYY-MM-DDTHH:MM:SSZ
    let field = |r: std::ops::Range<usize>| stamp.get(r).unwrap_or("00").to_owned();
    let month_index = field(5..7).parse::<usize>().unwrap_or(1).clamp(1, 12) - 1;
    let days = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[usize::try_from((days + 4) % 7).unwrap_or(0)];
    Parts {
        year: field(0..4),
        month: MONTHS[month_index],
        day: field(8..10),
        time: field(11..19),
        weekday,
    }
}

/// `Mon, 19 Sep 2016 18:29:47 GMT` (Azure `NotBefore`).
pub(crate) fn rfc1123(t: SystemTime) -> String {
    let p = parts(t);
    format!(
        "{}, {} {} {} {} GMT",
        p.weekday, p.day, p.month, p.year, p.time
    )
}

/// `21 Jan 2019 09:00:43 GMT` (AWS scheduled events `NotBefore` / `NotAfter`).
pub(crate) fn aws_event_date(t: SystemTime) -> String {
    let p = parts(t);
    format!("{} {} {} {} GMT", p.day, p.month, p.year, p.time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::from_secs(1_474_309_787);
        assert_eq!(rfc1123(t), "Mon, 19 Sep 2016 18:29:47 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_548_061_243);
        assert_eq!(aws_event_date(t), "21 Jan 2019 09:00:43 GMT");
        assert_eq!(rfc3339(t), "2019-01-21T09:00:43Z");
        assert_eq!(rfc1123(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
