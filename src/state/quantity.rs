//! Parsing and printing of the quantities people write in manifests and
//! flags: cpu (`250m`, `1`, `0.5`), memory (`64Mi`, `1G`, `1048576`) and
//! durations (`500ms`, `2s`, `5m`, `1m30s`). Kept strict on purpose: a typo
//! in a resource request must be refused, not silently rounded to zero.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity was refused; the message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} '{text}': {why}")]
pub struct QuantityError {
    kind: &'static str,
    text: String,
    why: &'static str,
}

impl QuantityError {
    fn new(kind: &'static str, text: &str, why: &'static str) -> Self {
        Self {
            kind,
            text: text.to_string(),
            why,
        }
    }
}

/// Splits `12.5Mi` into the decimal number (as thousandths) and the suffix.
fn split_number(kind: &'static str, text: &str) -> Result<(u128, String), QuantityError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(QuantityError::new(kind, text, "empty"));
    }
    if t.starts_with('-') {
        return Err(QuantityError::new(kind, text, "must not be negative"));
    }
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    if num.is_empty() {
        return Err(QuantityError::new(kind, text, "expected a number"));
    }
    let mut parts = num.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
        return Err(QuantityError::new(kind, text, "expected a number"));
    }
    if frac.len() > 3 {
        return Err(QuantityError::new(kind, text, "at most 3 decimals"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| QuantityError::new(kind, text, "number too large"))?
    };
    let mut frac_thousandths: u128 = 0;
    for (i, c) in frac.chars().enumerate() {
        let digit = c.to_digit(10).unwrap_or(0) as u128;
        frac_thousandths += digit * 10u128.pow(2 - i as u32);
    }
    let thousandths = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac_thousandths))
        .ok_or_else(|| QuantityError::new(kind, text, "number too large"))?;
    Ok((thousandths, suffix.to_string()))
}

/// CPU in millicores: `250m` = 250, `1` = 1000, `0.5` = 500.
pub fn parse_cpu(text: &str) -> Result<u64, QuantityError> {
    let (thousandths, suffix) = split_number("cpu", text)?;
    let millis = match suffix.as_str() {
        "" => thousandths,
        "m" => {
            if thousandths % 1000 != 0 {
                return Err(QuantityError::new("cpu", text, "millicores must be whole"));
            }
            thousandths / 1000
        }
        _ => {
            return Err(QuantityError::new(
                "cpu",
                text,
                "unit must be none (cores) or 'm' (millicores)",
            ))
        }
    };
    u64::try_from(millis).map_err(|_| QuantityError::new("cpu", text, "number too large"))
}

/// Memory in bytes: binary (`Ki`, `Mi`, `Gi`, `Ti`) and decimal (`k`, `M`, `G`, `T`) suffixes.
pub fn parse_memory(text: &str) -> Result<u64, QuantityError> {
    let (thousandths, suffix) = split_number("memory", text)?;
    let factor: u128 = match suffix.as_str() {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(QuantityError::new(
                "memory",
                text,
                "unit must be one of Ki, Mi, Gi, Ti, k, M, G, T",
            ))
        }
    };
    let bytes = thousandths
        .checked_mul(factor)
        .ok_or_else(|| QuantityError::new("memory", text, "number too large"))?
        / 1000;
    u64::try_from(bytes).map_err(|_| QuantityError::new("memory", text, "number too large"))
}

/// Durations: one or more `<number><unit>` with units `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, QuantityError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(QuantityError::new("duration", text, "empty"));
    }
    let mut rest = t;
    let mut total_ms: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(QuantityError::new(
                "duration",
                text,
                "expected a number, like 500ms, 2s, 5m",
            ));
        }
        let value: u128 = rest[..digits]
            .parse()
            .map_err(|_| QuantityError::new("duration", text, "number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(QuantityError::new(
                    "duration",
                    text,
                    "unit must be ms, s, m or h",
                ))
            }
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(factor)
            .and_then(|v| v.checked_add(total_ms))
            .ok_or_else(|| QuantityError::new("duration", text, "too long"))?;
    }
    let ms =
        u64::try_from(total_ms).map_err(|_| QuantityError::new("duration", text, "too long"))?;
    Ok(Duration::from_millis(ms))
}

/// `1500` -> `1500m`, `2000` -> `2`.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

const BINARY_UNITS: [(&str, u64); 4] = [
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

/// Bytes in the largest unit that divides them exactly: what specs are
/// stored and sent as. `format_memory` rounds to one decimal for people;
/// a spec's figure must come back as it was given (the fuzzer found
/// `1M` turning into 976.6Ki = 1,000,038 bytes on its way through the
/// Raft log, and 2^64-1 printing as `16777216.0Ti`, which does not parse).
pub fn format_memory_exact(bytes: u64) -> String {
    let Some((unit, size)) = BINARY_UNITS.iter().find(|(_, size)| bytes >= *size) else {
        return bytes.to_string();
    };
    if bytes.is_multiple_of(*size) {
        return format!("{}{unit}", bytes / size);
    }
    for (unit, size) in [
        ("T", 1_000_000_000_000u64),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Largest binary unit that keeps the number readable: `268435456` -> `256Mi`.
pub fn format_memory(bytes: u64) -> String {
    let Some((unit, size)) = BINARY_UNITS.iter().find(|(_, size)| bytes >= *size) else {
        return bytes.to_string();
    };
    if bytes.is_multiple_of(*size) {
        return format!("{}{unit}", bytes / size);
    }
    let rounded = format!("{:.1}{unit}", bytes as f64 / *size as f64);
    // Just below 2^64 the rounding leaves the u64 range: the exact figure
    // then, so that whatever is shown can be typed back.
    if parse_memory(&rounded).is_ok() {
        rounded
    } else {
        format_memory_exact(bytes)
    }
}

/// `1500ms` -> `1500ms`, `120000` -> `2m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds). Times come
/// from commands that peers and clients send, so an absurd value must print
/// as something, never panic: past the year 9999 it is clamped.
pub fn format_epoch_ms(ms: u64) -> String {
    const LAST_MS: u64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A duration that reads and writes itself as text (`2s`) in manifests,
/// JSON output and the replicated state alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("1"), Ok(1000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2.25"), Ok(2250));
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("1.5m").is_err());
        assert!(parse_cpu("1x").is_err());
        assert!(parse_cpu("").is_err());
        assert!(parse_cpu("99999999999999999999999").is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5Ki"), Ok(1536));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert!(parse_memory("12Q").is_err());
        assert!(parse_memory("99999999Ti").is_err());
        assert_eq!(format_memory(256 << 20), "256Mi");
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(2000), "2");
    }

    #[test]
    fn duration_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
