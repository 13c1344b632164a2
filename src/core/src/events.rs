//! Key events: what each audited action is called on channel `apikey_events`, and the settings
//! of the events the usage worker announces.

/// The event an audited action announces.
pub fn for_action(action: &str) -> &'static str {
    match action {
        "create" => "created",
        "rotate" => "rotated",
        "disable" => "disabled",
        "enable" => "enabled",
        "revoke" => "revoked",
        "delete" => "deleted",
        "leaked" => "leaked",
        "import" => "imported",
        "rehash" => "rehashed",
        "reveal" => "revealed",
        "add_credits" => "credits_added",
        _ => "changed",
    }
}

/// `apikey.expiry_notice_days`: comma-separated whole days such as `30, 7, 1`. Entries that are
/// not positive whole numbers up to ten years are ignored; duplicates count once.
pub fn notice_days(setting: &str) -> Vec<i32> {
    let mut days: Vec<i32> = setting
        .split(',')
        .filter_map(|d| d.trim().parse::<i32>().ok())
        .filter(|d| (1..=3650).contains(d))
        .collect();
    days.sort_unstable_by(|a, b| b.cmp(a));
    days.dedup();
    days
}

/// The number of the window of `window_s` seconds that `now_s` (epoch seconds) falls in: a key
/// refused by a limit is announced once per window.
pub fn window_number(now_s: i64, window_s: i64) -> i64 {
    now_s.div_euclid(window_s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audited_action_has_an_event() {
        for a in [
            "create",
            "rotate",
            "disable",
            "enable",
            "revoke",
            "delete",
            "leaked",
            "import",
            "rehash",
            "reveal",
            "add_credits",
        ] {
            assert_ne!(for_action(a), "changed", "{a}");
        }
    }

    #[test]
    fn notice_days_keep_valid_thresholds_longest_first() {
        assert_eq!(notice_days("7"), vec![7]);
        assert_eq!(notice_days(" 1, 30,7 ,7, -2, x, 0, 99999"), vec![30, 7, 1]);
        assert!(notice_days("").is_empty());
    }

    #[test]
    fn windows_are_consecutive() {
        assert_eq!(window_number(0, 3600), 0);
        assert_eq!(window_number(3599, 3600), 0);
        assert_eq!(window_number(3600, 3600), 1);
        assert_eq!(window_number(10, 0), 10);
    }
}
