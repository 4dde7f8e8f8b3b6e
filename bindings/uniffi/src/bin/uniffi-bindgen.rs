//! uniffi's binding generator, built with this crate's uniffi version.
fn main() {
    uniffi::uniffi_bindgen_main()
}
