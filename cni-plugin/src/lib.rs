//! The Trellis CNI plugin library. The plugin itself (ADD, DEL, CHECK,
//! STATUS, GC, VERSION) is the subject of its own issue; until it lands the
//! binary answers every call with a CNI error that says so.

/// CNI error code for "plugin does not support this operation yet" (our own
/// code range starts at 100).
pub const ERR_NOT_IMPLEMENTED: u32 = 100;

/// The CNI error object the plugin prints while it is not implemented.
pub fn not_implemented_error(cni_version: &str) -> String {
    format!(
        r#"{{"cniVersion":"{cni_version}","code":{ERR_NOT_IMPLEMENTED},"msg":"trellis-cni is not implemented yet","details":"this build of Trellis ships no CNI plugin; use a release that does"}}"#
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_object_names_the_code() {
        let text = super::not_implemented_error("1.1.0");
        assert!(text.contains(r#""code":100"#));
        assert!(text.contains(r#""cniVersion":"1.1.0""#));
    }
}
