//! The endpoints, one file per spec area, each handler named after its operation
//! with `METHOD /path` as its doc header.

pub(crate) mod client {
    pub(crate) mod discovery;
}

pub(crate) mod federation {
    pub(crate) mod keys;
}
