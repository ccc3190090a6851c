//! The kubernetes adapter's documented instance keys match the struct that declares them.

use std::path::Path;

use baton_adapter_kit::docs::check_doc_keys;
use baton_adapter_kubernetes::config::InstanceKeys;

#[test]
fn the_docs_list_every_instance_key() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adapters/kubernetes.md");
    check_doc_keys::<InstanceKeys>(&doc, "Instance config");
}
