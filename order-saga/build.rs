// The migrations are compiled into the crate (`sqlx::migrate!`): a changed
// or added migration rebuilds it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
