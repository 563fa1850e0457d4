//! The workspace's `uniffi-bindgen`: generates the Kotlin, Swift and Python
//! bindings from the built (unstripped) `omnisync_ffi` library, so the
//! generator always matches the pinned `uniffi` version of the scaffolding.

fn main() {
    uniffi::uniffi_bindgen_main()
}
