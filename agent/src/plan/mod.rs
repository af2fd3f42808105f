//! Reconcile planning (being written).
