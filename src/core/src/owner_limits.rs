//! Which owner-wide limit applies: an administrator sets limits for one owner (`alice`), for an
//! owner pattern (`team-*`, `*@example.com`) or for every owner (`*`). For an owner and a limit
//! name, an exact match beats a pattern, a longer (more specific) pattern beats a shorter one,
//! and any pattern beats the default `*`.

/// Does `owner` match `pattern`, where `*` stands for any run of characters?
pub fn glob(pattern: &str, owner: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == owner;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !owner.starts_with(first) || owner.len() < first.len() + last.len() || !owner.ends_with(last)
    {
        return false;
    }
    let mut rest = &owner[first.len()..owner.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The row that applies to (`owner`, `name`) among `(pattern, name, value)` rows.
pub fn resolve<'a, T>(rows: &'a [(String, String, T)], owner: &str, name: &str) -> Option<&'a T> {
    let rank = |pattern: &str| -> Option<(u8, usize)> {
        if pattern == owner {
            Some((3, pattern.len()))
        } else if pattern == "*" {
            Some((1, 0))
        } else if pattern.contains('*') && glob(pattern, owner) {
            Some((2, pattern.len()))
        } else {
            None
        }
    };
    rows.iter()
        .filter(|(_, n, _)| n == name)
        .filter_map(|(p, _, v)| rank(p).map(|r| (r, v)))
        .max_by_key(|(r, _)| *r)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("team-*", "team-red"));
        assert!(glob("*@example.com", "jo@example.com"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(!glob("team-*", "tea"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn exact_beats_pattern_beats_default() {
        let rows = vec![
            ("*".to_string(), "requests".to_string(), 1),
            ("team-*".to_string(), "requests".to_string(), 2),
            ("team-red*".to_string(), "requests".to_string(), 3),
            ("team-red-1".to_string(), "requests".to_string(), 4),
            ("team-red-1".to_string(), "expensive".to_string(), 5),
        ];
        assert_eq!(resolve(&rows, "team-red-1", "requests"), Some(&4));
        assert_eq!(resolve(&rows, "team-red-2", "requests"), Some(&3));
        assert_eq!(resolve(&rows, "team-blue", "requests"), Some(&2));
        assert_eq!(resolve(&rows, "solo", "requests"), Some(&1));
        assert_eq!(resolve(&rows, "solo", "expensive"), None);
    }
}
