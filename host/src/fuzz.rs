//! Entry points for the fuzz targets in `fuzz/`: every decoder of bytes that come from outside
//! the process — a stored journal record, a heap envelope, a memory dump, a worker's frames,
//! a stdio line. Each must refuse what it cannot read with an error, never panic, and keep
//! what it accepts consistent. Built only under `cargo fuzz` (`--cfg fuzzing`).

use bytes::Bytes;

/// A stored journal record: decoded, or refused; one decoded encodes back to itself.
pub fn journal_record(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(record) = crate::record::Record::decode(&bytes) {
        let again = Bytes::from(record.encode());
        assert_eq!(crate::record::Record::decode(&again).ok(), Some(record));
    }
}

/// A stored heap: its header read, and the whole envelope verified, or refused.
pub fn envelope(data: &[u8]) {
    let _ = crate::envelope::header(data);
    let _ = crate::envelope::open(&Bytes::copy_from_slice(data), "h");
}

/// A memory dump: every record handed over is one the reader checked.
pub fn memory_dump(data: &[u8]) {
    let mut input = data;
    let _ = crate::storage::dump::read(
        &mut input,
        data.len() as u64,
        "13.6.233.8",
        |name, _, _| {
            assert!(mcp_v8_plugin_api::validate_heap_name(name).is_ok());
            Ok(())
        },
        |heap, _| {
            assert!(mcp_v8_plugin_api::validate_heap_name(heap).is_ok());
            Ok(())
        },
    );
}

/// A worker's or the host's frames, and the sections inside them.
pub fn worker_frames(data: &[u8]) {
    use crate::worker::protocol::{
        decode_console, decode_records, host_call_of, read_frame, Answer, Delivery, Request,
    };
    let mut input = data;
    while let Ok(Some((_, sections))) =
        futures::executor::block_on(read_frame::<Request>(&mut input))
    {
        for section in &sections {
            let _ = decode_records(section, 1);
            let _ = decode_console(section, None);
        }
    }
    let mut input = data;
    while let Ok(Some((answer, sections))) =
        futures::executor::block_on(read_frame::<Answer>(&mut input))
    {
        if let Answer::HostCall { ask, .. } = answer {
            let _ = host_call_of(ask, sections.into_iter().next());
        }
    }
    let mut input = data;
    while let Ok(Some((delivery, sections))) =
        futures::executor::block_on(read_frame::<Delivery>(&mut input))
    {
        if let Delivery::Reply { head, .. } = delivery {
            let _ = head.into_reply(sections.into_iter().next());
        }
    }
}

/// What a client writes on stdin, at a line limit small enough to be crossed.
pub fn stdio_lines(data: &[u8]) {
    crate::transport::stdio::read_all(data, 256);
}
