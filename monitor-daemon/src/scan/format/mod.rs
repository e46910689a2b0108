//! What an artifact is, from its content (never its name).
