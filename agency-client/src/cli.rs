//! The `agency-client` command line.
