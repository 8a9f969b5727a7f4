//! Fuzz target: the link-state (advertisement) decoder must never panic, and whatever it
//! accepts must re-encode to exactly the bytes it came from (the encoding is canonical).
//! The input is used as the payload of a link-state frame, so every byte exercises the
//! advertisement fields rather than the frame header.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use skiff_router::wire::{ControlFrame, MAX_FRAME_LEN};

/// Frame type of `ControlFrame::LinkState`.
const LINK_STATE: u8 = 0x06;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_FRAME_LEN {
        return;
    }
    let mut buf = BytesMut::with_capacity(data.len() + 5);
    buf.put_u8(LINK_STATE);
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
    let original = buf.clone();
    if let Ok(Some(frame)) = ControlFrame::decode(&mut buf) {
        assert!(matches!(frame, ControlFrame::LinkState(_)));
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        assert_eq!(again, original);
    }
});
