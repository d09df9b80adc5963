//! Feeds arbitrary bytes to the IPC frame decoder, in both directions and
//! split at an arbitrary point: it must return errors, never panic, and never
//! allocate what a frame header claims without checking it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::ipc::{ExecMessage, FrameDecoder, NetMessage, codec};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);

    let mut dec = FrameDecoder::new();
    dec.push(a);
    while let Ok(Some(_)) = dec.next_message::<NetMessage>() {}
    dec.push(b);
    while let Ok(Some(_)) = dec.next_message::<NetMessage>() {}

    let mut dec = FrameDecoder::new();
    dec.push(data);
    while let Ok(Some(_)) = dec.next_message::<ExecMessage>() {}

    let _ = codec::decode::<NetMessage>(data);
    let _ = codec::decode::<ExecMessage>(data);
});
