//! `sqlx::migrate!` embeds the migrations at compile time; this makes cargo
//! rebuild when one is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
