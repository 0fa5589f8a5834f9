//! The coordination engine: what keeps many concurrent requests, and many instances, from
//! doing the same work or failing together.

pub(crate) mod breaker;
pub(crate) mod clock;
pub(crate) mod coalesce;
pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod predictor;
pub(crate) mod refill;
pub(crate) mod variants;
