//! Reading a JSON body's structure byte by byte, without parsing it: nesting depth, which
//! bytes are inside strings, where the value starts.

/// True when arrays and objects nest deeper than `max` (strings are skipped). Exact for valid
/// JSON; on invalid JSON the parser rejects the body anyway.
pub(super) fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    // Depth never exceeds the number of `[` and `{` bytes, and counting them is far cheaper
    // than following strings: most callbacks hold fewer openers than the limit.
    if openers(body) <= max {
        return false;
    }
    let mut depth = 0usize;
    for (byte, in_string) in with_string_flags(body) {
        match byte {
            _ if in_string => {}
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many `[` and `{` bytes `body` holds. Counted into a byte per chunk of 255, a loop the
/// compiler turns into vector compares (a `usize` per byte stays one byte at a time).
fn openers(body: &[u8]) -> usize {
    body.chunks(usize::from(u8::MAX))
        .map(|chunk| {
            let in_chunk = chunk
                .iter()
                .fold(0u8, |count, &b| count + u8::from(b == b'[' || b == b'{'));
            usize::from(in_chunk)
        })
        .sum()
}

/// Each byte of `json` with whether it belongs to a string (its quotes included), so that
/// structure can be read without parsing. Exact for valid JSON.
pub fn with_string_flags(json: &[u8]) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    json.iter().map(move |&byte| {
        let inside = in_string || byte == b'"';
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        }
        (byte, inside)
    })
}

/// The first byte that is not JSON whitespace.
pub(super) fn first_byte(body: &[u8]) -> Option<u8> {
    body.get(skip_whitespace(body, 0)).copied()
}

/// The position of the first byte at or after `from` that is not JSON whitespace (the length
/// when there is none).
pub(super) fn skip_whitespace(body: &[u8], from: usize) -> usize {
    body.iter()
        .skip(from)
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(body.len().max(from), |offset| from + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers_are_counted_across_chunks() {
        assert_eq!(openers(b""), 0);
        assert_eq!(openers(br#"{"a":[1,{"b":"[{"}]}"#), 5);
        // A chunk of nothing but openers fills its byte counter exactly.
        assert_eq!(openers(&[b'{'; 255]), 255);
        assert_eq!(openers(&[b'['; 1000]), 1000);
        let mixed: Vec<u8> = (0..3000).map(|i| [b'[', b'x', b'{'][i % 3]).collect();
        assert_eq!(openers(&mixed), 2000);
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        let deep = format!("{}{}", "[".repeat(5), "]".repeat(5));
        assert!(!nesting_exceeds(deep.as_bytes(), 5));
        assert!(nesting_exceeds(deep.as_bytes(), 4));
        let in_strings = format!(r#"["{}"]"#, "[".repeat(300));
        assert!(!nesting_exceeds(in_strings.as_bytes(), 2));
    }
}
