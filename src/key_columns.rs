//! The columns of `apikey.keys`, declared once. Every rule that must cover every column is
//! derived from this list or checked against it (`tests::key_columns_are_declared_once`): the
//! invalidation trigger's column list (what caches hold), rotation's copy (what a successor
//! inherits), and the rights rule (every policy column is read into `Rights`). A column added to
//! the table and not declared here fails that test, so it cannot slip past the rules.

/// What a column is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Which key this is, and how it is found and shown.
    Identity,
    /// The digest, or material derived from the key text.
    Secret,
    /// A dimension of what the key may do: compared by `rights::within` and inherited by keys a
    /// holder creates.
    Policy,
    /// Where the key is in its life (created, expiring, revoked, disabled, rotated).
    Lifecycle,
    /// What the holder or administrator wrote about the key; trusted for nothing.
    Descriptive,
    /// A balance or a record of use, written by the usage worker.
    Bookkeeping,
}

/// What a rotation does with a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRotation {
    /// The successor inherits the old key's value.
    Copy,
    /// The successor gets this SQL expression (over the old key's row, and the parameters of
    /// `store::rotate`'s statement).
    New(&'static str),
    /// The successor starts with the column's default.
    Fresh,
}

pub struct Column {
    pub name: &'static str,
    pub role: Role,
    /// Held by the key caches, so a change must invalidate the key (the update trigger's list).
    pub cached: bool,
    pub on_rotation: OnRotation,
}

const fn col(name: &'static str, role: Role, cached: bool, on_rotation: OnRotation) -> Column {
    Column {
        name,
        role,
        cached,
        on_rotation,
    }
}

/// Every column of `apikey.keys`, in table order. `credits` is cached only as "has credits": its
/// own trigger fires when that changes, not on every balance the worker writes.
pub const KEY_COLUMNS: &[Column] = &[
    col("id", Role::Identity, true, OnRotation::Fresh),
    col("owner", Role::Policy, true, OnRotation::Copy),
    col("name", Role::Descriptive, true, OnRotation::Copy),
    col("format", Role::Identity, true, OnRotation::Copy),
    col("kind", Role::Policy, true, OnRotation::Copy),
    col("scopes", Role::Policy, true, OnRotation::Copy),
    col("resource", Role::Policy, true, OnRotation::Copy),
    col("display_prefix", Role::Secret, true, OnRotation::New("$2")),
    col("last4", Role::Secret, true, OnRotation::New("$3")),
    col("digest", Role::Secret, true, OnRotation::New("$4")),
    col("expires_in", Role::Policy, true, OnRotation::Copy),
    col("created_at", Role::Lifecycle, true, OnRotation::Fresh),
    col("created_by", Role::Lifecycle, true, OnRotation::New("$5")),
    col("expires_at", Role::Policy, true, OnRotation::New("$7")),
    col("last_used_at", Role::Bookkeeping, false, OnRotation::Fresh),
    col("revoked_at", Role::Lifecycle, true, OnRotation::Fresh),
    col("rotated_from", Role::Lifecycle, true, OnRotation::New("id")),
    col("sealed", Role::Secret, true, OnRotation::New("$6")),
    col("rate_limit", Role::Policy, true, OnRotation::Copy),
    col("rate_period", Role::Policy, true, OnRotation::Copy),
    col("rate_burst", Role::Policy, true, OnRotation::Copy),
    col("db_role", Role::Policy, true, OnRotation::Copy),
    col("metadata", Role::Descriptive, true, OnRotation::Copy),
    col("disabled_at", Role::Lifecycle, true, OnRotation::Fresh),
    col("allowed_ips", Role::Policy, true, OnRotation::Copy),
    col("credits", Role::Policy, false, OnRotation::New("$8")),
    col("refill_amount", Role::Policy, true, OnRotation::Copy),
    col("refill_interval", Role::Policy, true, OnRotation::Copy),
    col(
        "credits_refilled_at",
        Role::Bookkeeping,
        false,
        // The moved balance is what the old key held now (a due refill applied): the
        // successor's next refill is a whole interval away.
        OnRotation::New("CASE WHEN credits IS NULL THEN NULL ELSE pg_catalog.now() END"),
    ),
    col("credits_peak", Role::Bookkeeping, false, OnRotation::Fresh),
    col("limits", Role::Policy, true, OnRotation::Copy),
    col(
        "lineage",
        Role::Lifecycle,
        true,
        OnRotation::New("COALESCE(lineage, id)"),
    ),
];

/// The statement that inserts the successor of key `$1` (see `store::rotate` for the other
/// parameters), built from the declaration so no column can be forgotten.
pub fn rotation_insert() -> String {
    let moved = KEY_COLUMNS
        .iter()
        .filter(|c| c.on_rotation != OnRotation::Fresh);
    let names: Vec<&str> = moved.clone().map(|c| c.name).collect();
    let values: Vec<&str> = moved
        .map(|c| match c.on_rotation {
            OnRotation::New(expr) => expr,
            _ => c.name,
        })
        .collect();
    format!(
        "INSERT INTO apikey.keys ({}) SELECT {} FROM apikey.keys WHERE id OPERATOR(pg_catalog.=) $1 RETURNING id",
        names.join(", "),
        values.join(", ")
    )
}
