#[test]
fn xray_print_values() {
    use super::trace_id::*;
    let sid = 0x0000_0000_0000_0031u64.to_be_bytes();
    for (e, c) in [(0u64, 0u64), (0, 1), (1, 0), (2, 0), (u64::MAX, 0)] {
        println!("exc {e} {c} {}", exception_id(&sid, e, c));
    }
    let sid = 0x0000_0000_0000_0001u64.to_be_bytes();
    println!("exc1 {}", exception_id(&sid, u64::MAX, 0));
    let random: [u8; 16] = [
        0xde, 0xad, 0xbe, 0xef, 0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92,
        0x9d,
    ];
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    println!(
        "{:?}",
        xray_trace_id(&random, 1_699_999_990_123_456_789, now)
    );
    println!("phase {}", trace_hash(&random) % REMAP_WINDOW_SECS);
}
