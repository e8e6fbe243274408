//! Backup ids: the UTC time a backup was taken, as `YYYYMMDDTHHMMSSZ` (so ids sort in time
//! order), and `--as-of` values read as the latest id they allow.

use anyhow::bail;
use runtime::time::civil_date;

/// `YYYYMMDDTHHMMSSZ` for a Unix time in milliseconds (UTC).
pub fn backup_id(ms: u64) -> String {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (y, m, d) = civil_date(secs / 86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A `--as-of` value as a comparable backup id: a backup id, or an RFC 3339 UTC time
/// (`2026-11-22T19:30:00Z`), or a date alone (the end of that day).
pub fn parse_as_of(s: &str) -> anyhow::Result<String> {
    let compact: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    let ok_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if compact.len() == 8 && ok_digits(&compact) {
        return Ok(format!("{compact}T235959Z"));
    }
    let compact = compact.trim_end_matches('Z');
    let compact = compact.split('.').next().unwrap_or("");
    match compact.split_once('T') {
        Some((d, t)) if d.len() == 8 && t.len() == 6 && ok_digits(d) && ok_digits(t) => {
            Ok(format!("{d}T{t}Z"))
        }
        _ => bail!(
            "--as-of `{s}` is neither a backup id (20261122T193000Z) nor a UTC time (2026-11-22T19:30:00Z)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_are_utc_and_as_of_accepts_ids_and_times() {
        assert_eq!(backup_id(0), "19700101T000000Z");
        assert_eq!(backup_id(1_795_376_096_000), "20261122T193456Z");
        assert_eq!(backup_id(951_782_400_000), "20000229T000000Z");
        assert_eq!(parse_as_of("20261122T192456Z").unwrap(), "20261122T192456Z");
        assert_eq!(
            parse_as_of("2026-11-22T19:24:56Z").unwrap(),
            "20261122T192456Z"
        );
        assert_eq!(
            parse_as_of("2026-11-22T19:24:56.250Z").unwrap(),
            "20261122T192456Z"
        );
        assert_eq!(parse_as_of("2026-11-22").unwrap(), "20261122T235959Z");
        assert!(parse_as_of("yesterday").is_err());
        assert!(parse_as_of("2026-11-22T19:24").is_err());
    }

    #[test]
    fn the_last_second_of_a_day_and_of_a_year() {
        assert_eq!(backup_id(86_399_999), "19700101T235959Z");
        assert_eq!(backup_id(86_400_000), "19700102T000000Z");
        // 2026-12-31T23:59:59Z, then the first second of 2027.
        assert_eq!(backup_id(1_798_761_599_000), "20261231T235959Z");
        assert_eq!(backup_id(1_798_761_600_000), "20270101T000000Z");
        // Ids sort as the times they name.
        assert!(backup_id(1_798_761_599_000) < backup_id(1_798_761_600_000));
        assert!(parse_as_of("2026-12-31").unwrap() < backup_id(1_798_761_600_000));
    }
}
