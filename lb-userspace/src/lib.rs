//! wklb userspace: the loader and typed map access the daemon and tests build on.
pub mod dataplane;
pub mod privileges;
