//! The error catalogue: every error the extension raises, with its SQLSTATE and message.
//!
//! The "Errors" table of docs/admin.md is this file in prose. Messages never contain a key, a digest or any
//! fragment of caller input that could be one; they name what was wrong instead.

use std::fmt;

use crate::format::KeyError;
use crate::rights::Widening;

/// The SQLSTATEs we use. All are standard codes: pgrx can only raise codes Postgres itself defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sqlstate {
    /// 22P02 invalid_text_representation: a malformed key.
    InvalidTextRepresentation,
    /// 22023 invalid_parameter_value: a bad argument (empty name, non-positive interval, ...).
    InvalidParameterValue,
    /// 22004 null_value_not_allowed.
    NullValueNotAllowed,
    /// 28000 invalid_authorization_specification: unknown, revoked, deleted or expired key.
    InvalidAuthorization,
    /// 42501 insufficient_privilege: authenticated but not allowed.
    InsufficientPrivilege,
    /// P0002 no_data_found: the key id (or example row) does not exist.
    NoDataFound,
    /// 53400 configuration_limit_exceeded: a rate limit or quota; retry after the DETAIL's seconds.
    RateLimited,
    /// 55000 object_not_in_prerequisite_state: e.g. the library is not preloaded.
    NotInPrerequisiteState,
    /// 42710 duplicate_object.
    DuplicateObject,
    /// 25006 read_only_sql_transaction: a change attempted on a hot standby.
    ReadOnly,
    /// 23505 unique_violation: an imported key that is already stored.
    UniqueViolation,
    /// 57P03 cannot_connect_now: a standby cannot reach the primary that leases it credits.
    CannotConnectNow,
    /// XX000 internal_error: a damaged install or a bug; never caused by input alone.
    Internal,
}

impl Sqlstate {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidTextRepresentation => "22P02",
            Self::InvalidParameterValue => "22023",
            Self::NullValueNotAllowed => "22004",
            Self::InvalidAuthorization => "28000",
            Self::InsufficientPrivilege => "42501",
            Self::NoDataFound => "P0002",
            Self::RateLimited => "53400",
            Self::NotInPrerequisiteState => "55000",
            Self::DuplicateObject => "42710",
            Self::ReadOnly => "25006",
            Self::UniqueViolation => "23505",
            Self::CannotConnectNow => "57P03",
            Self::Internal => "XX000",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ApiError {
    MalformedKey(KeyError),
    /// Unknown, revoked or deleted: one message so the error is no oracle for which.
    InvalidKey,
    ExpiredKey,
    /// Disabled by `apikey.disable`: reversible, unlike a revoke.
    DisabledKey,
    /// The key has an allow-list and the request comes from elsewhere.
    AddressNotAllowed,
    /// A usage-limited key spent its credits; when it refills, the seconds until then.
    NoCredits {
        retry_after: Option<u64>,
    },
    /// No key was presented (or no transaction identity where one is required).
    KeyRequired(&'static str),
    /// The key this transaction authenticated with was revoked, disabled, deleted or expired
    /// (or is used from an address it does not allow) since: it acts no more.
    AuthorityLost,
    WrongKind {
        expected: &'static str,
    },
    NotKeyAdmin,
    /// Something only superusers and administrators of this database may do.
    AdminOnly(&'static str),
    MissingScope(String),
    OutsideResource(String),
    KeyNotFound(i64),
    KeyRevoked(i64),
    InvalidArgument(String),
    NullArgument(&'static str),
    RateLimited {
        message: String,
        retry_after: u64,
    },
    NotPreloaded(&'static str),
    DuplicateFormat(String),
    /// A recoverable key could not be sealed or opened (no or wrong server key).
    NotRecoverable(String),
    /// A change attempted on a hot standby.
    OnStandby(&'static str),
    /// A key holder asked for more than the key they authenticated with holds.
    Widens(Widening),
    /// An expired key cannot be rotated (create a new one).
    KeyExpired(i64),
    /// A key already in a rotation's grace period cannot be rotated again.
    KeyInGrace(i64),
    /// A disabled key cannot be rotated: its successor would be an enabled key.
    KeyDisabled(i64),
    /// A key with credits made by the current transaction cannot spend them before it commits
    /// (nobody else can see its row, so the spending could not be written).
    UncommittedCredits,
    /// The extension is not installed in this database (a stale call path).
    NotInstalled,
    /// On a standby: the key's credits are leased from the primary, which cannot be reached, and
    /// what this server holds does not cover the cost.
    LedgerUnreachable,
    /// On a standby: a global limit's tokens come from the primary, which cannot be reached, and
    /// what this server holds does not cover the request.
    LimitsUnreachable,
    /// The shared-memory rate limiter has no idle slot for a new bucket: refuse rather than evict
    /// a bucket that still holds a limit.
    LimiterFull,
    /// Something that cannot happen in a sound install; fails closed without detail.
    Internal(&'static str),
    /// Something only a superuser may do (granting administrator rights).
    SuperuserOnly(&'static str),
    /// Something only superusers and roles with REPLICATION may do (a standby's worker).
    ReplicationOnly(&'static str),
    /// An import whose hash or lookup part is unusable (says what, never the value).
    ImportRefused(crate::imported::Refusal),
    /// An imported key that is already stored (same digest, or same bcrypt lookup part).
    AlreadyStored(&'static str),
}

impl ApiError {
    /// A request limit's refusal; `what` names the limit ("API key", "Owner", "\"expensive\"").
    pub fn rate_limited(what: &str, retry_after: u64) -> Self {
        Self::RateLimited {
            message: format!(
                "{what} rate limit exceeded. Please try again in {retry_after} seconds."
            ),
            retry_after,
        }
    }

    pub fn sqlstate(&self) -> Sqlstate {
        match self {
            Self::MalformedKey(_) => Sqlstate::InvalidTextRepresentation,
            Self::InvalidKey
            | Self::ExpiredKey
            | Self::DisabledKey
            | Self::KeyRequired(_)
            | Self::AuthorityLost
            | Self::WrongKind { .. } => Sqlstate::InvalidAuthorization,
            Self::NotKeyAdmin
            | Self::AdminOnly(_)
            | Self::MissingScope(_)
            | Self::OutsideResource(_)
            | Self::Widens(_)
            | Self::AddressNotAllowed
            | Self::SuperuserOnly(_)
            | Self::ReplicationOnly(_) => Sqlstate::InsufficientPrivilege,
            Self::KeyNotFound(_) => Sqlstate::NoDataFound,
            Self::KeyRevoked(_)
            | Self::KeyExpired(_)
            | Self::KeyInGrace(_)
            | Self::KeyDisabled(_)
            | Self::UncommittedCredits
            | Self::NotInstalled => Sqlstate::NotInPrerequisiteState,
            Self::InvalidArgument(_) | Self::ImportRefused(_) => Sqlstate::InvalidParameterValue,
            Self::AlreadyStored(_) => Sqlstate::UniqueViolation,
            Self::NullArgument(_) => Sqlstate::NullValueNotAllowed,
            Self::RateLimited { .. } | Self::LimiterFull | Self::NoCredits { .. } => {
                Sqlstate::RateLimited
            }
            Self::Internal(_) => Sqlstate::Internal,
            Self::NotPreloaded(_) | Self::NotRecoverable(_) => Sqlstate::NotInPrerequisiteState,
            Self::DuplicateFormat(_) => Sqlstate::DuplicateObject,
            Self::OnStandby(_) => Sqlstate::ReadOnly,
            Self::LedgerUnreachable | Self::LimitsUnreachable => Sqlstate::CannotConnectNow,
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            // Machine-readable, so a proxy can turn it into a Retry-After header.
            Self::RateLimited { retry_after, .. } => {
                Some(format!("{{\"retry_after\": {retry_after}}}"))
            }
            Self::LimiterFull | Self::LedgerUnreachable | Self::LimitsUnreachable => {
                Some("{\"retry_after\": 1}".into())
            }
            Self::NoCredits {
                retry_after: Some(s),
            } => Some(format!("{{\"retry_after\": {s}}}")),
            Self::NoCredits { retry_after: None } => Some("{}".into()),
            _ => None,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::MalformedKey(_) => Some(
                "Check that the whole key was copied, without spaces or line breaks.".into(),
            ),
            Self::ExpiredKey => Some("Create a new key to restore access.".into()),
            Self::AuthorityLost => Some(
                "It was revoked, disabled, deleted or expired after apikey.authenticate(); authenticate again with a valid key.".into(),
            ),
            Self::OnStandby(_) => Some(
                "Keys verify and authenticate on a standby; create and change them on the primary.".into(),
            ),
            Self::NotKeyAdmin => Some(
                "Administrators (apikey.grant_admin) manage every key of their database; a key's owner manages its own keys after apikey.authenticate().".into(),
            ),
            Self::LedgerUnreachable | Self::LimitsUnreachable => Some(
                "Try again shortly, or use the primary; the standby spends what it already holds until it can reach the primary again.".into(),
            ),
            Self::NotPreloaded(_) => Some(
                "Add pg_apikey to shared_preload_libraries in postgresql.conf and restart the server.".into(),
            ),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedKey(e) => write!(f, "{e}"),
            Self::InvalidKey => write!(f, "invalid API key"),
            Self::ExpiredKey => write!(f, "API key has expired"),
            Self::DisabledKey => write!(f, "API key is disabled"),
            Self::AddressNotAllowed => write!(f, "API key is not allowed from this address"),
            Self::NoCredits { .. } => write!(f, "API key has no credits left"),
            Self::KeyRequired("") => write!(f, "API key required"),
            Self::KeyRequired(kind) => write!(f, "{kind} API key required"),
            Self::AuthorityLost => write!(
                f,
                "the API key this transaction authenticated with is no longer valid"
            ),
            Self::WrongKind { expected } => write!(f, "invalid API key: {expected} key required"),
            Self::NotKeyAdmin => write!(f, "permission denied to manage this API key"),
            Self::AdminOnly(what) => {
                write!(
                    f,
                    "permission denied to {what}: pg_apikey administrator rights in this database required"
                )
            }
            Self::MissingScope(s) => write!(f, "API key lacks the scope \"{s}\""),
            Self::OutsideResource(r) => write!(f, "API key is not valid for resource \"{r}\""),
            Self::KeyNotFound(id) => write!(f, "API key {id} does not exist"),
            Self::KeyRevoked(id) => write!(f, "API key {id} is revoked"),
            Self::InvalidArgument(m) => write!(f, "{m}"),
            Self::NullArgument(arg) => write!(f, "{arg} must not be null"),
            Self::RateLimited { message, .. } => write!(f, "{message}"),
            Self::NotPreloaded(what) => {
                write!(f, "{what} needs pg_apikey in shared_preload_libraries")
            }
            Self::NotRecoverable(why) => write!(f, "{why}"),
            Self::OnStandby(what) => write!(f, "cannot {what} on a hot standby"),
            Self::Widens(w) => write!(
                f,
                "an API key can only act within its own rights: {}",
                w.describe()
            ),
            Self::KeyExpired(id) => write!(f, "API key {id} has expired"),
            Self::KeyInGrace(id) => write!(
                f,
                "API key {id} is already being replaced: rotate its successor instead"
            ),
            Self::KeyDisabled(id) => write!(
                f,
                "API key {id} is disabled: enable it before rotating it"
            ),
            Self::UncommittedCredits => write!(
                f,
                "a key with credits cannot spend them in the transaction that created it: commit first"
            ),
            Self::NotInstalled => write!(f, "pg_apikey is not installed in this database"),
            Self::LedgerUnreachable => write!(
                f,
                "API key credits are unavailable: this standby cannot reach the primary that holds them"
            ),
            Self::LimitsUnreachable => write!(
                f,
                "Global rate limit unavailable: this standby cannot reach the primary that holds it"
            ),
            Self::LimiterFull => write!(
                f,
                "the rate limiter is full: no idle slot for a new limit. Please try again in 1 second."
            ),
            Self::Internal(what) => write!(f, "pg_apikey internal error: {what}"),
            Self::SuperuserOnly(what) => write!(f, "permission denied to {what}: superuser required"),
            Self::ReplicationOnly(what) => write!(
                f,
                "permission denied to {what}: superuser or the REPLICATION attribute required"
            ),
            Self::ImportRefused(r) => write!(f, "{r}"),
            Self::AlreadyStored(what) => write!(f, "{what}"),
            Self::DuplicateFormat(name) => write!(
                f,
                "key format \"{name}\" already exists or uses the same prefix"
            ),
        }
    }
}

/// The Coldflow seed's wording for the creation quota.
pub fn creation_quota_message(retry_after: u64) -> String {
    format!("Too many API key creation requests. Please try again in {retry_after} seconds.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_revoked_and_deleted_share_one_message() {
        assert_eq!(ApiError::InvalidKey.to_string(), "invalid API key");
        assert_eq!(ApiError::InvalidKey.sqlstate().code(), "28000");
        assert_eq!(ApiError::ExpiredKey.to_string(), "API key has expired");
        assert_eq!(ApiError::ExpiredKey.sqlstate().code(), "28000");
    }

    #[test]
    fn quota_message_matches_the_seed() {
        let e = ApiError::RateLimited {
            message: creation_quota_message(3420),
            retry_after: 3420,
        };
        assert_eq!(
            e.to_string(),
            "Too many API key creation requests. Please try again in 3420 seconds."
        );
        assert_eq!(e.detail().unwrap(), "{\"retry_after\": 3420}");
        assert_eq!(e.sqlstate().code(), "53400");
    }
}
