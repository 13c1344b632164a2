//! How deeply a JSON text nests, decided without parsing it: a holder-supplied document (metadata,
//! limits, a leak report) is refused for nesting before a recursive parser could fail on it.

/// The deepest nesting pg_apikey accepts in a JSON argument. serde_json refuses beyond 128.
pub const MAX_DEPTH: usize = 32;

/// Does `text` (valid JSON, as Postgres prints it) nest arrays and objects at most `max` deep?
/// Brackets inside strings do not count.
pub fn within(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nesting_not_brackets_in_strings() {
        assert!(within(r#"{"a": [1, {"b": 2}]}"#, 3));
        assert!(!within(r#"{"a": [1, {"b": 2}]}"#, 2));
        assert!(within(r#"{"a": "[[[[[[\"{{{{"}"#, 1));
        assert!(within(r#"[["\\"], []]"#, 2));
        let deep = "[".repeat(33) + &"]".repeat(33);
        assert!(!within(&deep, MAX_DEPTH));
        assert!(within(&deep, 33));
        assert!(within("42", 0));
    }

    #[test]
    fn random_documents_nest_exactly_as_built() {
        let mut next = crate::test_rng::xorshift(7);
        for _ in 0..2000 {
            let depth = (next() % 12) as usize;
            let mut doc = String::from("1");
            for level in 0..depth {
                doc = if next().is_multiple_of(2) {
                    format!("[\"]{level}\", {doc}]")
                } else {
                    format!("{{\"k{{\": {doc}}}")
                };
            }
            assert!(within(&doc, depth));
            assert_eq!(within(&doc, depth.saturating_sub(1)), depth == 0);
        }
    }
}
