//! Durations on the command line: a number with a unit (`ms`, `s`, `m`, `h`); a bare number
//! is seconds.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 90s, 5m, 1h, 500ms)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err("must be greater than zero".into());
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be at least a nanosecond".into()),
        Err(_) => Err(format!("`{s}` is longer than any time limit can be")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse("0").is_err());
        assert!(parse("5 parsecs").is_err());
        assert!(parse("soon").is_err());
        // Too long or too short for a Duration: refused, not a panic.
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("1e400").is_err());
        assert!(parse("0.0000000000001ms").is_err());
    }
}
