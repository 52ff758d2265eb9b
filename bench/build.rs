//! Generates the 1,000 idle `#[consumer]` functions of the idle-memory
//! scenario: an application with that many consumers writes each one, and
//! writing them by hand here would be 8,000 lines of noise.

use std::{env, fmt::Write, fs, path::Path};

/// How many idle consumers; `IDLE_CONSUMERS` in `src/workload.rs` says the same.
const IDLE_CONSUMERS: usize = 1_000;

fn main() {
    let mut code = String::new();
    for n in 0..IDLE_CONSUMERS {
        writeln!(
            code,
            "#[::hutch_rs::consumer(group = \"idle\", queue = \"idle_{n}\", routing_key = \"idle.{n}\")]\n\
             async fn idle_{n}(msg: ::hutch_rs::Message<Payload>) -> Result<(), ::hutch_rs::BoxError> {{\n    \
                 idle(msg)\n\
             }}\n"
        )
        .expect("writing to a String cannot fail");
    }
    let out_dir = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    fs::write(Path::new(&out_dir).join("idle_consumers.rs"), code)
        .expect("writing the generated consumers to OUT_DIR");
    println!("cargo::rerun-if-changed=build.rs");
}
