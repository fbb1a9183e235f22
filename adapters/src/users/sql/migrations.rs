//! The schema's migrations, embedded in the binary.
//!
//! `sqlx::migrate!` would embed the folders at compile time, but it is the
//! one use of sqlx's macros here, and the macros bring sqlx-macros-core with a
//! second build of sqlx's drivers and of SQLite's C sources for the compiler's
//! host: about 35 s of CPU in every build profile. The same migrations are
//! listed here instead: each entry is what `migrate!` reads from a file
//! `<version>_<description>.sql` (its checksum is the SHA-384 of the same
//! text, so a database migrated by either recognises the other), and a test
//! holds the lists equal to the folders.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

/// A migration: its version, its description, its SQL.
type Entry = (i64, &'static str, &'static str);

/// `adapters/migrations/sqlite`, in the order they apply.
pub(super) const SQLITE: &[Entry] = &[(
    20261124000001,
    "users",
    include_str!("../../../migrations/sqlite/20261124000001_users.sql"),
)];

/// `adapters/migrations/postgres`, in the order they apply.
pub(super) const POSTGRES: &[Entry] = &[(
    20261124000001,
    "users",
    include_str!("../../../migrations/postgres/20261124000001_users.sql"),
)];

/// A list above, as sqlx's `Migrator::new` takes it.
#[derive(Debug)]
pub(super) struct Embedded(pub(super) &'static [Entry]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    // What `migrate!` reads as "run outside a transaction".
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(version, description, sql)` of every file in a migrations folder,
    /// named the way sqlx names them, sorted by version.
    fn folder(name: &str) -> Vec<(i64, String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(name);
        let mut found: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                let (version, rest) = file.split_once('_').unwrap();
                let description = rest.strip_suffix(".sql").unwrap().replace('_', " ");
                let sql = std::fs::read_to_string(&path).unwrap();
                (version.parse().unwrap(), description, sql)
            })
            .collect();
        found.sort_by_key(|(version, ..)| *version);
        found
    }

    fn listed(entries: &[Entry]) -> Vec<(i64, String, String)> {
        entries
            .iter()
            .map(|&(version, description, sql)| (version, description.to_owned(), sql.to_owned()))
            .collect()
    }

    #[test]
    fn every_migration_file_is_listed_in_order_and_nothing_else() {
        assert_eq!(listed(SQLITE), folder("sqlite"));
        assert_eq!(listed(POSTGRES), folder("postgres"));
    }

    #[tokio::test]
    async fn a_listed_migration_has_the_checksum_sqlx_migrate_gave_it() {
        // The checksum `sqlx::migrate!` recorded for the users table in a
        // database made before the lists replaced it (read from its
        // `_sqlx_migrations`): a database migrated then must not be refused.
        // (An applied migration's text never changes: sqlx refuses a
        // database whose recorded checksum differs. A change is a new file.)
        let resolved = Embedded(SQLITE).resolve().await.unwrap();
        let hex: String = resolved[0]
            .checksum
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(
            hex,
            "CA02A5BEDE6FE3617E783A3EDE9324F19B837F8A6D57C5DC1E3D2A8D18FC884BC64566DE2FAEAE1A897FF77A1ACAFF22"
        );
        assert_eq!(resolved[0].version, 20261124000001);
        assert_eq!(resolved[0].description, "users");
        assert!(!resolved[0].no_tx);
    }
}
