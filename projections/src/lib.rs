//! Events and projections (to come: see the [projections] issue).
