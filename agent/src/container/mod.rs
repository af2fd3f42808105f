//! Container configuration from createOptions (being written).
