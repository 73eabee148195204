//! Shared fixtures for the integration suite.
