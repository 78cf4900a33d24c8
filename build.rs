//! `stdlib/` and `recipes/` are embedded with `include_dir!`, which cargo does not track: without
//! this, a new or changed file there would not reach the binary until some Rust source changed.
fn main() {
    println!("cargo:rerun-if-changed=stdlib");
    println!("cargo:rerun-if-changed=recipes");
}
