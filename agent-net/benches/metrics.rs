//! Cost of one metrics sample on this machine (`cargo bench -p agent-net --bench metrics`).

use std::time::Instant;

fn main() {
    let mut c = noderax_agent::metrics::Collector::new();
    c.sample();
    let n = 2000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(c.sample());
    }
    let per = t.elapsed() / n;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| metrics sample (procfs + statvfs), mean of {n} | {:.1} µs |",
        per.as_secs_f64() * 1e6
    );
    println!(
        "| CPU share at the default 2 s interval | {:.4} % of one core |",
        per.as_secs_f64() / 2.0 * 100.0
    );
}
