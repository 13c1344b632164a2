//! Permission scopes: `resource:action` strings with `*` wildcards.
//!
//! A granted `surveys:*` covers `surveys:read` and `surveys:write:draft`; a granted `*` covers
//! everything. Wildcards are only meaningful in what a key *holds*, never in what is *asked for*:
//! asking for `surveys:*` is satisfied only by `surveys:*` or `*`.

/// Does the set of granted scopes cover `required`?
pub fn covers(granted: &[String], required: &str) -> bool {
    granted.iter().any(|g| grant_covers(g, required))
}

fn grant_covers(grant: &str, required: &str) -> bool {
    if grant == "*" || grant == required {
        return true;
    }
    match grant.strip_suffix('*') {
        // "surveys:*" covers "surveys:" followed by anything non-empty.
        Some(stem) if stem.ends_with(':') => {
            required.len() > stem.len() && required.starts_with(stem)
        }
        _ => false,
    }
}

/// A scope as written by an administrator: `[a-z0-9_.-]` segments separated by `:`, and `*` only
/// as the whole scope or the whole last segment.
pub fn is_valid(scope: &str) -> bool {
    if scope == "*" {
        return true;
    }
    if scope.is_empty() || scope.len() > 128 {
        return false;
    }
    let segments: Vec<&str> = scope.split(':').collect();
    segments.iter().enumerate().all(|(i, s)| {
        (*s == "*" && i == segments.len() - 1 && i > 0)
            || (!s.is_empty()
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_and_wildcard_grants() {
        assert!(covers(&g(&["surveys:read"]), "surveys:read"));
        assert!(!covers(&g(&["surveys:read"]), "surveys:write"));
        assert!(covers(&g(&["surveys:*"]), "surveys:read"));
        assert!(covers(&g(&["surveys:*"]), "surveys:write:draft"));
        assert!(!covers(&g(&["surveys:*"]), "surveys"));
        assert!(!covers(&g(&["surveys:*"]), "surveysx:read"));
        assert!(covers(&g(&["*"]), "anything:at:all"));
        assert!(!covers(&g(&[]), "surveys:read"));
    }

    #[test]
    fn asking_for_a_wildcard_needs_a_wildcard() {
        assert!(!covers(&g(&["surveys:read"]), "surveys:*"));
        assert!(covers(&g(&["surveys:*"]), "surveys:*"));
        assert!(covers(&g(&["*"]), "surveys:*"));
    }

    #[test]
    fn validity() {
        for ok in ["*", "surveys:read", "surveys:*", "a.b-c_d:e", "metrics"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "Surveys:read",
            "surveys:",
            ":read",
            "*:read",
            "sur veys",
            "a:*:b",
            "x*",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
