//! The tower surface: the layer, the service, its response future and body, and the
//! responses and `Cache-Status` it writes.

pub(crate) mod body;
pub(crate) mod consistency;
pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod respond;
pub(crate) mod service;
pub(crate) mod status;
