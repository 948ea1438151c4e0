//! Heap snapshots are compressed in the host before any store sees them, and a server reads
//! heaps stored either way, whatever it writes.

use std::path::Path;

use mcp_v8_e2e::Server;

/// The codec byte and size of heap `heap`'s file.
fn stored(dir: &Path, heap: &str) -> (u8, u64) {
    let bytes = std::fs::read(dir.join(format!("{heap}.heap"))).unwrap();
    // The envelope format this build writes (`envelope::FORMAT_VERSION` in the host).
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 13, "format");
    let version_len = bytes[10] as usize;
    let name_len = bytes[11 + version_len] as usize;
    let codec = bytes[12 + version_len + name_len + 1];
    (codec, bytes.len() as u64)
}

#[tokio::test]
async fn heaps_are_compressed_by_default_and_either_kind_reads_either() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let path = heaps.to_str().unwrap();
    let fill =
        "var rows = Array.from({length: 50000}, (_, i) => ({i, s: 'row ' + i})); rows.length";

    let plain = Server::start(&["--directory-path", path, "--compression", "none"]).await;
    assert_eq!(plain.output(fill, "plain").await, "50000");
    plain.settle().await;
    plain.stop().await;
    let (codec, plain_size) = stored(&heaps, "plain");
    assert_eq!(codec, 0);

    let packed = Server::start(&["--directory-path", path]).await;
    assert_eq!(packed.output("rows[49999].s", "plain").await, "row 49999");
    assert_eq!(packed.output(fill, "packed").await, "50000");
    packed.settle().await;
    packed.stop().await;
    let (codec, packed_size) = stored(&heaps, "packed");
    assert_eq!(codec, 1);
    assert!(
        packed_size * 2 < plain_size,
        "{packed_size} compressed against {plain_size}"
    );

    let plain = Server::start(&["--directory-path", path, "--compression", "none"]).await;
    assert_eq!(plain.output("rows[49999].s", "packed").await, "row 49999");
    plain.stop().await;
}
