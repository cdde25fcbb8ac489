//! In-memory link: a connected pair in one process (not built yet).
