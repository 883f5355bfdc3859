//! The crate's single error type.

/// Everything that can go wrong while decoding AMQP bytes.
///
/// Offsets are byte positions relative to the start of the slice handed to the
/// decoding function (for frames: relative to the start of the frame body).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("unexpected end of input at offset {offset}")]
    UnexpectedEof { offset: usize },
    /// A format code that is not defined by AMQP 1.0 (or not allowed here).
    #[error("invalid AMQP constructor 0x{0:02x}")]
    InvalidConstructor(u8),
    /// A `string` or `symbol` that is not valid UTF-8.
    #[error("invalid UTF-8 in string or symbol at offset {offset}")]
    InvalidUtf8 { offset: usize },
    /// A `char` that is not a Unicode scalar value.
    #[error("invalid char at offset {offset}")]
    InvalidChar { offset: usize },
    /// A descriptor that is neither a `ulong` nor a `symbol`.
    #[error("invalid descriptor at offset {offset}")]
    InvalidDescriptor { offset: usize },
    /// A compound's declared size or count does not match its contents.
    #[error("invalid compound size or count at offset {offset}")]
    InvalidSize { offset: usize },
    /// A map with an odd number of elements.
    #[error("map with odd element count at offset {offset}")]
    OddMapCount { offset: usize },
    /// Values nested deeper than the decoder's limit.
    #[error("nesting deeper than {limit} at offset {offset}")]
    TooDeep { offset: usize, limit: usize },
    /// A frame larger than the negotiated maximum.
    #[error("frame of {size} bytes exceeds max-frame-size {max}")]
    FrameTooLarge { size: u32, max: u32 },
    /// A structurally invalid frame.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
    /// Eight bytes that are not an AMQP protocol header we understand.
    #[error("invalid protocol header")]
    InvalidProtocolHeader,
    /// A performative (or SASL frame body) with an unknown descriptor.
    #[error("unknown performative 0x{0:x}")]
    UnknownPerformative(u64),
    /// A mandatory field is missing or a field has the wrong AMQP type.
    #[error("invalid or missing field `{field}` in {performative}")]
    InvalidField {
        performative: &'static str,
        field: &'static str,
    },
    /// A bare/annotated message with bad, duplicate, unknown or misordered sections.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
}
