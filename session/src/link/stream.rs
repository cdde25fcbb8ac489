//! Stream link: length-prefixed frames over Unix and TCP sockets (not built yet).
