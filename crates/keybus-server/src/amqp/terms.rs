//! Service Bus vocabulary shared by the link files: filter names and time formats.

/// The source filter that makes a receiver a session receiver.
pub(super) const SESSION_FILTER: &str = "com.microsoft:session-filter";

/// .NET ticks for a Unix time in milliseconds (`com.microsoft:locked-until-utc`).
pub(super) fn dotnet_ticks(unix_ms: i64) -> i64 {
    unix_ms
        .saturating_mul(10_000)
        .saturating_add(621_355_968_000_000_000)
}
