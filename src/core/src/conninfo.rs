//! libpq connection strings (`keyword = value` pairs) and the `options` startup parameter: what
//! a standby's worker adds to the conninfo an administrator gave must neither break it nor drop
//! what it set. The same settings as `SET` commands, for connections whose `options` the server's
//! libpq wrapper replaces.

/// Whitespace as libpq's parser sees it (C's `isspace`, ASCII only): anything else, a
/// non-breaking space say, is part of a value to libpq, and so it must be here.
fn is_space(c: &char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The `keyword = value` pairs of a connection string, in order (libpq's rules: a value is
/// single-quoted or ends at whitespace; a backslash takes the next character literally). `None`
/// when it is not such a string.
pub fn parse(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(is_space).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(c)) {
            key.push(c);
        }
        while chars.next_if(is_space).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.next_if(is_space).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(c)) {
                value.push(if c == '\\' { chars.next()? } else { c });
            }
        }
        out.push((key, value));
    }
}

/// `value` as a single-quoted connection string value.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `settings` as the server reads the `options` startup parameter: `-c name=value` each,
/// whitespace and backslashes escaped.
pub fn options(settings: &[(&str, &str)]) -> String {
    let escape = |s: &str| {
        s.chars().fold(String::new(), |mut out, c| {
            if c == '\\' || is_space(&c) {
                out.push('\\');
            }
            out.push(c);
            out
        })
    };
    settings
        .iter()
        .map(|(n, v)| format!("-c {}={}", escape(n), escape(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `settings` as `SET` commands, one after another. A value is a list of `, `-separated
/// elements, each quoted (`search_path` is such a list); values hold no quote.
pub fn set_commands(settings: &[(&str, &str)]) -> String {
    settings
        .iter()
        .map(|(n, v)| {
            let elements: Vec<String> = v.split(", ").map(|e| format!("'{e}'")).collect();
            format!("SET {n} = {}; ", elements.join(", "))
        })
        .collect()
}

/// `base` with `extra` pairs added, `options` last: what `base` passed in its own `options`
/// first, then `settings`, which the server applies later and so override them. A keyword given
/// twice takes its last value (libpq's rule), so `extra` overrides `base`. Every value is written
/// anew, quoted, from what `parse` read: nothing of `base` is passed on as it was written, so no
/// value can run on into the next. `None` when `base` is not a connection string.
pub fn with_settings(
    base: &str,
    extra: &[(&str, &str)],
    settings: &[(&str, &str)],
) -> Option<String> {
    let pairs = parse(base)?;
    let given = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "options")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let options = [given, &self::options(settings)]
        .iter()
        .filter(|o| !o.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let kept = pairs
        .iter()
        .filter(|(k, _)| k != "options")
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let all = kept
        .chain(extra.iter().copied())
        .chain([("options", options.as_str())]);
    Some(
        all.map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_what_libpq_accepts() {
        assert_eq!(
            parse("host=/run/pg port = 5432  user='a b' password='it\\'s' x=a\\ b").unwrap(),
            pairs(&[
                ("host", "/run/pg"),
                ("port", "5432"),
                ("user", "a b"),
                ("password", "it's"),
                ("x", "a b")
            ])
        );
        assert_eq!(parse("  ").unwrap(), vec![]);
        assert_eq!(parse("dbname=''").unwrap(), pairs(&[("dbname", "")]));
    }

    #[test]
    fn refuses_what_libpq_refuses() {
        for bad in ["host", "=x", "host='open", "host=x\\", "a b=c"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn no_value_runs_on_into_what_is_added() {
        // A last value ending in an escaped space, or holding a space libpq does not count as
        // one: what is added after it stays its own pair.
        for base in [
            "host=h password=pw\\ ",
            "host=h password=a\u{a0}b",
            "host=h password='it\\'s'",
        ] {
            let out = with_settings(base, &[("dbname", "x host=evil dbname='")], &[]).unwrap();
            let mut expected = parse(base).unwrap();
            expected.push(("dbname".into(), "x host=evil dbname='".into()));
            expected.push(("options".into(), String::new()));
            assert_eq!(parse(&out).unwrap(), expected, "{base}");
        }
        assert_eq!(
            parse("password=a\u{a0}b").unwrap(),
            pairs(&[("password", "a\u{a0}b")])
        );
    }

    #[test]
    fn options_escape_spaces_and_backslashes() {
        assert_eq!(
            options(&[
                ("default_transaction_isolation", "read committed"),
                ("x", "a\\b")
            ]),
            "-c default_transaction_isolation=read\\ committed -c x=a\\\\b"
        );
    }

    #[test]
    fn set_commands_quote_each_element_of_a_list() {
        assert_eq!(
            set_commands(&[
                ("search_path", "pg_catalog, pg_temp"),
                ("default_transaction_isolation", "read committed")
            ]),
            "SET search_path = 'pg_catalog', 'pg_temp'; \
             SET default_transaction_isolation = 'read committed'; "
        );
    }

    #[test]
    fn settings_come_after_the_administrators_options_and_extras_override() {
        let out = with_settings(
            "host=h dbname=other options='-c work_mem=64MB'",
            &[("dbname", "it's")],
            &[("statement_timeout", "10s")],
        )
        .unwrap();
        let parsed = parse(&out).unwrap();
        let last = |k: &str| parsed.iter().rev().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(last("host"), "h");
        assert_eq!(last("dbname"), "it's");
        assert_eq!(last("options"), "-c work_mem=64MB -c statement_timeout=10s");
        let out = with_settings("host=h", &[], &[("a", "b")]).unwrap();
        assert_eq!(out, "host='h' options='-c a=b'");
        assert_eq!(with_settings("host='h", &[], &[]), None);
    }
}
