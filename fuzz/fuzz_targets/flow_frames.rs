//! Fuzz target: the flow header and flow status decoders must never panic, and whatever they
//! accept must re-encode to bytes that decode to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skiff_router::wire::{FlowHeader, FlowStatusFrame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(header)) = FlowHeader::decode(&mut buf) {
        let mut again = BytesMut::new();
        header.encode(&mut again);
        assert_eq!(FlowHeader::decode(&mut again).unwrap(), Some(header));
        assert!(again.is_empty());
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(status)) = FlowStatusFrame::decode(&mut buf) {
        let mut again = BytesMut::new();
        status.encode(&mut again);
        assert_eq!(FlowStatusFrame::decode(&mut again).unwrap(), Some(status));
        assert!(again.is_empty());
    }
});
