//! Fuzzes the frame decoder: arbitrary bytes, split at arbitrary points, must never
//! panic, never yield a body above the maximum, and every decoded frame must encode
//! back to the exact bytes it came from.
#![no_main]

use bytes::BytesMut;
use fastim_proto::{Frame, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let split = (split as usize).min(data.len());
    let mut codec = FrameCodec::new(MAX_BODY);
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= MAX_BODY);
                    let used = before - buf.len();
                    assert_eq!(&frame.to_bytes()[..], &data[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
    // The WebSocket path: one message, one frame.
    if let Ok(frame) = Frame::from_message(data, MAX_BODY) {
        assert_eq!(&frame.to_bytes()[..], data);
    }
});
