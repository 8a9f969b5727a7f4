//! Fuzz target: the link control-frame decoder must never panic, and whatever it accepts must
//! re-encode to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skiff_router::wire::ControlFrame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        match ControlFrame::decode(&mut buf) {
            Ok(Some(frame)) => {
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                let mut reparse = again.clone();
                assert_eq!(ControlFrame::decode(&mut reparse).unwrap(), Some(frame));
            }
            Ok(None) | Err(_) => break,
        }
    }
});
