//! PLACEHOLDER until the SQLite store lands (being written now): every call fails.

use std::path::Path;

use super::{Change, Marks, Snapshot, StoreError};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {}

impl SqliteStore {
    /// Opens the database at `path`.
    ///
    /// # Errors
    /// Always, for now.
    pub async fn open(_path: &Path) -> Result<SqliteStore, StoreError> {
        Err(StoreError::Io("the SQLite store is not built yet".into()))
    }

    /// Reads everything back.
    ///
    /// # Errors
    /// Always, for now.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        Err(StoreError::Io("the SQLite store is not built yet".into()))
    }

    /// Writes a commit.
    ///
    /// # Errors
    /// Always, for now.
    pub async fn commit(&self, _changes: Vec<Change>, _marks: Marks) -> Result<(), StoreError> {
        Err(StoreError::Io("the SQLite store is not built yet".into()))
    }

    /// Closes the database.
    pub async fn close(&self) {}
}
