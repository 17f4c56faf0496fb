use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

use super::*;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (log, sm) =
            open(dir.path(), 1).map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

#[test]
fn refuses_foreign_and_wrong_node_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let e = open(dir.path(), 1).err().unwrap();
    assert!(matches!(e, Error::Foreign { .. }), "{e}");

    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1).unwrap());
    let e = open(dir.path(), 2).err().unwrap();
    assert!(
        matches!(
            e,
            Error::WrongNode {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(open(dir.path(), 1).is_ok());

    // a RocksDB that is not veto's
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let e = open(dir.path(), 1).err().unwrap();
    assert!(
        matches!(e, Error::Foreign { .. } | Error::Open { .. }),
        "{e}"
    );

    // corrupted files
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1).unwrap());
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("MANIFEST") || name == "CURRENT" {
            std::fs::write(&p, b"garbage garbage garbage").unwrap();
        }
    }
    assert!(open(dir.path(), 1).is_err());
}
