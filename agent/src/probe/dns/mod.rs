//! DNS probe: query time and failures against a resolver (`dns:SERVER[:PORT]/NAME`).

pub mod prober;
pub mod query;
