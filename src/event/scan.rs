//! Reading a JSON body's structure byte by byte, without parsing it: nesting depth, which
//! bytes are inside strings, where the value starts.

/// True when arrays and objects nest deeper than `max` (strings are skipped). Exact for valid
/// JSON; on invalid JSON the parser rejects the body anyway.
pub(super) fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    // Depth never exceeds the number of `[` and `{` bytes, and counting them is far cheaper
    // than following strings: most callbacks hold fewer openers than the limit.
    if body.iter().filter(|&&b| b == b'[' || b == b'{').count() <= max {
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
