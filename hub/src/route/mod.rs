//! Route language (being written).
