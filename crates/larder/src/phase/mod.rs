//! The phases of a request, in the order it goes through them:
//! [`classify`] -> [`lookup`] -> [`exchange`] (hit, follow, or lead) -> [`fill`]; and
//! [`write`] for the requests that change data; [`audit`] checks a sampled hit afterwards.

pub(crate) mod audit;
pub(crate) mod classify;
pub(crate) mod exchange;
pub(crate) mod fill;
pub(crate) mod lookup;
pub(crate) mod write;
