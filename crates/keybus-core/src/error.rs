//! Domain errors and their one mapping to AMQP error conditions.

/// The Service Bus error conditions the domain can produce (wire reference §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCondition {
    NotFound,
    MessageLockLost,
    MessageNotFound,
    SessionLockLost,
    SessionCannotBeLocked,
    Timeout,
    MessageSizeExceeded,
    QuotaExceeded,
    ArgumentError,
    NotAllowed,
    InternalError,
    ServerBusy,
}

impl ErrorCondition {
    /// The AMQP `symbol`.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::NotFound => "amqp:not-found",
            Self::MessageLockLost => "com.microsoft:message-lock-lost",
            Self::MessageNotFound => "com.microsoft:message-not-found",
            Self::SessionLockLost => "com.microsoft:session-lock-lost",
            Self::SessionCannotBeLocked => "com.microsoft:session-cannot-be-locked",
            Self::Timeout => "com.microsoft:timeout",
            Self::MessageSizeExceeded => "amqp:link:message-size-exceeded",
            Self::QuotaExceeded => "amqp:resource-limit-exceeded",
            Self::ArgumentError => "com.microsoft:argument-error",
            Self::NotAllowed => "amqp:not-allowed",
            Self::InternalError => "amqp:internal-error",
            Self::ServerBusy => "com.microsoft:server-busy",
        }
    }

    /// The `$management` `statusCode`.
    pub fn status_code(self) -> i32 {
        match self {
            Self::NotFound | Self::MessageNotFound => 404,
            Self::MessageLockLost | Self::SessionLockLost | Self::SessionCannotBeLocked => 410,
            Self::Timeout => 408,
            Self::MessageSizeExceeded | Self::QuotaExceeded => 403,
            Self::ArgumentError | Self::NotAllowed => 400,
            Self::InternalError => 500,
            Self::ServerBusy => 503,
        }
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    #[error(
        "The received message (size {size} bytes) exceeds the limit ({limit} bytes) currently allowed on the link."
    )]
    MessageSizeExceeded { size: u64, limit: u64 },
    #[error(
        "The maximum entity size has been reached or exceeded for '{entity}'. Size: {size} bytes, limit: {limit} bytes."
    )]
    QuotaExceeded {
        entity: String,
        size: u64,
        limit: u64,
    },
    #[error("{0}")]
    Argument(String),
    /// The entity was deleted (the sender's link outlived it).
    #[error("The messaging entity '{0}' could not be found.")]
    EntityNotFound(String),
}

impl SendError {
    pub fn condition(&self) -> ErrorCondition {
        match self {
            Self::MessageSizeExceeded { .. } => ErrorCondition::MessageSizeExceeded,
            Self::QuotaExceeded { .. } => ErrorCondition::QuotaExceeded,
            Self::Argument(_) => ErrorCondition::ArgumentError,
            Self::EntityNotFound(_) => ErrorCondition::NotFound,
        }
    }
}

/// Why a settlement or lock renewal failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettleError {
    #[error(
        "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
    )]
    LockLost,
}

impl SettleError {
    pub fn condition(&self) -> ErrorCondition {
        ErrorCondition::MessageLockLost
    }
}

/// Why a session operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error(
        "The session lock has expired on the MessageSession '{0}', or it is not held by this receiver. Accept a new session."
    )]
    LockLost(String),
    #[error(
        "The requested session '{0}' cannot be accepted. It may be locked by another receiver."
    )]
    CannotBeLocked(String),
    #[error("No session is available: the operation did not complete within the allotted timeout.")]
    NoneAvailable,
}

impl SessionError {
    pub fn condition(&self) -> ErrorCondition {
        match self {
            Self::LockLost(_) => ErrorCondition::SessionLockLost,
            Self::CannotBeLocked(_) => ErrorCondition::SessionCannotBeLocked,
            Self::NoneAvailable => ErrorCondition::Timeout,
        }
    }
}

/// Errors of `$management` operations on an entity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManagementError {
    #[error("{0}")]
    Settle(#[from] SettleError),
    #[error("{0}")]
    Send(#[from] SendError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error(
        "The message with sequence number {0} could not be found (it is not deferred or does not exist)."
    )]
    MessageNotFound(i64),
    #[error("{0}")]
    Argument(String),
    /// A message body could not be read back from the store.
    #[error("the store could not read the message back: {0}")]
    Store(String),
}

impl ManagementError {
    pub fn condition(&self) -> ErrorCondition {
        match self {
            Self::Settle(e) => e.condition(),
            Self::Send(e) => e.condition(),
            Self::Session(e) => e.condition(),
            Self::MessageNotFound(_) => ErrorCondition::MessageNotFound,
            Self::Argument(_) => ErrorCondition::ArgumentError,
            Self::Store(_) => ErrorCondition::InternalError,
        }
    }
}
