//! keybus's token service (identity reference §1.5, §2.6). PLACEHOLDER: being written.

/// Signing keys and token minting.
#[derive(Default)]
pub struct TokenService {}

impl TokenService {
    pub fn in_memory() -> Self {
        Self {}
    }

    pub fn open(_dir: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {})
    }
}
