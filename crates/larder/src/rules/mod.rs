//! The rules and HTTP policy: which rule covers a request, how its key is made, what may be
//! stored and for how long (RFC 9111), and which tags an entry carries.

pub(crate) mod key;
pub(crate) mod policy;
pub(crate) mod route;
pub(crate) mod rule;
pub(crate) mod tags;
