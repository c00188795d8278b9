//! Allocation-free text formatting for the writer's hot loops: integers, floats with a fixed
//! number of significant digits, and `YYYY-MM-DD HH:MM:SS` UTC timestamps. Writing 50M rows
//! through `format!` would allocate 100M strings; these append bytes to a reused buffer.

/// Append the decimal digits of `v`.
#[inline]
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Append `v` with at most `sig` significant digits (1..=9) in plain decimal notation, without
/// trailing zeros: `0.012346`, `-1.5`, `123.46`, `0`. Values with magnitude below `1e-9` print
/// as `0` (feature values are O(1), so nothing meaningful is lost), values of `1e9` or more
/// with no fraction. Non-finite values print as `nan`, `inf`, `-inf`, which Rust's `f32`
/// parser reads back.
pub(crate) fn push_f32(buf: &mut Vec<u8>, v: f32, sig: u32) {
    let sig = sig.clamp(1, 9) as i32;
    if !v.is_finite() {
        buf.extend_from_slice(if v.is_nan() {
            b"nan"
        } else if v > 0.0 {
            b"inf"
        } else {
            b"-inf"
        });
        return;
    }
    let x = f64::from(v).abs();
    if x < 1e-9 {
        buf.push(b'0');
        return;
    }
    // Number of decimals that leaves `sig` significant digits.
    let exponent = x.log10().floor() as i32;
    let decimals = (sig - 1 - exponent).clamp(0, 9) as u32;
    let scale = 10u64.pow(decimals);
    let scaled = (x * scale as f64).round() as u64;
    if scaled == 0 {
        buf.push(b'0');
        return;
    }
    if v < 0.0 {
        buf.push(b'-');
    }
    let int_part = scaled / scale;
    let mut frac = scaled % scale;
    push_u64(buf, int_part);
    if frac != 0 {
        let mut width = decimals;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        buf.push(b'.');
        let mut digits = [b'0'; 9];
        let mut f = frac;
        for d in (0..width as usize).rev() {
            digits[d] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        buf.extend_from_slice(&digits[..width as usize]);
    }
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01, by Howard Hinnant's
/// `civil_from_days` algorithm (proleptic Gregorian calendar).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[inline]
fn push_2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

/// Append a Unix time (seconds, UTC) as `YYYY-MM-DD HH:MM:SS`, the Music4All-Onion timestamp
/// format. Years outside 0..=9999 are clamped into that range's four digits by construction
/// of the generator (it only produces 1970..2100), so four digits are always written.
pub(crate) fn push_timestamp(buf: &mut Vec<u8>, unix: i64) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    push_2(buf, y / 100);
    push_2(buf, y % 100);
    buf.push(b'-');
    push_2(buf, m);
    buf.push(b'-');
    push_2(buf, d);
    buf.push(b' ');
    push_2(buf, secs / 3600);
    buf.push(b':');
    push_2(buf, secs / 60 % 60);
    buf.push(b':');
    push_2(buf, secs % 60);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f32, sig: u32) -> String {
        let mut b = Vec::new();
        push_f32(&mut b, v, sig);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn integers() {
        for (v, s) in [(0u64, "0"), (7, "7"), (10, "10"), (119_139, "119139")] {
            let mut b = Vec::new();
            push_u64(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), s);
        }
        let mut b = Vec::new();
        push_u64(&mut b, u64::MAX);
        assert_eq!(String::from_utf8(b).unwrap(), u64::MAX.to_string());
    }

    #[test]
    fn floats_hand_checked() {
        assert_eq!(f(0.0, 5), "0");
        assert_eq!(f(-0.0, 5), "0");
        assert_eq!(f(1.0, 5), "1");
        assert_eq!(f(-1.5, 5), "-1.5");
        assert_eq!(f(0.012345678, 5), "0.012346");
        assert_eq!(f(123.456_79, 5), "123.46");
        assert_eq!(f(99999.6, 5), "100000");
        assert_eq!(f(9.99996, 5), "10");
        assert_eq!(f(-0.000123456, 3), "-0.000123");
        assert_eq!(f(1e-12, 5), "0");
        assert_eq!(f(-1e-7, 2), "-0.0000001");
        assert_eq!(f(3.0e10, 5), "30000001024");
        assert_eq!(f(f32::NAN, 5), "nan");
        assert_eq!(f(f32::NEG_INFINITY, 5), "-inf");
    }

    #[test]
    fn floats_round_trip_to_relative_precision() {
        let mut x = 1.2345e-5f32;
        while x < 1e6 {
            for v in [x, -x, x * 1.777, -x * 3.1] {
                let s = f(v, 5);
                let back: f32 = s.parse().unwrap();
                assert!(
                    ((back - v) / v).abs() < 1e-4,
                    "{v} printed as {s} reads back as {back}"
                );
            }
            x *= 3.3;
        }
    }

    #[test]
    fn timestamps_hand_checked() {
        let t = |u: i64| {
            let mut b = Vec::new();
            push_timestamp(&mut b, u);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(t(0), "1970-01-01 00:00:00");
        assert_eq!(t(1_514_764_800), "2018-01-01 00:00:00");
        // 2020-02-29 is a leap day: 1582934400 is its midnight.
        assert_eq!(t(1_582_934_400 + 3_723), "2020-02-29 01:02:03");
        assert_eq!(t(1_583_020_799), "2020-02-29 23:59:59");
        assert_eq!(t(1_583_020_800), "2020-03-01 00:00:00");
        assert_eq!(t(-1), "1969-12-31 23:59:59");
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
    }
}
