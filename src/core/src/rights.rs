//! What a key may do to other keys: the rule that rights never widen.
//!
//! A caller authenticated with key K may create, rotate, reveal, revoke or delete a key only if
//! that key holds no more than K: no scope K lacks, no other resource, no later expiry, no looser
//! request limit, no other database role, and no application kind. Every management path asks
//! `within` (or `derive` for a new key) before it touches a row, so there is one rule, not five.

use crate::gcra::Rate;
use crate::ipnet::Cidr;
use crate::scope;

/// The two kinds of key: a user's, and an application's (the Cool Farm Tool pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    User,
    App,
}

impl KeyKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Self::User),
            "app" => Some(Self::App),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::App => "app",
        }
    }
}

/// Everything about a key that bounds what its holder can do.
#[derive(Clone, Debug, PartialEq)]
pub struct Rights {
    pub kind: KeyKind,
    /// None: unscoped (every scope).
    pub scopes: Option<Vec<String>>,
    /// None: every resource.
    pub resource: Option<String>,
    /// Microseconds on the server's clock; None: never expires.
    pub expires_at: Option<i64>,
    /// None: no request limit.
    pub rate: Option<Rate>,
    /// None: the server's default role.
    pub db_role: Option<String>,
    /// None: every address; else the blocks the key may be used from.
    pub allowed: Option<Vec<Cidr>>,
    /// Named limits (`expensive`: 10/hour, …), charged by `apikey.charge(name)`.
    pub named: Vec<(String, Rate)>,
    /// A usage-limited key (it has a credit balance). A metered key manages only metered keys:
    /// taking over an unmetered sibling (rotating, revealing, re-enabling it) would be unmetered
    /// use bought with a metered key.
    pub metered: bool,
    /// The scopes this database declares as restrictions (`apikey.deny_scopes`): tested with NOT
    /// in permission expressions, so holding one takes rights away. The same list for every
    /// key; a key that holds one of them passes it on and manages no key without it.
    pub deny: Vec<String>,
}

impl Rights {
    /// Does this key hold `scope` (an unscoped key holds every scope)?
    fn holds(&self, scope: &str) -> bool {
        self.scopes.as_ref().is_none_or(|s| scope::covers(s, scope))
    }
}

/// The first way in which a key would hold more than its caller's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Widening {
    Kind,
    Scope,
    Resource,
    Expiry,
    RateLimit,
    DbRole,
    Address,
    Credits,
    NamedLimit,
    DenyScope,
}

impl Widening {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Kind => {
                "only user keys manage keys, and only user keys can be managed with a key"
            }
            Self::Scope => "a scope the calling key does not hold",
            Self::Resource => "a resource other than the calling key's",
            Self::Expiry => "an expiry later than the calling key's",
            Self::RateLimit => "a request limit looser than the calling key's",
            Self::DbRole => "a database role other than the calling key's",
            Self::Address => "addresses outside the calling key's allow-list",
            Self::Credits => "a key with credits manages no key but itself, and creates none",
            Self::NamedLimit => "a named limit missing or looser than the calling key's",
            Self::DenyScope => {
                "a key without a restricting scope (apikey.deny_scopes) the calling key holds"
            }
        }
    }
}

/// Is `inner` no looser than `outer`: a sustained rate no faster and bursts no larger?
pub fn rate_within(outer: &Rate, inner: &Rate) -> bool {
    inner.emission_us >= outer.emission_us && inner.burst <= outer.burst
}

/// Does `target` hold no more than `caller`? Only user keys manage keys: an application key (the
/// more exposed half of a two-key pair) manages none, not even itself.
pub fn within(caller: &Rights, target: &Rights) -> Result<(), Widening> {
    if caller.kind != KeyKind::User || target.kind != KeyKind::User {
        return Err(Widening::Kind);
    }
    if let Some(mine) = &caller.scopes {
        match &target.scopes {
            None => return Err(Widening::Scope),
            Some(theirs) if !theirs.iter().all(|s| scope::covers(mine, s)) => {
                return Err(Widening::Scope)
            }
            _ => {}
        }
    }
    if caller.resource.is_some() && target.resource != caller.resource {
        return Err(Widening::Resource);
    }
    if let Some(mine) = caller.expires_at {
        if target.expires_at.is_none_or(|t| t > mine) {
            return Err(Widening::Expiry);
        }
    }
    if let Some(mine) = &caller.rate {
        if target.rate.as_ref().is_none_or(|r| !rate_within(mine, r)) {
            return Err(Widening::RateLimit);
        }
    }
    if target.db_role != caller.db_role {
        return Err(Widening::DbRole);
    }
    for (name, mine) in &caller.named {
        let theirs = target.named.iter().find(|(n, _)| n == name).map(|(_, r)| r);
        if theirs.is_none_or(|r| !rate_within(mine, r)) {
            return Err(Widening::NamedLimit);
        }
    }
    if let Some(mine) = &caller.allowed {
        match &target.allowed {
            Some(theirs) if theirs.iter().all(|t| mine.iter().any(|m| m.covers(t))) => {}
            _ => return Err(Widening::Address),
        }
    }
    if caller.metered && !target.metered {
        return Err(Widening::Credits);
    }
    if caller
        .deny
        .iter()
        .any(|d| caller.holds(d) && !target.holds(d))
    {
        return Err(Widening::DenyScope);
    }
    Ok(())
}

/// What a key holder asked for when creating a key; None means "not given".
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub scopes: Option<Vec<String>>,
    pub resource: Option<String>,
    pub expires_at: Option<i64>,
    pub rate: Option<Rate>,
    pub allowed: Option<Vec<Cidr>>,
    /// Named limits given; the caller's other named limits are inherited.
    pub named: Vec<(String, Rate)>,
}

/// The rights of a key created by the holder of `caller`: what was not given is inherited, an
/// expiry past the caller's is capped to it (a UI's default of 90 days must not fail for a key
/// that expires sooner), and anything else wider is refused.
pub fn derive(caller: &Rights, wanted: Request) -> Result<Rights, Widening> {
    // Restricting scopes the caller holds are inherited, even when scopes are given.
    let scopes = wanted.scopes.map(|mut given| {
        for d in caller.deny.iter().filter(|d| caller.holds(d)) {
            if !scope::covers(&given, d) {
                given.push(d.clone());
            }
        }
        given
    });
    let rights = Rights {
        kind: KeyKind::User,
        scopes: scopes.or_else(|| caller.scopes.clone()),
        resource: wanted.resource.or_else(|| caller.resource.clone()),
        expires_at: match (wanted.expires_at, caller.expires_at) {
            (Some(w), Some(c)) => Some(w.min(c)),
            (w, c) => w.or(c),
        },
        rate: wanted.rate.or(caller.rate),
        db_role: caller.db_role.clone(),
        allowed: wanted.allowed.or_else(|| caller.allowed.clone()),
        named: {
            let mut named = wanted.named;
            for (n, r) in &caller.named {
                if !named.iter().any(|(m, _)| m == n) {
                    named.push((n.clone(), *r));
                }
            }
            named
        },
        metered: caller.metered,
        deny: caller.deny.clone(),
    };
    within(caller, &rights)?;
    Ok(rights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: i64, period_s: i64) -> Rate {
        Rate::new(limit, period_s * 1_000_000, None).unwrap()
    }

    fn open() -> Rights {
        Rights {
            kind: KeyKind::User,
            scopes: None,
            resource: None,
            expires_at: None,
            rate: None,
            db_role: None,
            allowed: None,
            named: vec![],
            metered: false,
            deny: vec![],
        }
    }

    fn narrow() -> Rights {
        Rights {
            kind: KeyKind::User,
            scopes: Some(vec!["surveys:read".into()]),
            resource: Some("north".into()),
            expires_at: Some(1_000),
            rate: Some(rate(10, 60)),
            db_role: Some("reader".into()),
            allowed: Some(vec![Cidr::parse("10.0.0.0/8").unwrap()]),
            named: vec![("expensive".into(), rate(10, 3600))],
            metered: true,
            deny: vec![],
        }
    }

    #[test]
    fn restricting_scopes_are_inherited_and_never_shed() {
        let deny = vec!["reports:embargoed".to_string()];
        let mut caller = open();
        caller.deny = deny.clone();
        // An unscoped key holds every restriction: a scoped child gets them all.
        let child = derive(
            &caller,
            Request {
                scopes: Some(vec!["reports:read".into()]),
                ..Request::default()
            },
        )
        .unwrap();
        assert_eq!(
            child.scopes,
            Some(vec!["reports:read".into(), "reports:embargoed".into()])
        );
        let mut shed = child.clone();
        shed.scopes = Some(vec!["reports:read".into()]);
        assert_eq!(within(&child, &shed), Err(Widening::DenyScope));
        assert_eq!(within(&caller, &shed), Err(Widening::DenyScope));
        // A wildcard holds the restriction too; a key without it may manage keys without it.
        let mut wide = caller.clone();
        wide.scopes = Some(vec!["reports:*".into()]);
        assert_eq!(within(&wide, &shed), Err(Widening::DenyScope));
        let mut free = caller.clone();
        free.scopes = Some(vec!["reports:read".into()]);
        assert_eq!(within(&free, &shed), Ok(()));
    }

    #[test]
    fn a_key_is_within_itself_and_an_open_key_holds_everything() {
        assert_eq!(within(&narrow(), &narrow()), Ok(()));
        assert_eq!(within(&open(), &open()), Ok(()));
        let mut n = narrow();
        n.db_role = None;
        assert_eq!(within(&open(), &n), Ok(()));
    }

    /// A change that widens one field, and the field it should be reported as.
    type Case = (fn(&mut Rights), Widening);

    #[test]
    fn each_wider_field_is_named() {
        let caller = narrow();
        let cases: [Case; 13] = [
            (|r| r.metered = false, Widening::Credits),
            (|r| r.kind = KeyKind::App, Widening::Kind),
            (|r| r.scopes = None, Widening::Scope),
            (
                |r| r.scopes = Some(vec!["surveys:*".into()]),
                Widening::Scope,
            ),
            (|r| r.resource = None, Widening::Resource),
            (|r| r.expires_at = None, Widening::Expiry),
            (|r| r.expires_at = Some(1_001), Widening::Expiry),
            (|r| r.rate = Some(rate(11, 60)), Widening::RateLimit),
            (|r| r.db_role = None, Widening::DbRole),
            (|r| r.allowed = None, Widening::Address),
            (|r| r.named.clear(), Widening::NamedLimit),
            (
                |r| r.named = vec![("expensive".into(), rate(11, 3600))],
                Widening::NamedLimit,
            ),
            (
                |r| r.allowed = Some(vec![Cidr::parse("11.0.0.0/8").unwrap()]),
                Widening::Address,
            ),
        ];
        for (widen, expected) in cases {
            let mut target = caller.clone();
            widen(&mut target);
            assert_eq!(within(&caller, &target), Err(expected));
        }
        let mut no_limit = caller.clone();
        no_limit.rate = None;
        assert_eq!(within(&caller, &no_limit), Err(Widening::RateLimit));
    }

    #[test]
    fn an_application_key_manages_nothing() {
        let mut app = open();
        app.kind = KeyKind::App;
        assert_eq!(within(&app, &open()), Err(Widening::Kind));
        assert_eq!(derive(&app, Request::default()), Err(Widening::Kind));
    }

    #[test]
    fn narrower_is_allowed() {
        let caller = narrow();
        let mut t = caller.clone();
        t.expires_at = Some(10);
        t.rate = Some(rate(1, 60));
        t.scopes = Some(vec![]);
        assert_eq!(within(&caller, &t), Ok(()));
    }

    #[test]
    fn derive_inherits_what_is_not_given_and_caps_the_expiry() {
        let caller = narrow();
        let got = derive(&caller, Request::default()).unwrap();
        assert_eq!(got, caller);
        let later = derive(
            &caller,
            Request {
                expires_at: Some(5_000),
                ..Request::default()
            },
        )
        .unwrap();
        assert_eq!(later.expires_at, Some(1_000));
        let sooner = derive(
            &caller,
            Request {
                expires_at: Some(500),
                ..Request::default()
            },
        )
        .unwrap();
        assert_eq!(sooner.expires_at, Some(500));
    }

    #[test]
    fn derive_refuses_explicit_widening() {
        let caller = narrow();
        let wider_scope = Request {
            scopes: Some(vec!["admin".into()]),
            ..Request::default()
        };
        assert_eq!(derive(&caller, wider_scope), Err(Widening::Scope));
        let other_resource = Request {
            resource: Some("south".into()),
            ..Request::default()
        };
        assert_eq!(derive(&caller, other_resource), Err(Widening::Resource));
        let looser = Request {
            rate: Some(rate(1000, 1)),
            ..Request::default()
        };
        assert_eq!(derive(&caller, looser), Err(Widening::RateLimit));
    }

    #[test]
    fn randomized_derived_keys_are_always_within_their_caller() {
        let mut next = crate::test_rng::xorshift(0x9E37_79B9_7F4A_7C15);
        let scopes = ["a:read", "a:*", "b:write", "*"];
        for _ in 0..5_000 {
            let pick = |n: u64| -> Option<Vec<String>> {
                (!n.is_multiple_of(3)).then(|| {
                    scopes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| n >> (i + 2) & 1 == 1)
                        .map(|(_, s)| s.to_string())
                        .collect()
                })
            };
            let caller = Rights {
                kind: KeyKind::User,
                scopes: pick(next()),
                resource: next().is_multiple_of(2).then(|| "r".to_string()),
                expires_at: next().is_multiple_of(2).then(|| (next() % 100) as i64),
                rate: next()
                    .is_multiple_of(2)
                    .then(|| rate(1 + (next() % 20) as i64, 60)),
                db_role: None,
                allowed: None,
                named: vec![],
                metered: false,
                deny: vec![],
            };
            let wanted = Request {
                scopes: pick(next()),
                resource: next().is_multiple_of(3).then(|| "r".to_string()),
                expires_at: next().is_multiple_of(2).then(|| (next() % 100) as i64),
                rate: next()
                    .is_multiple_of(2)
                    .then(|| rate(1 + (next() % 20) as i64, 60)),
                allowed: None,
                named: vec![],
            };
            if let Ok(new) = derive(&caller, wanted) {
                assert_eq!(within(&caller, &new), Ok(()));
                if let Some(c) = caller.expires_at {
                    assert!(new.expires_at.is_some_and(|e| e <= c));
                }
            }
        }
    }
}
