//! UniFFI's binding generator, built from the same UniFFI version as the library
//! (scripts/bindings.sh runs it on the built library).
fn main() {
    uniffi::uniffi_bindgen_main()
}
